"""Sweeps on validation problems (training split, past the labelled ones) with a paired comparison
against the first algorithm."""

import json

import pytest

from sharpen.core.errors import ConfigError

TASK_ARGS = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}


def test_sweep_on_training_problems_after_skip(tiny_model_dir, tmp_path):
    from sharpen import api
    from sharpen.core.tasks import load_task
    from sharpen.search.process import SearchSettings

    settings = SearchSettings(rollout_tokens=8, step_tokens=4, max_depth=2)
    results, out = api.sweep(["vote", "bon@rollout:1"], [16], model=tiny_model_dir, n=3, settings=settings,
                             task_args=TASK_ARGS, out=tmp_path / "sw", split="train", skip=4)
    want = [p.id for p in load_task("gym:chain_sum", TASK_ARGS).problems("train", 7)[4:]]
    for m in results:
        trees = [json.loads(x) for x in open(m["trees"])]
        assert [t["problem_id"] for t in trees] == want and {t["split"] for t in trees} == {"train"}
    vote, bon = results
    assert "vs_first" not in vote and bon["vs_first"]["baseline"] == "vote"
    lo, hi = bon["vs_first"]["ci95"]
    assert lo <= bon["vs_first"]["delta"] <= hi
    header = json.loads((out / "sweep.json").read_text())
    assert (header["split"], header["skip"]) == ("train", 4)
    with pytest.raises(ConfigError, match="--split"):
        api.sweep(["vote"], [16], model=tiny_model_dir, n=1, task_args=TASK_ARGS, split="val")
    # the oracle scorer reads reference answers: a sweep may use it on the training split, never on the test split
    with pytest.raises(ConfigError, match="reference answers"):
        api.sweep(["omega@oracle:2"], [16], model=tiny_model_dir, n=1, task_args=TASK_ARGS)
    results, _ = api.sweep(["omega@oracle:2"], [24], model=tiny_model_dir, n=1, settings=settings,
                           task_args=TASK_ARGS, out=tmp_path / "om", split="train", skip=4)
    assert results[0]["n"] == 1


def test_paired_change_interval_covers_the_true_change_and_is_narrower_than_unpaired():
    """The sweep's `vs_first` interval (`paired_bootstrap`) on simulated problems, each solved by
    both configurations with one problem-level chance (easy or hard), the second 0.15 more often:
    its 95% interval covers the true change in about 95% of 400 repeats, and, rows being positively
    correlated, it is much narrower than the interval that resamples the two columns independently
    (which over-covers)."""
    import numpy as np

    from sharpen.core.stats import paired_bootstrap

    rng = np.random.default_rng(7)
    repeats, n, change, iters = 400, 60, 0.15, 1000
    covered, unpaired_covered, widths = 0, 0, []
    for r in range(repeats):
        p = rng.choice([0.02, 0.8], n)  # a problem's chance under the first configuration
        before = (rng.random(n) < p).astype(float)
        after = (rng.random(n) < p + change).astype(float)
        delta, (lo, hi) = paired_bootstrap(before, after, iters=iters, seed=r)
        assert delta == pytest.approx(after.mean() - before.mean())
        covered += lo <= change <= hi
        draw = np.random.default_rng(r)
        unpaired = (after[draw.integers(0, n, (iters, n))].mean(1) - before[draw.integers(0, n, (iters, n))].mean(1))
        ulo, uhi = np.quantile(unpaired, [0.025, 0.975])
        unpaired_covered += ulo <= change <= uhi
        widths.append((hi - lo, uhi - ulo))
    assert 0.92 <= covered / repeats <= 0.975
    assert unpaired_covered / repeats > 0.98
    w = np.array(widths)
    assert (w[:, 0] < w[:, 1]).mean() > 0.95 and w[:, 0].mean() < 0.75 * w[:, 1].mean()


