"""`sharpen.core.stats`: one AUROC and one bootstrap, giving the same numbers as the implementations they
replace (copied below as they were) for the same inputs and seed, so reported results don't shift."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sharpen.core.stats import auroc, bootstrap_ci, paired_bootstrap


# -- the replaced implementations, verbatim in substance -------------------------------------------
def pairwise_auroc(pos, neg):  # sharpen.loop.runner.auroc
    if not pos or not neg:
        return None
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def old_bootstrap_ci(values, iters=2000, seed=0, alpha=0.05):  # sharpen.search.collect.bootstrap_ci
    if not values:
        return (float("nan"), float("nan"))
    x = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(iters, len(x)))].mean(axis=1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def old_paired(a, b, seed, iters=2000):  # sharpen.loop.runner.LoopRunner.paired, on aligned lists
    diff = np.array([y - x for x, y in zip(a, b, strict=True)])
    rng = np.random.default_rng(seed)
    boots = diff[rng.integers(0, len(diff), size=(iters, len(diff)))].mean(axis=1) if len(diff) else np.zeros(1)
    return (float(diff.mean()) if len(diff) else 0.0,
            [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))])


def old_rank_auroc(labels, scores):  # sharpen.train.metrics.auroc
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=float)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def old_auroc_with_ci(labels, scores, n_boot=1000, seed=0, level=0.95):  # sharpen.train.metrics
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        a = old_rank_auroc(y[idx], s[idx])
        if not np.isnan(a):
            boots.append(a)
    lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2]) if boots else (float("nan"),) * 2
    return {"auroc": old_rank_auroc(y, s), "ci_low": float(lo), "ci_high": float(hi)}


# -- tests -----------------------------------------------------------------------------------------
def test_auroc_known_values_and_empty_sides():
    assert auroc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert auroc([0.1], [0.9]) == 0.0
    assert auroc([0.5], [0.5]) == 0.5
    assert auroc([0.4, 0.8], [0.1, 0.5]) == 0.75
    assert auroc([], [0.1]) is None and auroc([0.1], []) is None


@pytest.mark.parametrize("seed", range(5))
def test_auroc_equals_the_pairwise_count_and_the_rank_formula(seed):
    rng = np.random.default_rng(seed)
    pos = list(rng.integers(0, 6, rng.integers(1, 40)) / 5)  # coarse scores: many ties
    neg = list(rng.integers(0, 6, rng.integers(1, 40)) / 5)
    assert auroc(pos, neg) == pairwise_auroc(pos, neg)
    assert auroc(pos, neg) == old_rank_auroc([1] * len(pos) + [0] * len(neg), pos + neg)


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("n", [1, 5, 64])
def test_bootstrap_ci_equals_the_old_collect_interval(seed, n):
    values = list(np.random.default_rng(100 + n).integers(0, 2, n).astype(float))
    assert bootstrap_ci(values, seed=seed) == old_bootstrap_ci(values, seed=seed)
    assert bootstrap_ci(values, iters=300, seed=seed, alpha=0.1) == old_bootstrap_ci(values, 300, seed, 0.1)
    assert all(math.isnan(v) for v in bootstrap_ci([]))


def test_collect_bootstrap_ci_is_the_shared_one():
    from sharpen.search.collect import bootstrap_ci as collect_bootstrap_ci

    values = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    assert collect_bootstrap_ci(values) == bootstrap_ci(values) == old_bootstrap_ci(values)


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("n", [1, 10, 50])
def test_paired_bootstrap_equals_the_old_runner_paired(seed, n):
    rng = np.random.default_rng(n)
    before = list(rng.integers(0, 2, n).astype(float))
    after = list(rng.integers(0, 2, n).astype(float))
    delta, (lo, hi) = paired_bootstrap(before, after, seed=seed)
    assert (delta, [lo, hi]) == old_paired(before, after, seed)
    assert lo <= delta <= hi


def test_paired_bootstrap_edges():
    assert paired_bootstrap([], []) == (0.0, (0.0, 0.0)) and old_paired([], [], 0) == (0.0, [0.0, 0.0])
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [])


@pytest.mark.parametrize("seed", [0, 5])
def test_metrics_auroc_with_ci_equals_the_old_one(seed):
    from sharpen.core.stats import labelled_auroc as labels_auroc
    from sharpen.train.metrics import auroc_with_ci

    rng = np.random.default_rng(seed)
    labels = list(rng.integers(0, 2, 30))
    scores = list(np.round(rng.random(30), 1))
    old = old_auroc_with_ci(labels, scores, n_boot=200, seed=seed)
    new = auroc_with_ci(labels, scores, n_boot=200, seed=seed)
    assert {k: new[k] for k in old} == old
    assert labels_auroc(labels, scores) == old["auroc"]
    assert labels_auroc([1, 1], [0.2, 0.3]) is None  # one convention for the undefined case: None
    # one positive: most resamples hold a single class and are dropped, as before
    few = old_auroc_with_ci([1] + [0] * 9, scores[:10], n_boot=50, seed=seed)
    assert {k: auroc_with_ci([1] + [0] * 9, scores[:10], n_boot=50, seed=seed)[k] for k in few} == few


def test_bootstrap_ci_with_a_statistic_drops_undefined_resamples():
    rows = np.array([[1, 0.9], [0, 0.1]])
    lo, hi = bootstrap_ci(rows, iters=50, stat=lambda r: auroc(r[r[:, 0] == 1, 1], r[r[:, 0] == 0, 1]))
    assert lo == hi == 1.0
    assert all(math.isnan(v) for v in bootstrap_ci(rows[:1], iters=5, stat=lambda r: None))


def _clustered(rng, problems: int, steps: int):
    """Steps of `problems` problems whose labels and scores share the problem's difficulty z: the
    pooled AUROC is carried by telling easy problems from hard ones, so a problem's steps move together."""
    z = np.repeat(rng.normal(size=problems), steps)
    labels = (rng.random(problems * steps) < 1 / (1 + np.exp(-2 * z))).astype(int)
    scores = z + 0.3 * rng.normal(size=problems * steps)
    return labels, scores, np.repeat([f"p{i}" for i in range(problems)], steps)


