"""How high can any scorer rank steps against their Monte Carlo labels?

    .venv/bin/python benchmarks/label_ceiling.py LABELS_DIR [--rollouts 16] [--threshold 0.01] [--draws 200]

A step's label (`sharpen build labels`) is one draw given the step's true value v: k of R rollouts finish
right, label = k / R >= threshold. Even a scorer that knew every v exactly would not rank such labels
perfectly. This fits the distribution of v over the steps from their observed k (a nonparametric
maximum-likelihood mixture of binomials on a grid, by EM), then simulates: draw v from the fit, draw a
fresh label from R rollouts, and take the AUROC of v itself against it. The median and 95% range over
the draws is the ceiling for that label set: a PRM's held-out AUROC well under it is limited by what it
can predict from the text, not by the labels' sampling noise. Printed for the inner steps, the final
answers and all steps, with the fitted mass at v = 0 and under 0.05.
"""

from __future__ import annotations

import argparse

import numpy as np


def fit_values(k: np.ndarray, rollouts: int, grid_size: int = 201, iters: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """The grid of values and the NPMLE weights of the mixing distribution of binomial(rollouts, v).
    The binomial coefficient is left out of the likelihood: it is one factor per step and cancels when
    each step's posterior over the grid is normalised."""
    grid = np.linspace(0.0, 1.0, grid_size)
    like = grid[None, :] ** k[:, None] * (1.0 - grid[None, :]) ** (rollouts - k[:, None])
    w = np.full(grid_size, 1.0 / grid_size)
    for _ in range(iters):
        post = like * w
        post /= post.sum(1, keepdims=True)
        w = post.mean(0)
    return grid, w


def labelled(k: np.ndarray, rollouts: int, threshold: float) -> np.ndarray:
    """The label of a step with k of `rollouts` rollouts right (`sharpen build labels`: value >= threshold)."""
    return k / rollouts >= threshold


def ceiling(k: np.ndarray, rollouts: int, threshold: float, draws: int = 200, seed: int = 0) -> dict[str, float]:
    """AUROC of the true value against fresh labels, over `draws` simulated label sets of len(k) steps."""
    from sharpen.core.stats import auroc

    grid, w = fit_values(k, rollouts)
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(draws):
        v = rng.choice(grid, size=len(k), p=w)
        labels = labelled(rng.binomial(rollouts, v), rollouts, threshold)
        aucs.append(auroc(v[labels], v[~labels]))
    aucs = np.array([a for a in aucs if a is not None])  # a draw with one class only has no AUROC
    if not len(aucs):
        aucs = np.array([float("nan")])
    return {"median": float(np.median(aucs)), "low": float(np.percentile(aucs, 2.5)),
            "high": float(np.percentile(aucs, 97.5)), "mass_zero": float(w[0]), "mass_under_005": float(w[grid < 0.05].sum())}


def main() -> None:
    import sys

    import datasets

    datasets.disable_progress_bars()
    from sharpen.core.errors import SharpenError
    from sharpen.train.data import load_dataset_dir

    def fail(message: str) -> None:
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("labels")
    ap.add_argument("--rollouts", type=int, default=16, help="rollouts behind each step's value (the scorer's oracle:R)")
    ap.add_argument("--threshold", type=float, default=0.01, help="the labels' threshold (`sharpen build labels`)")
    ap.add_argument("--draws", type=int, default=200)
    args = ap.parse_args()
    try:
        ds = load_dataset_dir(args.labels, ["value", "terminal"])
    except SharpenError as e:
        fail(str(e))
    values = np.array(ds["value"], dtype=float)
    k = np.rint(values * args.rollouts)
    if np.abs(k - values * args.rollouts).max() > 1e-6:
        fail(f"{args.labels}: step values are not multiples of 1/{args.rollouts}; pass the rollouts behind them with --rollouts R")
    terminal = np.array(ds["terminal"], dtype=bool)
    print(f"{args.labels}: {len(ds)} steps, {args.rollouts} rollouts a step, labels at value >= {args.threshold}")
    print("| steps | n | positive | ceiling AUROC [95% range] | fitted mass at v = 0 | under 0.05 |")
    print("|---|---|---|---|---|---|")
    for name, keep in [("inner steps", ~terminal), ("final answers", terminal), ("all steps", np.ones_like(terminal))]:
        if not keep.any():
            continue
        c = ceiling(k[keep].astype(int), args.rollouts, args.threshold, args.draws)
        pos = float(np.mean(labelled(k[keep], args.rollouts, args.threshold)))
        print(f"| {name} | {int(keep.sum())} | {pos:.3f} | {c['median']:.3f} [{c['low']:.3f}, {c['high']:.3f}] "
              f"| {c['mass_zero']:.3f} | {c['mass_under_005']:.3f} |")


if __name__ == "__main__":
    main()
