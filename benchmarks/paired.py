"""Two searches of the same problems, compared problem by problem (no model run): accuracy, generated
and forward tokens of each, and the paired bootstrap 95% interval of B - A. For cells of two sweeps
(or of one) that were run separately on the same problems, e.g. a vote cell and a pf cell:

    .venv/bin/python benchmarks/paired.py runs/sweep/vote@none/budget-96/trees.jsonl \\
        runs/sweep2/pf@prm-.../budget-96/trees.jsonl
"""

from __future__ import annotations

import sys

from sharpen.core.io import read_jsonl
from sharpen.core.stats import paired_bootstrap
from sharpen.core.tree import Tree
from sharpen.search.collect import search_metrics


def load(path: str) -> dict[str, Tree]:
    return {t.problem_id: t for t in map(Tree.from_dict, read_jsonl(path))}


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    a, b = load(sys.argv[1]), load(sys.argv[2])
    if set(a) != set(b):
        sys.exit(f"not the same problems: {len(set(a) - set(b))} only in A, {len(set(b) - set(a))} only in B "
                 "(fix: two cells run with the same --n, --split, --skip and task options)")
    ids = sorted(a)
    ca, cb = [float(bool(a[i].correct)) for i in ids], [float(bool(b[i].correct)) for i in ids]
    d, (lo, hi) = paired_bootstrap(ca, cb, seed=0)
    for name, trees in (("A", a), ("B", b)):
        m = search_metrics([trees[i] for i in ids], trees[ids[0]].usage.get("budget_tokens", 0))
        print(f"{name}: accuracy {m['accuracy']:.3f}  generated {m['mean_generated_tokens']:.0f}  forward "
              f"{m['mean_forward_tokens']:.0f} + verifier {m['mean_verifier_tokens']:.0f}  "
              f"({trees[ids[0]].algo}, {m['n']} problems)")
    print(f"B - A: {d:+.3f} [{lo:+.3f}, {hi:+.3f}] (paired bootstrap 95%)")


if __name__ == "__main__":
    main()