def test_a_sweep_dir_grows_keeps_its_cells_and_refuses_other_settings(tiny_model_dir, tmp_path):
    from sharpen import api
    from sharpen.search.process import SearchSettings

    settings = SearchSettings(rollout_tokens=8, step_tokens=4, max_depth=2)
    kw = dict(model=tiny_model_dir, n=2, settings=settings, task_args=TASK_ARGS, out=tmp_path / "sw")
    first, out = api.sweep(["vote", "pf@rollout:1"], [16], options={"pf": {"fill": "true"}}, **kw)
    vote_trees = out / "vote@none" / "budget-16" / "trees.jsonl"
    stamp = vote_trees.stat().st_mtime_ns
    assert first[1]["options"]["fill"] is True and first[1]["options"]["n"] == 4  # defaults recorded
    # extend: vote again at 16 (its finished trees are reused) and a new budget; pf at 16 is kept
    results, _ = api.sweep(["vote"], [16, 24], **kw)
    assert [(r["algo"], r["budget"]) for r in results] == [("vote", 16), ("pf", 16), ("vote", 24)]
    assert vote_trees.stat().st_mtime_ns == stamp and results[0]["accuracy"] == first[0]["accuracy"]
    assert results[1] == first[1]
    header = json.loads((out / "sweep.json").read_text())
    assert [(r["algo"], r["budget"]) for r in header["results"]] == [("vote", 16), ("pf", 16), ("vote", 24)]
    assert header["task_args"] == TASK_ARGS and header["settings"]["step_tokens"] == 4
    assert (out / "accuracy_vs_tokens.png").stat().st_size > 0
    # other problems or settings, or a cell asked for again with other options: refused before any work
    with pytest.raises(ConfigError, match="another n"):
        api.sweep(["vote"], [16], **(kw | {"n": 3}))
    with pytest.raises(ConfigError, match="another settings"):
        api.sweep(["vote"], [16], **(kw | {"settings": SearchSettings(rollout_tokens=9, step_tokens=4, max_depth=2)}))
    with pytest.raises(ConfigError, match="other options"):
        api.sweep(["pf@rollout:1"], [16], options={"pf": {"n": 2}}, **kw)
    # ... also at a budget the row was never swept at: one row is one configuration
    with pytest.raises(ConfigError, match="other options"):
        api.sweep(["pf@rollout:1"], [32], options={"pf": {"n": 2}}, **kw)
    assert json.loads((out / "sweep.json").read_text()) == header
    # a new budget asked for with pf first: vote, the first sweep's first row, stays the baseline
    grown, _ = api.sweep(["pf@rollout:1", "vote"], [32], options={"pf": {"fill": "true"}}, **kw)
    at32 = [r for r in grown if r["budget"] == 32]
    assert [r["algo"] for r in at32] == ["vote", "pf"]
    assert "vs_first" not in at32[0] and at32[1]["vs_first"]["baseline"] == "vote"
    assert at32[1]["vs_first"]["delta"] == pytest.approx(at32[1]["accuracy"] - at32[0]["accuracy"])
    pf32 = json.loads((out / "pf@rollout-1" / "budget-32" / "metrics.json").read_text())
    assert pf32["vs_first"] == at32[1]["vs_first"]
    # a sweep.json that is not one, or one from before the header was recorded: one-line refusals
    (out / "sweep.json").write_text("[]")
    with pytest.raises(ConfigError, match="is not a sweep.json"):
        api.sweep(["vote"], [16], **kw)
    (out / "sweep.json").write_text(json.dumps({k: v for k, v in header.items() if k != "settings"}))
    with pytest.raises(ConfigError, match="older sharpen"):
        api.sweep(["vote"], [16], **kw)


def test_sweep_cells_of_distinct_scorer_specs_get_distinct_dirs(tiny_backend, tmp_path):
    """`prm:runs/x` and `prm:runs_x` once shared a directory, and the second cell silently resumed
    from the first one's trees; simple specs keep their readable names."""
    from sharpen.api import make_process
    from sharpen.core.tasks import load_task
    from sharpen.search.process import SearchSettings
    from sharpen.search.scorers import RolloutScorer
    from sharpen.search.sweep import run_sweep

    task = load_task("gym:chain_sum", TASK_ARGS)
    process = make_process(tiny_backend, task, SearchSettings(rollout_tokens=6, step_tokens=4, max_depth=2))
    specs = ["prm:runs/x", "prm:runs_x"]  # stand-ins: any scorer object serves under a spec
    scorers = {sc: RolloutScorer(process, k=1) for sc in specs}
    results = run_sweep(process, scorers, [("bon", sc) for sc in specs], [12], task.problems("test", 1),
                        tmp_path / "sw", parallel=1)
    dirs = [m["trees"] for m in results]
    assert len(set(dirs)) == 2
    for m in results:
        assert [json.loads(x)["scorer"] for x in open(m["trees"])] == [m["scorer"]]  # its own trees, not the other's
    from sharpen.search.sweep import cell_name

    assert [cell_name(a, sc) for a, sc in [("vote", None), ("bon", "prm:M"), ("pf", "rollout:1")]] == [
        "vote@none", "bon@prm-M", "pf@rollout-1"]
    long = cell_name("bon", "prm:/" + "d" * 300)
    assert len(long) < 100 and long.startswith("bon@prm-_ddd") and "~" in long
