"""Step credit in the DPO loss (`DPOTrainConfig.value_margin`): each pair's offset value_margin x
(chosen_value - rejected_value) inside the sigmoid, -log sigmoid(beta * delta - offset) (ODPO's offset,
arXiv 2402.10571; Step-APO-style, CPL, arXiv 2409.08642), on the tiny model."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import pytest
from conftest import changed_tensors

from sharpen.core.errors import ConfigError, TaskError

P = "<|user|>What is 2 + 3 + 4?<|end|>\n<|assistant|>"


def _pairs(chosen_values=(0.75, 1.0), rejected_values=(0.25, 0.0)):
    from datasets import Dataset

    n = len(chosen_values)
    return Dataset.from_dict({
        "prompt": [P, P + "2 + 3 = 5\n"][:n],
        "chosen": ["2 + 3 = 5\n", "5 + 4 = 9\n"][:n],
        "rejected": ["2 + 3 = 6\n", "5 + 4 = 8\n"][:n],
        "chosen_value": list(chosen_values),
        "rejected_value": list(rejected_values),
    })


def _trainer(tiny_model_dir, tmp_path, dataset, **kw):
    from sharpen.train.dpo import DPOTrainConfig, build_trainer

    opts = dict(max_steps=2, per_device_train_batch_size=2, beta=0.5) | kw
    trainer = build_trainer(DPOTrainConfig(model=tiny_model_dir, data="-", output_dir=str(tmp_path), **opts), dataset)
    trainer.model.eval()
    return trainer


def _batch(trainer, rows):
    return trainer.data_collator([trainer.train_dataset[i] for i in rows])


def _with_ratios(trainer, batch, chosen_ratio, rejected_ratio):
    """`batch` with its reference log-probs set so that the policy's log-ratios are the given ones.
    Before training the LoRA policy is its reference (adapters start at zero), so the reference
    log-probs of the batch are also the policy's."""
    import torch

    pc, pr = trainer.compute_ref_log_probs(trainer.model, batch)
    return {**batch, "ref_chosen_logps": pc - torch.tensor(chosen_ratio),
            "ref_rejected_logps": pr - torch.tensor(rejected_ratio)}


@pytest.mark.parametrize("loss_type, expected", [
    ("sigmoid", [math.log(2.0), math.log1p(math.exp(1.8))]),  # -log sigmoid(beta * delta - offset)
    ("hinge", [1.0, 2.8]),  # relu(1 - beta * delta + offset)
])
def test_per_pair_loss_is_the_offset_dpo_formula(tiny_model_dir, tmp_path, loss_type, expected):
    """beta=0.5, value_margin=2. Pair 0: log-ratios +1 / -1, values 0.75 / 0.25: beta * delta = 1,
    offset 1 (sigmoid: ln 2). Pair 1: log-ratios 0.4 / 0, values 1 / 0: beta * delta = 0.2, offset 2
    (sigmoid: ln(1 + e^1.8))."""
    trainer = _trainer(tiny_model_dir, tmp_path, _pairs(), value_margin=2.0, loss_type=loss_type)
    assert trainer.args.precompute_ref_log_probs and trainer.args.loss_type == [loss_type]
    batch = _batch(trainer, [0, 1])
    assert batch["chosen_value"].tolist() == [0.75, 1.0] and batch["rejected_value"].tolist() == [0.25, 0.0]
    ratios = [(1.0, -1.0), (0.4, 0.0)]
    for i in (0, 1):
        one = _with_ratios(trainer, _batch(trainer, [i]), [ratios[i][0]], [ratios[i][1]])
        assert trainer.compute_loss(trainer.model, one).item() == pytest.approx(expected[i], abs=1e-5)
    both = _with_ratios(trainer, batch, [1.0, 0.4], [-1.0, 0.0])
    assert trainer.compute_loss(trainer.model, both).item() == pytest.approx(sum(expected) / 2, abs=1e-5)


