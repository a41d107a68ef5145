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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trl import DPOConfig

from sharpen.backends.models import load_tokenizer, resolve_model
from sharpen.core.errors import TaskError
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


@dataclass
class DPOTrainConfig(SharpenArgs, DPOConfig):
    """`sharpen train dpo`: TRL's `DPOConfig` (every `TrainingArguments` and DPO option: `beta`,
    `loss_type`, `precompute_ref_log_probs`, ...) with sharpen's fields (`SharpenArgs`) and these."""

    sft_weight: float = 0.0
    """Weight of an NLL term on the chosen step added to the DPO loss (RPO, Pang et al. 2024,
    arXiv 2404.19733: TRL's loss_type ["sigmoid", "sft"]); 0 = plain DPO."""
    append_eos: bool = False
    """Append EOS to chosen/rejected (TRL's default). Off: a step does not end the solution."""
    remove_unused_columns: bool = False

    def __post_init__(self) -> None:
        if self.sft_weight > 0 and "sft" not in self.loss_type:
            self.loss_type = [*self.loss_type, "sft"]
            self.loss_weights = [1.0] * (len(self.loss_type) - 1) + [self.sft_weight]
        super().__post_init__()


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


def _step_collator(tok: Any, args: Any, strip_eos: bool) -> Any:
    """TRL's preference collator, as DPOTrainer builds it when given none; with `strip_eos` it first
    applies `_strip_eos` to each row."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    base = DataCollatorForPreference(
        pad_token_id=tok.pad_token_id,
        max_length=args.max_length,
        truncation_mode=args.truncation_mode,
        pad_to_multiple_of=args.pad_to_multiple_of,
    )
    if not strip_eos:
        return base
    strip = _strip_eos(tok.eos_token_id)

    def collate(examples: list[dict]) -> dict:
        return base([{**ex, **strip(ex)} for ex in examples])

    return collate


def build_trainer(cfg: DPOTrainConfig, dataset: Any | None = None) -> Any:
    """The configured TRL trainer (exposed for benchmarks and tests)."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import DPOTrainer

    from sharpen.train.prefix import completion_positions_only

    path = resolve_model(cfg.model)
    if dataset is None:
        dataset = load_dataset_dir(cfg.data, PAIR_COLUMNS)
    dataset = dataset.select_columns(list(PAIR_COLUMNS))
    if len(dataset) == 0:
        raise TaskError(
            f"{cfg.data} has no pairs (fix: more search, or a smaller --min-margin when building)"
        )
    tok = load_tokenizer(path)
    model = prepare_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), cfg)
    args = cfg
    if not cfg.append_eos:
        dataset = dataset.map(_add_eos(tok.eos_token))
    # what DPOTrainer does itself when it builds the collator: the model agrees with the tokenizer on padding
    model.config.get_text_config().pad_token_id = tok.pad_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    with completion_positions_only(cfg.share_prefix):  # covers the reference pass of precomputing
        trainer = DPOTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tok,
            data_collator=_step_collator(tok, args, strip_eos=not cfg.append_eos),
            peft_config=cfg.peft_config(),
        )
    if not cfg.append_eos:
        # the rows as trained on, then the plain collator: the reference log-probs TRL precomputes in
        # the constructor were taken through the stripping one, so they match these rows
        trainer.train_dataset = trainer.train_dataset.map(_strip_eos(tok.eos_token_id))
        trainer.data_collator = _step_collator(tok, args, strip_eos=False)
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
