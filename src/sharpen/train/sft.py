"""Rejection-sampling fine-tuning (RFT / STaR-style) with TRL's `SFTTrainer` on verified traces:
the loss is on the completion (the solution) only, and TRL ends each completion with EOS, since a
trace is a whole solution."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trl import SFTConfig

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

TRACE_COLUMNS = ("prompt", "completion")


@dataclass
class SFTTrainConfig(SharpenArgs, SFTConfig):
    """`sharpen train sft`: TRL's `SFTConfig` (every `TrainingArguments` and SFT option, e.g.
    `completion_only_loss`, `max_length`) with sharpen's fields (`SharpenArgs`)."""

    completion_only_loss: bool | None = True


def build_trainer(cfg: SFTTrainConfig, dataset: Any | None = None) -> Any:
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    path = resolve_model(cfg.model)
    if dataset is None:
        dataset = load_dataset_dir(cfg.data, TRACE_COLUMNS)
    dataset = dataset.select_columns(list(TRACE_COLUMNS))
    if len(dataset) == 0:
        raise TaskError(f"{cfg.data} has no traces (fix: more search, or a task the policy sometimes solves)")
    tok = load_tokenizer(path)
    model = prepare_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), cfg)
    trainer = SFTTrainer(
        model=model,
        args=cfg,
        train_dataset=dataset,
        processing_class=tok,
        peft_config=cfg.peft_config(),
    )
    return prepare_trainer(trainer, cfg)


def train_sft(cfg: SFTTrainConfig) -> Path:
    """Train, resuming from the newest checkpoint; returns out/merged."""
    out = Path(cfg.output_dir)
    trainer = quiet(build_trainer(cfg))
    metrics, _ = fit(trainer, out, cfg.resume)
    merged = save_outputs(trainer, out, cfg.lora)
    metrics["traces"] = len(trainer.train_dataset)
    write_summary(out, "sft", cfg, metrics)
    return merged
