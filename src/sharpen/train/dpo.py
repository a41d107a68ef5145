"""Step-level DPO with TRL's `DPOTrainer` (Rafailov et al. 2023; step pairs as in MCTS-DPO,
arXiv 2405.00451, and Step-DPO, arXiv 2406.18629).

The reference model is the policy before this training: with LoRA (the default), TRL uses the
base model with the adapters disabled; with full fine-tuning, TRL loads a frozen copy of `model`.

One deviation from TRL's defaults, on purpose: TRL appends EOS to every non-conversational
completion, but a step is not the end of a solution, so a pair `(prompt, step)` must not teach the
policy to stop after the step. TRL (1.16) has no option for that, so with `append_eos=False`
(default) each completion gets one EOS of our own before the dataset goes in (TRL's appending is
then a no-op), and that one token is dropped again from the tokenised rows: by the preference
collator passed through DPOTrainer's public `data_collator` argument while the constructor
precomputes reference log-probs, then in `trainer.train_dataset` itself. A step that ends in EOS on
purpose (`sharpen.train.data.step_completion`: a rejected step after which the model stopped) keeps it.

Step credit in the loss (`value_margin`): each pair's value gap widens the margin its chosen step must
win by, -log sigmoid(beta * (log-ratio chosen - log-ratio rejected) - value_margin * (chosen_value -
rejected_value)): ODPO's offset (Amini et al. 2024, arXiv 2402.10571) with the scorer's step values, in
the spirit of Step-APO (CPL, Wang et al. 2024, arXiv 2409.08642), which puts MCTS advantage estimates
into the DPO objective (two siblings share their prefix, so their advantage gap is their value gap).
TRL (1.16) has no per-pair offset, so `ValueMarginDPOTrainer` adds `value_margin * gap / beta` to the
reference log-prob of the chosen step in the batch, which TRL's loss reads when reference log-probs are
precomputed: beta * (chosen log-ratio) drops by exactly the offset, and nothing else in the loss moves.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trl import DPOConfig

from sharpen.backends.models import load_tokenizer, resolve_model
from sharpen.core.errors import ConfigError, TaskError
from sharpen.train.common import (
    SharpenArgs,
    fit,
    prepare_model,
    prepare_trainer,
    quiet,
    save_outputs,
    write_summary,
)
from sharpen.train.data import load_dataset_dir

PAIR_COLUMNS = ("prompt", "chosen", "rejected")
VALUE_COLUMNS = ("chosen_value", "rejected_value")
"""The scorer's values of a pair's two steps (`sharpen.train.data.step_pairs`), read by `value_margin`."""
MARGIN_LOSSES = {"sigmoid", "hinge", "sft"}
"""TRL loss types `value_margin` applies to: the offset moves their logit beta * delta by exactly the
offset ("sft", the NLL on the chosen step, does not read the reference)."""


@dataclass
class DPOTrainConfig(SharpenArgs, DPOConfig):
    """`sharpen train dpo`: TRL's `DPOConfig` (every `TrainingArguments` and DPO option: `beta`,
    `loss_type`, `precompute_ref_log_probs`, ...) with sharpen's fields (`SharpenArgs`) and these."""

    sft_weight: float = 0.0
    """Weight of an NLL term on the chosen step added to the DPO loss (RPO, Pang et al. 2024,
    arXiv 2404.19733: TRL's loss_type ["sigmoid", "sft"]); 0 = plain DPO."""
    value_margin: float = 0.0
    """Step credit in the loss: each pair must win by an offset of value_margin x (chosen_value -
    rejected_value), the scorer's value gap of its two steps: -log sigmoid(beta * delta - offset)
    (ODPO's offset, arXiv 2402.10571; Step-APO-style advantage gap, CPL, arXiv 2409.08642). 0 = plain
    DPO. >= 0; needs pairs with chosen_value/rejected_value (`sharpen build pairs`), loss_type sigmoid or
    hinge (sft may be added), f_divergence_type reverse_kl; turns precompute_ref_log_probs on (the offset
    enters through the precomputed reference log-probs), and TRL's logged rewards/chosen,
    rewards/margins and rewards/accuracies are then net of the offset."""
    append_eos: bool = False
    """Append EOS to chosen/rejected (TRL's default). Off: a step does not end the solution."""
    remove_unused_columns: bool = False

    def __post_init__(self) -> None:
        m = self.value_margin
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or m < 0:
            raise ConfigError(f"value_margin={m!r} must be a finite number >= 0 (fix: e.g. 1.0, or 0 for plain DPO)")
        if self.sft_weight > 0 and "sft" not in self.loss_type:
            self.loss_type = [*self.loss_type, "sft"]
            self.loss_weights = [1.0] * (len(self.loss_type) - 1) + [self.sft_weight]
        super().__post_init__()
        if m > 0:
            self._check_value_margin()
            self.precompute_ref_log_probs = True

    def _check_value_margin(self) -> None:
        """The options `value_margin` > 0 works with, each a one-line `ConfigError`."""
        m = self.value_margin
        other = [t for t in self.loss_type if t not in MARGIN_LOSSES]
        if other or not set(self.loss_type) & {"sigmoid", "hinge"}:
            raise ConfigError(f"value_margin={m} offsets the sigmoid or hinge DPO loss, not loss_type {self.loss_type} "
                              "(fix: loss_type sigmoid or hinge, or value_margin: 0)")
        if self.f_divergence_type != "reverse_kl":
            raise ConfigError(f"value_margin={m} needs f_divergence_type reverse_kl, not {self.f_divergence_type!r} "
                              "(fix: f_divergence_type: reverse_kl, or value_margin: 0)")
        if not self.beta > 0:
            raise ConfigError(f"value_margin={m} needs beta > 0, got beta={self.beta} (fix: e.g. beta: 0.1)")
        if self.remove_unused_columns:
            raise ConfigError(f"value_margin={m} reads the chosen_value/rejected_value columns, which "
                              "remove_unused_columns drops (fix: remove_unused_columns: false)")


