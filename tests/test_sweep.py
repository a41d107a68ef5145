"""Sweeps on validation problems (training split, past the labelled ones) with a paired comparison
against the first algorithm."""

import json

import pytest

from sharpen.errors import ConfigError

TASK_ARGS = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}


def test_sweep_on_training_problems_after_skip_with_paired_change(tiny_model_dir, tmp_path):
    from sharpen import api
    from sharpen.process import SearchSettings
    from sharpen.tasks import load_task

    settings = SearchSettings(rollout_tokens=8, step_tokens=4, max_depth=2)
    results, out = api.sweep(["vote", "bon@rollout:1"], [16], model=tiny_model_dir, n=3, settings=settings,
                             task_args=TASK_ARGS, out=tmp_path / "sw", split="train", skip=4)
    want = [p.id for p in load_task("gym:chain_sum", TASK_ARGS).problems("train", 7)[4:]]
    for m in results:
        trees = [json.loads(x) for x in open(m["trees"])]
        assert [t["problem_id"] for t in trees] == want and {t["split"] for t in trees} == {"train"}
    vote, bon = results
    assert "vs_first" not in vote and bon["vs_first"]["baseline"] == "vote"
    assert bon["vs_first"]["delta"] == pytest.approx(bon["accuracy"] - vote["accuracy"])
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


def test_a_sweep_dir_grows_keeps_its_cells_and_refuses_other_settings(tiny_model_dir, tmp_path):
    from sharpen import api
    from sharpen.process import SearchSettings

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