def test_no_offset_is_trls_loss(tiny_model_dir, tmp_path):
    """value_margin=0, or a pair without a value gap: TRL's own DPO loss on the same batch."""
    from trl import DPOTrainer

    from sharpen.train.dpo import VALUE_COLUMNS

    plain = _trainer(tiny_model_dir, tmp_path / "plain", _pairs(), precompute_ref_log_probs=True)
    batch = _with_ratios(plain, _batch(plain, [0, 1]), [0.3, -0.2], [-0.5, 0.1])
    assert not set(VALUE_COLUMNS) & set(batch)
    trl_loss = DPOTrainer.compute_loss(plain, plain.model, batch)
    assert plain.compute_loss(plain.model, batch).item() == pytest.approx(trl_loss.item(), abs=1e-6)

    level = _trainer(tiny_model_dir, tmp_path / "level", _pairs((0.5, 0.2), (0.5, 0.2)), value_margin=3.0)
    batch = _with_ratios(level, _batch(level, [0, 1]), [0.3, -0.2], [-0.5, 0.1])
    without = {k: v for k, v in batch.items() if k not in VALUE_COLUMNS}
    assert level.compute_loss(level.model, batch).item() == pytest.approx(
        DPOTrainer.compute_loss(level, level.model, without).item(), abs=1e-6)


def test_offset_leaves_the_sft_term_alone(tiny_model_dir, tmp_path):
    """With sft_weight (RPO) the offset moves the sigmoid term only: the loss grows by exactly
    mean(softplus(offset - beta * delta)) - mean(softplus(-beta * delta))."""
    from trl import DPOTrainer

    from sharpen.train.dpo import VALUE_COLUMNS

    trainer = _trainer(tiny_model_dir, tmp_path, _pairs(), value_margin=2.0, sft_weight=1.0)
    assert trainer.args.loss_type == ["sigmoid", "sft"]
    batch = _with_ratios(trainer, _batch(trainer, [0, 1]), [1.0, 0.4], [-1.0, 0.0])
    with_offset = trainer.compute_loss(trainer.model, batch).item()
    without = DPOTrainer.compute_loss(trainer, trainer.model, {k: v for k, v in batch.items() if k not in VALUE_COLUMNS})
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    gain = (softplus(1.0 - 1.0) + softplus(2.0 - 0.2)) / 2 - (softplus(-1.0) + softplus(-0.2)) / 2
    assert with_offset - without.item() == pytest.approx(gain, abs=1e-5)


def test_training_with_the_offset_runs_and_changes_the_weights(tiny_model_dir, tmp_path):
    from sharpen.train.data import save_dataset
    from sharpen.train.dpo import DPOTrainConfig, train_dpo

    data = str(save_dataset(_pairs(), tmp_path / "pairs"))
    opts = dict(max_steps=2, per_device_train_batch_size=2, save_steps=1, logging_steps=1, learning_rate=1e-2)
    merged = {m: train_dpo(DPOTrainConfig(model=tiny_model_dir, data=data, output_dir=str(tmp_path / f"m{m}"),
                                          value_margin=m, **opts))
              for m in (0.0, 4.0)}
    assert changed_tensors(tiny_model_dir, str(merged[4.0]))
    assert changed_tensors(str(merged[0.0]), str(merged[4.0]))  # the offset changed what was learned
    summary = json.loads((tmp_path / "m4.0" / "sharpen_train.json").read_text())
    assert summary["config"]["value_margin"] == 4.0 and summary["config"]["precompute_ref_log_probs"] is True
    assert summary["metrics"]["pairs"] == 2


@pytest.mark.parametrize("options, match", [
    ({"value_margin": -1.0}, "value_margin=-1.0 must be a finite number >= 0"),
    ({"value_margin": float("nan")}, "value_margin=nan must be a finite number >= 0"),
    ({"value_margin": float("inf")}, "value_margin=inf must be"),
    ({"value_margin": "big"}, "value_margin='big' should be like 0.0"),
    ({"value_margin": True}, "value_margin=True should be like 0.0"),
    ({"value_margin": 1.0, "loss_type": "ipo"}, r"offsets the sigmoid or hinge DPO loss, not loss_type \['ipo'\]"),
    ({"value_margin": 1.0, "f_divergence_type": "forward_kl"}, "needs f_divergence_type reverse_kl"),
    ({"value_margin": 1.0, "beta": 0.0}, "needs beta > 0"),
    ({"value_margin": 1.0, "remove_unused_columns": True}, "remove_unused_columns drops"),
])
def test_bad_options_are_one_line_config_errors(options, match):
    from sharpen.train import make_config

    with pytest.raises(ConfigError, match=match) as e:
        make_config("dpo", model="m", output_dir="o", **options)
    assert "\n" not in str(e.value) and "fix:" in str(e.value)