def _add_eos(eos: str) -> Any:
    def add(ex: dict) -> dict:
        return {"chosen": ex["chosen"] + eos, "rejected": ex["rejected"] + eos}

    return add


def _strip_eos(eos_id: int) -> Any:
    """Drops the one EOS `_add_eos` gave a tokenised row's completions (never a completion's only token)."""

    def strip(ex: dict) -> dict:
        c, r = ex["chosen_ids"], ex["rejected_ids"]
        return {
            "chosen_ids": c[:-1] if c and c[-1] == eos_id and len(c) > 1 else c,
            "rejected_ids": r[:-1] if r and r[-1] == eos_id and len(r) > 1 else r,
        }

    return strip


def _step_collator(tok: Any, args: Any, strip_eos: bool, values: bool = False) -> Any:
    """TRL's preference collator, as DPOTrainer builds it when given none; with `strip_eos` it first
    applies `_strip_eos` to each row; with `values` the batch also carries each pair's
    `VALUE_COLUMNS` as float32 tensors (TRL's collator drops columns it does not know)."""
    import torch
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    base = DataCollatorForPreference(
        pad_token_id=tok.pad_token_id,
        max_length=args.max_length,
        truncation_mode=args.truncation_mode,
        pad_to_multiple_of=args.pad_to_multiple_of,
    )
    if not strip_eos and not values:
        return base
    strip = _strip_eos(tok.eos_token_id) if strip_eos else None

    def collate(examples: list[dict]) -> dict:
        batch = base([{**ex, **strip(ex)} for ex in examples] if strip else examples)
        if values:
            for col in VALUE_COLUMNS:
                batch[col] = torch.tensor([ex[col] for ex in examples], dtype=torch.float32)
        return batch

    return collate


def value_offset(chosen_value: Any, rejected_value: Any, value_margin: float) -> Any:
    """A pair's offset in the DPO logit: value_margin x (chosen_value - rejected_value) (ODPO's
    offset, arXiv 2402.10571, with the scorer's step values). Works on floats and tensors."""
    return value_margin * (chosen_value - rejected_value)


@functools.cache
def trainer_class() -> type:
    """`ValueMarginDPOTrainer`: TRL's `DPOTrainer` with `DPOTrainConfig.value_margin` (built on first
    use: importing it loads TRL's trainer stack)."""
    from trl import DPOTrainer

    class ValueMarginDPOTrainer(DPOTrainer):
        """TRL's `DPOTrainer`, plus a per-pair offset in the loss: with `args.value_margin` > 0 (which
        sets `precompute_ref_log_probs`) each batch's `ref_chosen_logps` grows by
        value_offset / beta, so TRL's sigmoid loss becomes -log sigmoid(beta * delta - offset) and its
        hinge loss relu(1 - beta * delta + offset). With value_margin = 0 every batch reaches TRL's
        loss unchanged. Only public methods are overridden: `compute_loss` and
        `compute_ref_log_probs` (which gets the batch without the value columns, model inputs only)."""

        def compute_ref_log_probs(self, model: Any, inputs: dict) -> Any:
            return super().compute_ref_log_probs(model, _without_values(inputs))

        def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            margin = getattr(self.args, "value_margin", 0.0)
            if margin > 0:
                if not all(c in inputs for c in (*VALUE_COLUMNS, "ref_chosen_logps")):
                    raise ConfigError(f"value_margin={margin} needs {', '.join(VALUE_COLUMNS)} and precomputed "
                                      "ref_chosen_logps in every batch (fix: build the trainer with build_trainer)")
                offset = value_offset(inputs["chosen_value"], inputs["rejected_value"], margin)
                ref = inputs["ref_chosen_logps"]
                inputs = {**inputs, "ref_chosen_logps": ref + (offset / self.beta).to(ref.device, ref.dtype)}
            return super().compute_loss(model, _without_values(inputs), return_outputs, num_items_in_batch)

    return ValueMarginDPOTrainer


