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
purpose (`sharpen.data.step_completion`: a rejected step after which the model stopped) keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sharpen.data import load_dataset_dir
from sharpen.errors import TaskError
from sharpen.models import resolve_model
from sharpen.train.common import (
    TrainOptions,
    fit,
    load_tokenizer,
    prepare_model,
    prepare_trainer,
    quiet,
    save_outputs,
    trainer_kwargs,
    write_summary,
)

PAIR_COLUMNS = ("prompt", "chosen", "rejected")


@dataclass
class DPOTrainConfig:
    """`sharpen train dpo`: every option, documented."""

    model: str
    """Policy to train: a built-in name (`smollm2-135m`), a local HF dir or an HF id."""
    data: str
    """A pairs dataset dir from `sharpen build pairs` (columns prompt, chosen, rejected)."""
    out: str
    """Output dir: checkpoints/, adapter/ (LoRA), merged/, sharpen_train.json."""
    beta: float = 0.1
    """DPO's beta: strength of the KL pull towards the reference model."""
    loss_type: str = "sigmoid"
    """TRL loss type ("sigmoid" = the DPO paper's loss; "ipo", "hinge", ...)."""
    sft_weight: float = 0.0
    """Weight of an NLL term on the chosen step added to the DPO loss (RPO, Pang et al. 2024,
    arXiv 2404.19733: TRL's loss_type ["sigmoid", "sft"]); 0 = plain DPO."""
    append_eos: bool = False
    """Append EOS to chosen/rejected (TRL's default). Off: a step does not end the solution."""
    precompute_ref_log_probs: bool = False
    """Compute reference log-probs once before training (saves a forward per step on full fine-tuning)."""
    train: TrainOptions = field(default_factory=TrainOptions)
    """Optimisation, LoRA and checkpointing options."""


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
    from trl import DPOConfig, DPOTrainer

    from sharpen.train.prefix import completion_positions_only

    out = Path(cfg.out)
    path = resolve_model(cfg.model)
    if dataset is None:
        dataset = load_dataset_dir(cfg.data, PAIR_COLUMNS)
    dataset = dataset.select_columns(list(PAIR_COLUMNS))
    if len(dataset) == 0:
        raise TaskError(
            f"{cfg.data} has no pairs (fix: more search, or a smaller --min-margin when building)"
        )
    tok = load_tokenizer(path)
    model = prepare_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), cfg.train)
    args = DPOConfig(
        **trainer_kwargs(cfg.train, out),
        beta=cfg.beta,
        loss_type=[cfg.loss_type, "sft"] if cfg.sft_weight > 0 else [cfg.loss_type],
        loss_weights=[1.0, cfg.sft_weight] if cfg.sft_weight > 0 else None,
        max_length=cfg.train.max_length,
        precompute_ref_log_probs=cfg.precompute_ref_log_probs,
        remove_unused_columns=False,
    )
    if not cfg.append_eos:
        dataset = dataset.map(_add_eos(tok.eos_token))
    # what DPOTrainer does itself when it builds the collator: the model agrees with the tokenizer on padding
    model.config.get_text_config().pad_token_id = tok.pad_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    with completion_positions_only(cfg.train.share_prefix):  # covers the reference pass of precomputing
        trainer = DPOTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tok,
            data_collator=_step_collator(tok, args, strip_eos=not cfg.append_eos),
            peft_config=cfg.train.lora_options.peft_config() if cfg.train.lora else None,
        )
    if not cfg.append_eos:
        # the rows as trained on, then the plain collator: the reference log-probs TRL precomputes in
        # the constructor were taken through the stripping one, so they match these rows
        trainer.train_dataset = trainer.train_dataset.map(_strip_eos(tok.eos_token_id))
        trainer.data_collator = _step_collator(tok, args, strip_eos=False)
    if trainer.ref_model is not None:  # full fine-tuning: TRL's frozen copy of the policy
        prepare_model(trainer.ref_model, cfg.train)
    return prepare_trainer(trainer, cfg.train)


def train_dpo(cfg: DPOTrainConfig) -> Path:
    """Train, resuming from the newest checkpoint; returns out/merged."""
    out = Path(cfg.out)
    trainer = quiet(build_trainer(cfg))
    metrics, _ = fit(trainer, out, cfg.train.resume)
    merged = save_outputs(trainer, out, cfg.train.lora)
    metrics["pairs"] = len(trainer.train_dataset)
    write_summary(out, "dpo", cfg, metrics)
    return merged
