"""A PRM's inner-step AUROC on chain_sum against the step's exact truth, beside its Monte Carlo label.

    .venv/bin/python benchmarks/step_truth.py LABELS_DIR --prm PRM_DIR

LABELS_DIR: step labels from `sharpen build labels` (e.g. on an `omega@oracle:4` sweep of training
problems the PRM never saw). The rows kept are the non-final steps that read as one equation,
`<terms> = <number>` with one-digit-or-more integers and + / -: the equation steps, so neither
empty or chatty lines nor final answers can carry the number.

A Monte Carlo label (any or half of k rollouts from the step reach the answer) says whether *this
policy* finishes from the step; with a policy right 13% of the time, most correct steps are
labelled wrong. The exact truth asks only whether the step is right: the equation holds, and either
its result is a running total of the problem (the first two terms combined, or all three: for
`8 + 9 - 6`, 17 or 11) or it combines terms of the problem as they stand, signs included (`9 - 6 = 3`
there; `6 - 9 = -3` and `8 + 6 = 14` are wrong). Through three terms that covers every order of work.

Prints, on the same rows, the PRM's AUROC with a bootstrap 95% interval against each label, the share
of exact-right steps among MC-wrong ones, and the rows' counts. Without `--prm`, the labels alone: how
well the exact truth, taken as a score, ranks them (how far the labels are the steps' truth; compare
labels from rollouts of the searching policy with labels from a prover's, `oracle:k:prover=P`).

    .venv/bin/python benchmarks/step_truth.py LABELS_DIR
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

EQUATION = re.compile(r"^\s*(-?\d+(?:\s*[-+]\s*-?\d+)+)\s*=\s*(-?\d+)\s*\.?\s*$")
PROBLEM = re.compile(r"(-?\d+(?:\s*[-+]\s*-?\d+)+)\s*=?\s*\??\s*$")


def terms(expr: str) -> list[int]:
    """`3 - 4 + 5` as the signed terms [3, -4, 5]."""
    out, sign = [], 1
    for tok in re.findall(r"\d+|[-+]", expr.replace(" ", "")):
        if tok in "+-":
            sign = -sign if tok == "-" else sign
        else:
            out.append(sign * int(tok))
            sign = 1
    return out


def partial_results(question: str) -> set[int] | None:
    """The running totals of the problem's terms from the second on (None: no expression found)."""
    m = PROBLEM.search(question.strip())
    if not m:
        return None
    ts = terms(m.group(1))
    return {sum(ts[:k]) for k in range(2, len(ts) + 1)}


def step_truth(question: str, step: str) -> bool | None:
    """True/False for an equation step of a chain_sum problem; None for any other line."""
    m = EQUATION.match(step)
    partial = partial_results(question)
    if not m or partial is None:
        return None
    value, left = int(m.group(2)), terms(m.group(1))
    if sum(left) != value:
        return False
    if value in partial:
        return True
    pool = Counter(terms(PROBLEM.search(question.strip()).group(1)))
    return len(left) >= 2 and not Counter(left) - pool  # terms of the problem, combined in another order


def main() -> None:
    import datasets

    from sharpen.train.metrics import auroc_with_ci, score_last

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("labels")
    ap.add_argument("--prm", help="a PRM directory (without one: the labels against the truth alone)")
    args = ap.parse_args()
    rows = []
    for r in datasets.load_from_disk(args.labels):
        if not r["terminal"]:
            truth = step_truth(r["question"], r["step"])
            if truth is not None:
                rows.append(r | {"truth": int(truth)})
    if not rows:
        raise SystemExit(f"{args.labels}: no non-final equation steps of a chain_sum problem (fix: labels of chain_sum trees)")

    def line(name: str, labels: list[int], scores: list[float]) -> str:  # interval: problems resampled
        a = auroc_with_ci(labels, scores, groups=[r["problem_id"] for r in rows])
        if a["auroc"] is None:
            return f"{name}: no AUROC (one class only)"
        return f"{name}: AUROC {a['auroc']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}] ({a['positives']} of {a['n']} positive)"

    print(f"{len(rows)} non-final equation steps of {len({r['problem_id'] for r in rows})} problems")
    if args.prm:
        scores = score_last(args.prm, rows, 16)
        print(line("exact truth", [r["truth"] for r in rows], scores))
        print(line("Monte Carlo label", [r["label"] for r in rows], scores))
    else:
        print(line("the exact truth as a score, against the Monte Carlo label", [r["label"] for r in rows],
                   [float(r["truth"]) for r in rows]))
    mc_wrong = [r for r in rows if r["label"] == 0]
    print(f"exact-right among MC-wrong: {sum(r['truth'] for r in mc_wrong)} of {len(mc_wrong)}; "
          f"exact-wrong among MC-right: {sum(1 - r['truth'] for r in rows if r['label'] == 1)} of "
          f"{len(rows) - len(mc_wrong)}")


if __name__ == "__main__":
    main()
