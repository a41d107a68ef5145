from pathlib import Path

import pytest
from conftest import changed_tensors

from sharpen.core.errors import ConfigError
from sharpen.loop.config import LoopConfig, dump, load_config, validate
from sharpen.loop.runner import auroc

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.rounds >= 1 and cfg.eval.n >= 200
    # every default is written out and reads back to the same config
    assert validate(__import__("yaml").safe_load(dump(cfg))) == cfg


def test_recipes_shipped():
    assert {load_config(p).recipe for p in CONFIGS} >= {"mcts-dpo", "step-dpo", "rft", "prm-guided", "grpo"}


def test_overrides_and_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\ntrain: {max_steps: 3}\n")
    cfg = load_config(p, {"train.max_steps": 7, "collect.budget": 99})
    assert cfg.train.max_steps == 7 and cfg.collect.budget == 99 and cfg.name == "x"
    with pytest.raises(ConfigError, match="collect.budgt"):
        load_config(p, {"collect.budgt": 1})
    with pytest.raises(ConfigError, match="recipe"):
        validate({"recipe": "magic"})
    p.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    assert LoopConfig().recipe == "mcts-dpo"


def test_collect_row_counts_are_bounded_by_the_budget_when_the_config_loads():
    """A run config's search options meet the same budget check as `sharpen search` (every row
    costs a token at least), before the run directory exists."""
    with pytest.raises(ConfigError, match=r"collect: algorithm pf: option n=300 asks for more rows than a budget of 256"):
        validate({"collect": {"algo": "pf", "budget": 256, "args": {"n": 300}}})
    assert validate({"collect": {"algo": "pf", "budget": 256, "args": {"n": 16}}}).collect.args == {"n": 16}


def test_auroc():
    assert auroc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert auroc([0.5], [0.5]) == 0.5
    assert auroc([], [0.1]) is None


def test_train_steps_capped_by_epochs():
    from sharpen.loop.runner import train_steps

    assert train_steps(12, None, 5, 8) == 12
    assert train_steps(12, 1.5, 89, 8) == 12  # plenty of pairs: max_steps
    assert train_steps(12, 1.5, 20, 8) == 4  # ceil(1.5 * 20 / 8)
    assert train_steps(12, 1.5, 1, 8) == 1
    assert train_steps(12, 1.5, 0, 8) == 12  # nothing to train on: the runner skips training


def test_training_pool(tmp_path):
    """collect.pool: a seeded random draw from a deeper pool of distinct training problems, disjoint
    from the held-out set; a pool smaller than what the rounds need is a config error."""
    from sharpen.loop.runner import LoopRunner

    base = {"rounds": 2, "collect": {"problems": 10}, "eval": {"n": 50}}
    with pytest.raises(ConfigError, match="collect.pool=15 is smaller than .* = 20"):
        validate({**base, "collect": {"problems": 10, "pool": 15}})
    plain = LoopRunner(validate(base), tmp_path / "a")
    deep = LoopRunner(validate({**base, "collect": {"problems": 10, "pool": 400}}), tmp_path / "b")
    again = LoopRunner(validate({**base, "collect": {"problems": 10, "pool": 400}}), tmp_path / "c")
    ids = [p.id for p in deep.train_pool]
    assert len(ids) == len(set(ids)) == 20 and ids == [p.id for p in again.train_pool]
    assert ids != [p.id for p in plain.train_pool]
    assert not set(ids) & {p.id for p in deep.test}
    pool = {p.id for p in deep.task.problems("train", 400, seed=0)}
    assert set(ids) <= pool


def test_validation_split_is_pool_problems_no_round_trains_on(tmp_path):
    """eval.split: validation evaluates on problems of the training pool that no round trains on (the
    training problems' mix, unlike the problems after the pool); collect.screen never takes them; a
    pool without room for them is a one-line config error."""
    from sharpen.loop.runner import LoopRunner

    cfg = {"rounds": 2, "collect": {"problems": 10, "pool": 60}, "eval": {"n": 30, "split": "validation"}}
    runner = LoopRunner(validate(cfg), tmp_path / "v")
    held_out = LoopRunner(validate({**cfg, "eval": {"n": 30}}), tmp_path / "t")
    valid = [p.id for p in runner.test]
    assert len(valid) == len(set(valid)) == 30
    assert set(valid) <= {p.id for p in runner.task.problems("train", 60, seed=0)}
    assert not set(valid) & {p.id for p in runner.train_pool} and not set(valid) & {p.id for p in runner.spare_pool}
    assert not set(valid) & {p.id for p in held_out.test}
    assert [p.id for p in runner.train_pool] == [p.id for p in held_out.train_pool]  # training is unchanged
    assert len(runner.spare_pool) == 60 - 20 - 30
    other = LoopRunner(validate({**cfg, "seed": 1}), tmp_path / "s1")
    assert [p.id for p in other.test] != valid
    for bad in ({**cfg, "collect": {"problems": 10, "pool": 49}}, {**cfg, "collect": {"problems": 10}}):
        with pytest.raises(ConfigError, match=r"eval.split=validation .* needs collect.pool >= .* = 50 \(fix: collect.pool: 50"):
            validate(bad)
    with pytest.raises(ConfigError, match=r"above collect.problems x rounds \+ eval.n = 50"):
        validate({**cfg, "collect": {"problems": 10, "pool": 50, "screen": 2}})
    with pytest.raises(ConfigError, match="eval.split"):
        validate({**cfg, "eval": {"n": 30, "split": "train"}})


