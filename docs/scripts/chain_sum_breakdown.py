"""Greedy accuracy of sharpen eval / loop results on chain_sum, split by number of terms and sign of
the answer (with, when the eval drew samples, how many problems have any correct sample), plus how
many equation lines the three-term solutions have.

    python docs/scripts/chain_sum_breakdown.py runs/demo/round-*/eval/problems.jsonl
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter, defaultdict


def main(paths: list[str]) -> None:
    for path in paths:
        acc: dict[tuple[int, bool], list[int]] = defaultdict(lambda: [0, 0, 0])
        lines: Counter[int] = Counter()
        with open(path) as f:
            for raw in f:
                row = json.loads(raw)
                expr = row["question"].rsplit(":", 1)[1]
                terms = len(re.findall(r"[+-]", expr)) + 1
                key = (terms, int(row["reference"]) < 0)
                acc[key][0] += bool(row["greedy"]["correct"])
                acc[key][1] += 1
                acc[key][2] += any(s["correct"] for s in row.get("samples") or [])
                if terms == 3:
                    lines[sum("=" in line for line in row["greedy"]["text"].split("\n"))] += 1
        cells = " ".join(
            f"{t}-term {'neg' if neg else 'pos'} {c}/{n}" + (f" (any sample {k}/{n})" if k else "")
            for (t, neg), (c, n, k) in sorted(acc.items())
        )
        print(f"{path}: {cells}; 3-term solutions by equation lines {dict(sorted(lines.items()))}")


if __name__ == "__main__":
    main(sys.argv[1:])
