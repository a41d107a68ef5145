"""Greedy accuracy of sharpen eval / loop results on chain_sum, split by number of terms and sign of
the answer, plus how many equation lines the three-term solutions have.

    python docs/scripts/chain_sum_breakdown.py runs/demo/round-*/eval/problems.jsonl
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter, defaultdict


def main(paths: list[str]) -> None:
    for path in paths:
        acc: dict[tuple[int, bool], list[int]] = defaultdict(lambda: [0, 0])
        lines: Counter[int] = Counter()
        with open(path) as f:
            for raw in f:
                row = json.loads(raw)
                expr = row["question"].rsplit(":", 1)[1]
                terms = len(re.findall(r"[+-]", expr)) + 1
                key = (terms, int(row["reference"]) < 0)
                acc[key][0] += bool(row["greedy"]["correct"])
                acc[key][1] += 1
                if terms == 3:
                    lines[sum("=" in line for line in row["greedy"]["text"].split("\n"))] += 1
        cells = " ".join(f"{t}-term {'neg' if neg else 'pos'} {c}/{n}" for (t, neg), (c, n) in sorted(acc.items()))
        print(f"{path}: {cells}; 3-term solutions by equation lines {dict(sorted(lines.items()))}")


if __name__ == "__main__":
    main(sys.argv[1:])
