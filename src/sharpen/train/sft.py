"""Rejection-sampling fine-tuning (RFT / STaR-style) with TRL's `SFTTrainer` on verified traces:
the loss is on the completion (the solution) only, and TRL ends each completion with EOS, since a
trace is a whole solution."""

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

TRACE_COLUMNS = ("prompt", "completion")


@dataclass
class SFTTrainConfig:
    """`sharpen train sft`: every option, documented."""

    model: str
    """Policy to train: a built-in name, a local HF dir or an HF id."""
    data: str
    """A traces dataset dir from `sharpen build traces` (columns prompt, completion)."""
    out: str
    """Output dir: checkpoints/, adapter/ (LoRA), merged/, sharpen_train.json."""
    completion_only_loss: bool = True
    """Loss on the completion tokens only (the prompt is context, not a target)."""
    train: TrainOptions = field(default_factory=TrainOptions)
    """Optimisation, LoRA and checkpointing options."""


def build_trainer(cfg: SFTTrainConfig, dataset: Any | None = None) -> Any:
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    out = Path(cfg.out)
    path = resolve_model(cfg.model)
    if dataset is None:
        dataset = load_dataset_dir(cfg.data, TRACE_COLUMNS)
    dataset = dataset.select_columns(list(TRACE_COLUMNS))
    if len(dataset) == 0:
        raise TaskError(f"{cfg.data} has no traces (fix: more search, or a task the policy sometimes solves)")
    tok = load_tokenizer(path)
    model = prepare_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), cfg.train)
    args = SFTConfig(
        **trainer_kwargs(cfg.train, out),
        max_length=cfg.train.max_length,
        completion_only_loss=cfg.completion_only_loss,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tok,
        peft_config=cfg.train.lora_options.peft_config() if cfg.train.lora else None,
    )
    return prepare_trainer(trainer, cfg.train)


def train_sft(cfg: SFTTrainConfig) -> Path:
    """Train, resuming from the newest checkpoint; returns out/merged."""
    out = Path(cfg.out)
    trainer = quiet(build_trainer(cfg))
    metrics, _ = fit(trainer, out, cfg.train.resume)
    merged = save_outputs(trainer, out, cfg.train.lora)
    metrics["traces"] = len(trainer.train_dataset)
    write_summary(out, "sft", cfg, metrics)
    return merged
