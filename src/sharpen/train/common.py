"""What every trainer shares: the output layout, device-dependent arguments, resuming, atomic saves.

Output layout of every `sharpen train ...` run (`out/`):

    out/checkpoints/checkpoint-N/   Trainer checkpoints (resume picks the newest)
    out/adapter/                    the LoRA adapter + tokenizer (LoRA runs only)
    out/merged/                     a plain HF model dir (model + tokenizer) that `--model` accepts
    out/sharpen_train.json          the resolved config and the training metrics
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sharpen.io import atomic_write_json


@dataclass
class LoraOptions:
    """LoRA settings (peft)."""

    r: int = 16
    """Rank of the update matrices."""
    alpha: int = 32
    """Scaling numerator: the update is scaled by alpha / r."""
    dropout: float = 0.05
    """Dropout on the LoRA input."""
    target_modules: str | list[str] = "all-linear"
    """Which linear layers get adapters ("all-linear": every linear layer but the output head)."""

    def peft_config(self, task_type: str = "CAUSAL_LM") -> Any:
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            task_type=task_type,
        )


@dataclass
class TrainOptions:
    """Optimisation and bookkeeping options shared by every trainer."""

    max_steps: int = 200
    """Optimizer steps; <= 0 trains for `epochs` instead."""
    epochs: float = 1.0
    """Epochs over the data, used only when `max_steps` <= 0."""
    batch_size: int = 4
    """Rows per device per forward pass."""
    grad_accum: int = 1
    """Gradient accumulation steps (effective batch = batch_size * grad_accum)."""
    learning_rate: float = 5e-5
    """Peak learning rate (LoRA wants ~10x the full fine-tuning rate)."""
    warmup_steps: float = 0.0
    """Learning-rate warm-up: a number of steps, or a float < 1 for a share of the steps."""
    max_length: int | None = 1024
    """Longest tokenised sequence (prompt + completion); longer rows are truncated."""
    logging_steps: int = 5
    """Log the loss every this many steps."""
    save_steps: int = 50
    """Write a checkpoint every this many steps (resume starts from the newest)."""
    save_total_limit: int = 2
    """Checkpoints kept on disk."""
    seed: int = 0
    """Seed for data order and initialisation."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, ~30% slower."""
    lora: bool = True
    """Train a LoRA adapter (peft); False = full fine-tuning."""
    lora_options: LoraOptions = field(default_factory=LoraOptions)
    """LoRA settings, used when `lora`."""
    resume: bool = True
    """Resume from the newest checkpoint in out/checkpoints when one exists."""
    share_prefix: bool = True
    """Run the prefix every row of a batch shares (system prompt, few-shot examples) once per
    forward instead of once per row, and project only completion positions through the LM head
    (`sharpen.train.prefix`). Exact, same values; off = TRL's own forward."""


def prepare_model(model: Any, opts: TrainOptions) -> Any:
    """Apply the speed options that leave the maths unchanged (`share_prefix`) to a freshly loaded
    causal LM, before a TRL trainer wraps it (so its reference pass uses them too)."""
    if opts.share_prefix:
        from sharpen.train.prefix import backbone_of, share_prefix

        share_prefix(backbone_of(model))
    return model


def prepare_trainer(trainer: Any, opts: TrainOptions) -> Any:
    """The trainer's half of `share_prefix`: TRL's fused LM head projects only completion
    positions, in this trainer's loss and reference passes only
    (`sharpen.train.prefix.score_completion_positions_only`)."""
    if opts.share_prefix:
        from sharpen.train.prefix import score_completion_positions_only

        score_completion_positions_only(trainer)
    return trainer


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def trainer_kwargs(opts: TrainOptions, out: Path) -> dict[str, Any]:
    """`TrainingArguments` fields common to TRL configs and transformers' Trainer. On CPU: fp32, no
    mixed precision, `use_cpu`; on a GPU with bf16 support: bf16."""
    import torch

    cuda = has_cuda()
    return {
        "output_dir": str(out / "checkpoints"),
        "max_steps": opts.max_steps if opts.max_steps > 0 else -1,
        "num_train_epochs": opts.epochs,
        "per_device_train_batch_size": opts.batch_size,
        "per_device_eval_batch_size": opts.batch_size,
        "gradient_accumulation_steps": opts.grad_accum,
        "learning_rate": opts.learning_rate,
        "warmup_steps": opts.warmup_steps,
        "logging_steps": opts.logging_steps,
        "save_strategy": "steps",
        "save_steps": opts.save_steps,
        "save_total_limit": opts.save_total_limit,
        "seed": opts.seed,
        "report_to": "none",
        "use_cpu": not cuda,
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
        "fp16": False,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "gradient_checkpointing": opts.gradient_checkpointing,
    }


def last_checkpoint(out: Path) -> str | None:
    """The newest complete out/checkpoints/checkpoint-N, or None.

    The Trainer writes trainer_state.json last, so a checkpoint without a readable one was cut off
    mid-save (a kill); it is removed and the one before it is used."""
    import json
    import shutil

    ckpts = out / "checkpoints"
    if not ckpts.is_dir():
        return None
    found = []
    for d in ckpts.iterdir():
        m = re.fullmatch(r"checkpoint-(\d+)", d.name)
        if m and d.is_dir():
            found.append((int(m.group(1)), d))
    for _, d in sorted(found, reverse=True):
        try:
            json.loads((d / "trainer_state.json").read_text())
            return str(d)
        except (OSError, ValueError):
            shutil.rmtree(d, ignore_errors=True)
    return None


def write_summary(
    out: Path, kind: str, config: Any, metrics: dict[str, Any], extra: dict | None = None
) -> None:
    cfg = asdict(config) if hasattr(config, "__dataclass_fields__") else dict(config)
    atomic_write_json(
        out / "sharpen_train.json", {"kind": kind, "config": cfg, "metrics": metrics, **(extra or {})}
    )


def load_tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def quiet(trainer: Any) -> Any:
    """No per-step log dicts on stdout (they stay in checkpoints' trainer_state.json)."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def fit(trainer: Any, out: Path, resume: bool) -> tuple[dict[str, Any], str | None]:
    """Train (from the newest checkpoint in out/checkpoints when `resume`); returns the trainer's
    metrics with wall seconds, and the checkpoint it resumed from."""
    import time

    start = last_checkpoint(out) if resume else None
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=start)
    metrics = dict(result.metrics)
    metrics.update(wall_seconds=time.perf_counter() - t0, resumed_from=start)
    return metrics, start


def save_outputs(trainer: Any, out: Path, lora: bool, extra: Callable[[Path], None] | None = None) -> Path:
    """adapter/ (LoRA), then merged/: a plain model dir `--model` accepts; `extra(dir)` adds files."""
    from sharpen.io import atomic_dir

    tok, model = trainer.processing_class, trainer.model
    if lora:
        atomic_dir(out / "adapter", lambda d: (model.save_pretrained(d), tok.save_pretrained(d)))
        model = model.merge_and_unload()
    model = model.to("cpu")

    def write(d: Path) -> None:
        model.save_pretrained(d)
        tok.save_pretrained(d)
        if extra is not None:
            extra(d)

    return atomic_dir(out / "merged", write)
