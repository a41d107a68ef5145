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