def test_prm_auroc_interval_resamples_problems_and_is_wider_than_by_step(monkeypatch):
    """On clustered steps (20 of each of 30 problems) `prm_auroc`'s interval resamples problems and
    is much wider than resampling the steps one by one, which treats 600 correlated steps as 600
    independent ones (about twice as wide on such data, over seeds)."""
    import sharpen.train.metrics as metrics

    labels, scores, problem = _clustered(np.random.default_rng(3), 30, 20)
    rows = [{"label": int(y), "terminal": i % 20 == 19, "problem_id": p, "leaf": i % 20 == 19}
            for i, (y, p) in enumerate(zip(labels, problem, strict=True))]
    monkeypatch.setattr(metrics, "score_last", lambda prm_dir, rows, batch_size=8: list(scores))
    res = metrics.prm_auroc("unused", rows, n_boot=400)
    by_step = bootstrap_ci(np.column_stack([labels, scores]), iters=400,
                           stat=lambda r: auroc(r[r[:, 0] == 1, 1], r[r[:, 0] == 0, 1]))
    assert res["auroc"] == auroc(scores[labels == 1], scores[labels == 0])
    assert res["ci_low"] <= res["auroc"] <= res["ci_high"]
    assert res["ci_high"] - res["ci_low"] > 1.5 * (by_step[1] - by_step[0]), (res, by_step)
    assert res["resampled"] == "problem" and res["problems"] == 30


def test_bootstrap_by_cluster_covers_the_true_mean_where_by_row_does_not():
    """Rows sharing a cluster effect (30 clusters of 10, true mean 0): resampling clusters gives an
    interval that covers the mean in about 95% of repeats; resampling rows, far less often."""
    rng = np.random.default_rng(11)
    repeats, clusters, size = 150, 30, 10
    groups = np.repeat(np.arange(clusters), size)
    by_cluster = by_row = 0
    for r in range(repeats):
        x = np.repeat(rng.normal(size=clusters), size) + 0.5 * rng.normal(size=clusters * size)
        lo, hi = bootstrap_ci(x, iters=400, seed=r, groups=groups)
        by_cluster += lo <= 0.0 <= hi
        lo, hi = bootstrap_ci(x, iters=400, seed=r)
        by_row += lo <= 0.0 <= hi
    assert 0.88 <= by_cluster / repeats <= 0.99 and by_row / repeats < 0.7, (by_cluster, by_row)
    with pytest.raises(ValueError, match="one group id per row"):
        bootstrap_ci([1.0, 2.0], groups=[0])