def _without_values(inputs: dict) -> dict:
    return {k: v for k, v in inputs.items() if k not in VALUE_COLUMNS}


def _check_values(dataset: Any, data: str) -> None:
    """Pairs that `value_margin` can use: both value columns, every value a finite number, chosen's
    not below rejected's; anything else is a one-line `TaskError`."""
    missing = [c for c in VALUE_COLUMNS if c not in dataset.column_names]
    if missing:
        raise TaskError(f"{data}: value_margin needs pairs with {'/'.join(VALUE_COLUMNS)}, missing {missing} "
                        "(fix: pairs from `sharpen build pairs` or `step-dpo`, or value_margin: 0)")
    for i, (c, r) in enumerate(zip(dataset["chosen_value"], dataset["rejected_value"], strict=True)):
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (c, r)):
            raise TaskError(f"{data}: pair {i} has chosen_value={c!r}, rejected_value={r!r}; value_margin "
                            "needs finite values (fix: rebuild the pairs, or value_margin: 0)")
        if c < r:
            raise TaskError(f"{data}: pair {i} has chosen_value {c} < rejected_value {r}, a negative offset "
                            "(fix: rebuild the pairs so chosen is the higher-valued step, or value_margin: 0)")


def build_trainer(cfg: DPOTrainConfig, dataset: Any | None = None) -> Any:
    """The configured TRL trainer (exposed for benchmarks and tests)."""
    import torch
    from transformers import AutoModelForCausalLM

    from sharpen.train.prefix import completion_positions_only

    path = resolve_model(cfg.model)
    if dataset is None:
        dataset = load_dataset_dir(cfg.data, PAIR_COLUMNS)
    values = cfg.value_margin > 0
    if len(dataset) == 0:
        raise TaskError(
            f"{cfg.data} has no pairs (fix: more search, or a smaller --min-margin when building)"
        )
    if values:
        _check_values(dataset, cfg.data)
    dataset = dataset.select_columns(list(PAIR_COLUMNS + (VALUE_COLUMNS if values else ())))
    tok = load_tokenizer(path)
    model = prepare_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), cfg)
    args = cfg
    if not cfg.append_eos:
        dataset = dataset.map(_add_eos(tok.eos_token))
    # what DPOTrainer does itself when it builds the collator: the model agrees with the tokenizer on padding
    model.config.get_text_config().pad_token_id = tok.pad_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    with completion_positions_only(cfg.share_prefix):  # covers the reference pass of precomputing
        trainer = trainer_class()(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tok,
            data_collator=_step_collator(tok, args, strip_eos=not cfg.append_eos, values=values),
            peft_config=cfg.peft_config(),
        )
    if not cfg.append_eos:
        # the rows as trained on, then the plain collator: the reference log-probs TRL precomputes in
        # the constructor were taken through the stripping one, so they match these rows
        trainer.train_dataset = trainer.train_dataset.map(_strip_eos(tok.eos_token_id))
        trainer.data_collator = _step_collator(tok, args, strip_eos=False, values=values)
    if trainer.ref_model is not None:  # full fine-tuning: TRL's frozen copy of the policy
        prepare_model(trainer.ref_model, cfg)
    return prepare_trainer(trainer, cfg)


def train_dpo(cfg: DPOTrainConfig) -> Path:
    """Train, resuming from the newest checkpoint; returns out/merged."""
    out = Path(cfg.output_dir)
    trainer = quiet(build_trainer(cfg))
    metrics, _ = fit(trainer, out, cfg.resume)
    merged = save_outputs(trainer, out, cfg.lora)
    metrics["pairs"] = len(trainer.train_dataset)
    write_summary(out, "dpo", cfg, metrics)
    return merged