def test_option_reaches_the_trainer_from_a_run_config_and_the_api():
    from sharpen.loop.config import load_config, trainer_options, validate
    from sharpen.train import make_config

    cfg = load_config(Path(__file__).parents[1] / "configs" / "chain_sum-step-apo.yaml")
    assert cfg.recipe == "mcts-dpo" and trainer_options(cfg, "dpo")["value_margin"] == 1.0
    made = make_config("dpo", model="m", output_dir="o", **trainer_options(cfg, "dpo"))
    assert made.value_margin == 1.0 and made.precompute_ref_log_probs is True
    assert made.loss_type == ["sigmoid", "sft"]
    plain = make_config("dpo", model="m", output_dir="o")
    assert plain.value_margin == 0.0 and plain.precompute_ref_log_probs is False
    with pytest.raises(ConfigError, match="value_margin=-0.5 must be"):
        validate({"recipe": "mcts-dpo", "train": {"value_margin": -0.5}})


@pytest.mark.parametrize("dataset, match", [
    (lambda: _pairs().remove_columns(["chosen_value", "rejected_value"]), "missing \\['chosen_value', 'rejected_value'\\]"),
    (lambda: _pairs((0.75, None), (0.25, 0.0)), "pair 1 has chosen_value=None"),
    (lambda: _pairs((0.75, float("nan")), (0.25, 0.0)), "needs finite values"),
    (lambda: _pairs((0.25, 1.0), (0.75, 0.0)), "pair 0 has chosen_value 0.25 < rejected_value 0.75"),
])
def test_pairs_without_usable_values_are_one_line_errors(tiny_model_dir, tmp_path, dataset, match):
    from sharpen.train.dpo import DPOTrainConfig, build_trainer

    cfg = DPOTrainConfig(model=tiny_model_dir, data="pairs", output_dir=str(tmp_path), value_margin=1.0)
    with pytest.raises(TaskError, match=match) as e:
        build_trainer(cfg, dataset())
    assert "\n" not in str(e.value) and "value_margin: 0" in str(e.value)


@pytest.mark.slow
def test_cli_bad_value_margin_and_valueless_pairs_exit_2(tiny_model_dir, tmp_path):
    from test_cli import run

    from sharpen.train.data import save_dataset

    data = str(save_dataset(_pairs().remove_columns(["chosen_value", "rejected_value"]), tmp_path / "pairs"))
    for arg, needle in (("value_margin=-1", "value_margin=-1 must be a finite number >= 0"),
                        ("value_margin=1.0", "value_margin needs pairs with chosen_value/rejected_value")):
        r = run(["train", "dpo", "--model", tiny_model_dir, "--data", data, "--out", str(tmp_path / "o"),
                 "--arg", arg], cwd=tmp_path)
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr
        assert "Traceback" not in r.stderr


def test_overridden_trl_methods_keep_their_signatures():
    """ValueMarginDPOTrainer overrides DPOTrainer.compute_loss and compute_ref_log_probs (public) and
    relies on TRL's loss reading ref_chosen_logps from the batch when they are precomputed
    (test_per_pair_loss_is_the_offset_dpo_formula checks that): tested with TRL 1.16."""
    from trl import DPOTrainer

    from sharpen.train.dpo import trainer_class

    assert list(inspect.signature(DPOTrainer.compute_loss).parameters) == [
        "self", "model", "inputs", "return_outputs", "num_items_in_batch"]
    assert list(inspect.signature(DPOTrainer.compute_ref_log_probs).parameters) == ["self", "model", "inputs"]
    assert issubclass(trainer_class(), DPOTrainer)