def test_replay_joins_rounds_and_drops_duplicates(tmp_path):
    from datasets import Dataset

    from sharpen.loop.runner import LoopRunner
    from sharpen.train.data import load_dataset_dir, save_dataset

    runner = LoopRunner(validate({"rounds": 2, "collect": {"problems": 2}, "eval": {"n": 4}}), tmp_path)

    def pairs(r: int, chosen: list[str]) -> None:
        ds = Dataset.from_dict({"prompt": ["q\n"] * len(chosen), "chosen": chosen, "rejected": ["x\n"] * len(chosen),
                                "round": [r] * len(chosen)})
        save_dataset(ds, tmp_path / f"round-{r}" / "data" / "pairs")

    pairs(1, ["a\n", "b\n"])
    pairs(2, ["b\n", "c\n"])
    out = runner._replay(2, "pairs", tmp_path / "round-2" / "train" / "replay")
    got = load_dataset_dir(out)
    assert got["chosen"] == ["b\n", "c\n", "a\n"] and got["round"] == [2, 2, 1]  # newest first, "b" once




@pytest.mark.parametrize("init", ["previous", pytest.param("base", marks=pytest.mark.slow)])
def test_two_round_loop_trains_on_replayed_pairs(tmp_path, tiny_model_dir, init):
    import json

    from sharpen.loop.runner import LoopRunner
    from sharpen.train.data import load_dataset_dir

    cfg = validate({
        "recipe": "mcts-dpo", "model": tiny_model_dir, "rounds": 2, "seed": 3,
        "task_args": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
        # 6 problems, 300 tokens, depth 2: enough oracle rollouts that each round finds step pairs
        "collect": {"algo": "mcts", "scorer": "oracle:4", "problems": 6, "budget": 300, "step_tokens": 6,
                    "rollout_tokens": 12, "max_depth": 2, "temperature": 1.0,
                    "strict_format": False},  # a random tiny model writes no Answer: lines
        "build": {"min_margin": 0.01},
        "train": {"max_steps": 2, "per_device_train_batch_size": 2, "replay": True, "init": init},
        "eval": {"n": 4, "samples": 0, "max_tokens": 8},
    })
    LoopRunner(cfg, tmp_path).run_all()
    summary = json.loads((tmp_path / "round-2" / "train" / "summary.json").read_text())
    round1 = json.loads((tmp_path / "round-1" / "train" / "summary.json").read_text())["model"]
    own = [len(load_dataset_dir(tmp_path / f"round-{r}" / "data" / "pairs")) for r in (1, 2)]
    assert own[0] > 0 and own[1] > 0, own  # both rounds found pairs, so both trained
    replay_dir = tmp_path / "round-2" / "train" / "replay"
    replay = load_dataset_dir(replay_dir)
    assert summary["rows"] == len(replay) and own[1] <= len(replay) <= sum(own)
    assert set(replay["round"]) == {1, 2}
    # round 1 trained a new policy; round 2 collected with it and trained on the replayed pairs from
    # round 1's policy (init=previous) or the base model (init=base)
    assert round1 != tiny_model_dir and changed_tensors(tiny_model_dir, round1)
    collected_with = json.loads((tmp_path / "round-2" / "collect" / "metrics.json").read_text())["model"]
    assert collected_with == round1
    start = tiny_model_dir if init == "base" else round1
    assert summary["start"] == start and summary["model"] not in (start, tiny_model_dir, round1)
    trainer = json.loads((Path(summary["model"]).parent / "sharpen_train.json").read_text())
    assert trainer["config"]["model"] == start and trainer["config"]["data"] == str(replay_dir)
    assert trainer["metrics"]["pairs"] == len(replay)
    assert changed_tensors(start, summary["model"])  # the round-2 policy moved from where it started


def test_init_base_needs_replay():
    with pytest.raises(ConfigError, match="train.replay"):
        validate({"rounds": 2, "train": {"init": "base"}})
