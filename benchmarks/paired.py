"""Two searches of the same problems, compared problem by problem (no model run): accuracy, generated
and forward tokens of each, and the paired bootstrap 95% interval of B - A. For cells of two sweeps
(or of one) that were run separately on the same problems, e.g. a vote cell and a pf cell:

    .venv/bin/python benchmarks/paired.py runs/sweep/vote@none/budget-96/trees.jsonl \\
        runs/sweep2/pf@prm-.../budget-96/trees.jsonl
"""

from __future__ import annotations

import json
import sys

from sharpen.stats import paired_bootstrap


def load(path: str) -> dict[str, dict]:
    return {t["problem_id"]: t for t in (json.loads(line) for line in open(path))}


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    a, b = load(sys.argv[1]), load(sys.argv[2])
    if set(a) != set(b):
        sys.exit(f"not the same problems: {len(set(a) - set(b))} only in A, {len(set(b) - set(a))} only in B "
                 "(fix: two cells run with the same --n, --split, --skip and task options)")
    ids = sorted(a)
    ca, cb = [float(bool(a[i]["correct"])) for i in ids], [float(bool(b[i]["correct"])) for i in ids]
    d, (lo, hi) = paired_bootstrap(ca, cb, seed=0)
    for name, trees, c in (("A", a, ca), ("B", b, cb)):
        u = [t["usage"] for t in trees.values()]
        gen = sum(x.get("generated_tokens", 0) for x in u) / len(u)
        fwd = sum(x.get("forward_tokens", 0) for x in u) / len(u)
        ver = sum(x.get("verifier_tokens", 0) for x in u) / len(u)
        print(f"{name}: accuracy {sum(c) / len(c):.3f}  generated {gen:.0f}  forward {fwd:.0f} + verifier {ver:.0f}"
              f"  ({trees[ids[0]]['algo']}, {len(c)} problems)")
    print(f"B - A: {d:+.3f} [{lo:+.3f}, {hi:+.3f}] (paired bootstrap 95%)")


if __name__ == "__main__":
    main()
