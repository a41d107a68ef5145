from pathlib import Path

import pytest

from sharpen.errors import ConfigError
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
    assert {load_config(p).recipe for p in CONFIGS} >= {"mcts-dpo", "step-dpo", "rft", "prm-guided"}


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
