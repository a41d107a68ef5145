"""The statistics every report shares, one implementation each (numpy only).

- `auroc(pos, neg)`: the area under the ROC curve from the scores of positives and of negatives;
  `labelled_auroc(labels, scores)` the same from (label, score) pairs. Both None where undefined.
- `bootstrap_ci(values, ...)`: a percentile bootstrap interval of the mean (or of any statistic);
  with `groups`, resampling whole clusters (a problem's steps), for rows that are not independent.
- `paired_bootstrap(before, after, ...)`: the mean change between paired measurements and its
  bootstrap interval (the same problems evaluated twice).

Resampling draws `iters` rows of `len(values)` indices (with `groups`, of as many cluster indices as
there are clusters) from `numpy.random.default_rng(seed)`, row by row, so the same seed gives the
same interval whichever statistic is bootstrapped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def auroc(pos: Sequence[float], neg: Sequence[float]) -> float | None:
    """P(score of a random positive > score of a random negative), ties counting 1/2: the
    Mann-Whitney U statistic with average ranks over ties, divided by len(pos) * len(neg).
    O(n log n); exactly the pairwise count's value (both are sums of halves, divided once).
    None when `pos` or `neg` is empty (the area is undefined)."""
    p = np.asarray(pos, dtype=float).ravel()
    q = np.asarray(neg, dtype=float).ravel()
    if len(p) == 0 or len(q) == 0:
        return None
    s = np.concatenate([p, q])
    order = np.argsort(s, kind="mergesort")
    _, first, counts = np.unique(s[order], return_index=True, return_counts=True)
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(first + (counts - 1) / 2 + 1, counts)  # 1-based, averaged over ties
    u = ranks[: len(p)].sum() - len(p) * (len(p) + 1) / 2
    return float(u / (len(p) * len(q)))


def labelled_auroc(labels: Sequence[Any] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float | None:
    """`auroc` over (label, score) pairs, label 1 (or True) positive: P(score of a positive > score
    of a negative), ties counting 1/2. None when only one class is present."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=float)
    return auroc(s[y], s[~y])


def bootstrap_ci(
    values: Sequence[Any] | np.ndarray,
    iters: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    stat: Callable[[np.ndarray], float | None] | None = None,
    groups: Sequence[Any] | np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval: resample `values` with replacement `iters` times,
    compute the statistic of each resample and take its alpha/2 and 1 - alpha/2 quantiles.

    Args:
        values: the observations; with `stat`, rows of any numpy shape (e.g. (label, score) pairs).
        iters: bootstrap resamples.
        seed: seed of `numpy.random.default_rng`.
        alpha: 0.05 gives the 95% interval.
        stat: the statistic of a resample (an array of rows of `values`); default the mean.
            Resamples where it is None or NaN (e.g. AUROC of a one-class resample) are dropped.
        groups: one cluster id per row of `values` (e.g. the problem a step comes from). A resample
            then draws as many clusters as there are, with replacement, and takes every row of each
            drawn cluster: rows of one cluster are correlated (a problem's steps are easy or hard
            together), and resampling them one by one would give too narrow an interval.
            None: the rows are independent.

    Returns (nan, nan) when `values` is empty or every resample was dropped.
    """
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0 or iters <= 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    if groups is None and stat is None:
        boots = x[rng.integers(0, n, size=(iters, n))].mean(axis=1)  # the same draws as row by row
    else:
        if groups is None:
            def draw() -> np.ndarray:
                return x[rng.integers(0, n, n)]
        else:
            if len(groups) != n:
                raise ValueError(f"bootstrap_ci: {len(groups)} groups for {n} rows (fix: one group id per row)")
            _, cluster = np.unique(np.asarray(groups), return_inverse=True)
            members = np.split(np.argsort(cluster, kind="stable"), np.cumsum(np.bincount(cluster))[:-1])

            def draw() -> np.ndarray:
                return x[np.concatenate([members[k] for k in rng.integers(0, len(members), len(members))])]

        fn = stat or (lambda rows: float(rows.mean()))
        raw = (fn(draw()) for _ in range(iters))
        boots = np.array([b for b in raw if b is not None and not np.isnan(b)], dtype=float)
        if len(boots) == 0:
            return (float("nan"), float("nan"))
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def paired_bootstrap(
    before: Sequence[float], after: Sequence[float], iters: int = 2000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, tuple[float, float]]:
    """The mean paired change `mean(after - before)` and its percentile bootstrap (1 - alpha)
    interval, resampling pairs (so the correlation between the two measurements is kept).

    `before[i]` and `after[i]` must measure the same item. With no pairs: (0.0, (0.0, 0.0)).
    """
    if len(before) != len(after):
        raise ValueError(f"paired_bootstrap needs pairs: {len(before)} before, {len(after)} after")
    diff = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    if len(diff) == 0:
        return 0.0, (0.0, 0.0)
    return float(diff.mean()), bootstrap_ci(diff, iters=iters, seed=seed, alpha=alpha)
