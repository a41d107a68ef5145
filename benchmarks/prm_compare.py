"""Several PRMs, and their averages, on the same held-out step labels of chain_sum.

    .venv/bin/python benchmarks/prm_compare.py LABELS_DIR --prm NAME=PRM_DIR [--prm NAME=PRM_DIR ...] \
        [--unseen-by TREES.jsonl ...] [--cache SCORES.json]

Each PRM scores every held-out step (its whole path in the row's context, the last value, as
`sharpen train eval prm` does); every combination of two or more PRMs is also scored by the mean of
their logits (an ensemble). Printed per scorer, with a percentile bootstrap 95% interval from
resampling problems (a problem's steps move together): AUROC on all steps, final answers, inner
steps and the non-final equation steps against their Monte Carlo labels, and the equation steps
against their exact truth (`benchmarks/step_truth.py`'s rule). With two or more PRMs, each later
PRM's AUROC minus the first's, paired, its interval also from resampling problems.

--unseen-by: trees (e.g. a run's round-N/collect/trees.jsonl) whose problems are left out of a second
block of rows: for a PRM initialised from a trained policy, the held-out problems that policy never
searched. --cache: the scores are kept in this JSON file, by PRM dir, and read back on the next call.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path

import numpy as np
from step_truth import step_truth


def logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def main() -> None:
    import datasets

    from sharpen.core import stats
    from sharpen.core.io import atomic_write_json, read_jsonl
    from sharpen.train.metrics import auroc_with_ci, score_last

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("labels")
    ap.add_argument("--prm", action="append", required=True, help="NAME=PRM_DIR")
    ap.add_argument("--unseen-by", action="append", default=[])
    ap.add_argument("--cache")
    args = ap.parse_args()
    rows = list(datasets.load_from_disk(args.labels))
    cache = json.loads(Path(args.cache).read_text()) if args.cache and Path(args.cache).exists() else {}
    scores: dict[str, np.ndarray] = {}
    for spec in args.prm:
        name, _, path = spec.partition("=")
        if path not in cache:
            cache[path] = score_last(path, rows, 16)
            if args.cache:
                atomic_write_json(args.cache, cache)
        scores[name] = np.array([logit(p) for p in cache[path]])
    names = list(scores)
    for n in range(2, len(names) + 1):
        for combo in itertools.combinations(names, n):
            scores["mean(" + "+".join(combo) + ")"] = np.mean([scores[k] for k in combo], axis=0)

    y = np.array([r["label"] for r in rows])
    term = np.array([bool(r["terminal"]) for r in rows])
    truth = [None if r["terminal"] else step_truth(r["question"], r["step"]) for r in rows]
    eq = np.array([t is not None for t in truth])
    right = np.array([bool(t) for t in truth])
    parts = [("all held-out problems", np.ones(len(rows), bool))]
    if args.unseen_by:
        seen = {t["problem_id"] for f in args.unseen_by for t in read_jsonl(f)}
        keep = np.array([r["problem_id"] not in seen for r in rows])
        held = {r["problem_id"] for r in rows}
        parts.append((f"the {len(held - seen)} of {len(held)} problems not in --unseen-by", keep))

    # the table's columns: (labels, the rows they cover)
    columns = [(y, np.ones(len(rows), bool)), (y, term), (y, ~term), (y, eq), (right, eq)]
    _, problem = np.unique([r["problem_id"] for r in rows], return_inverse=True)

    def cell(labels: np.ndarray, s: np.ndarray, m: np.ndarray) -> str:
        a = auroc_with_ci(labels[m], s[m], groups=problem[m])
        return "n/a" if a["auroc"] is None else f"{a['auroc']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]"

    def paired(labels: np.ndarray, a: np.ndarray, b: np.ndarray, m: np.ndarray) -> str:
        """AUROC of b minus a's on the rows in m, its interval from resampling problems."""
        rows_of = [np.flatnonzero(m & (problem == p)) for p in np.unique(problem[m])]

        def diff(ix: np.ndarray) -> float | None:
            i = np.concatenate([rows_of[int(k)] for k in ix])
            ours, first = stats.labelled_auroc(labels[i], b[i]), stats.labelled_auroc(labels[i], a[i])
            return None if ours is None or first is None else ours - first

        whole = diff(np.arange(len(rows_of)))
        if whole is None:  # one class only: no AUROC
            return "n/a"
        lo, hi = stats.bootstrap_ci(np.arange(len(rows_of)), iters=1000, seed=0, stat=diff)
        return f"{whole:+.3f} [{lo:+.3f}, {hi:+.3f}]"

    for title, m in parts:
        print(f"\n{title}: n = {m.sum()} steps ({y[m].sum()} positive), final {(m & term).sum()}, inner "
              f"{(m & ~term).sum()}, equation steps {(m & eq).sum()}")
        print("| scorer | all steps | final answers | inner steps | equation steps, MC label | equation steps, truth |")
        print("|---|---|---|---|---|---|")
        for name, s in scores.items():
            print(f"| {name} | " + " | ".join(cell(lab, s, m & c) for lab, c in columns) + " |")
        for name in names[1:]:
            print(f"| {name} - {names[0]}, paired by problem | "
                  + " | ".join(paired(lab, scores[names[0]], scores[name], m & c) for lab, c in columns) + " |")


if __name__ == "__main__":
    main()
