"""What every trainer shares: the output layout, device-dependent arguments, resuming, atomic saves.

Output layout of every `sharpen train ...` run (`out/`):

    out/checkpoint-N/               Trainer checkpoints (resume picks the newest)
    out/adapter/                    the LoRA adapter + tokenizer (LoRA runs only)
    out/merged/                     a plain HF model dir (model + tokenizer) that `--model` accepts
    out/sharpen_train.json          the resolved config and the training metrics
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sharpen.core.io import atomic_write_json


@dataclass
class SharpenArgs:
    """What sharpen adds to a TRL or transformers training config, and the defaults it changes.

    Every trainer config is a subclass of TRL's (`DPOConfig`, `SFTConfig`) or transformers'
    `TrainingArguments` with these fields mixed in, as TRL's own configs extend `TrainingArguments`:
    one description of every optimisation option (`learning_rate`, `max_steps`,
    `per_device_train_batch_size`, ...), TRL's, documented there. `output_dir` is the run's output
    dir: `checkpoint-N/` (the Trainer's), `adapter/`, `merged/` and `sharpen_train.json`.
    """

    model: str = ""
    """Model to train: a built-in name (`smollm2-135m`), a local HF dir or an HF id."""
    data: str = ""
    """A dataset dir from `sharpen build` (pairs, traces or labels)."""
    lora: bool = True
    """Train a LoRA adapter (peft); False = full fine-tuning."""
    lora_r: int = 16
    """LoRA rank of the update matrices."""
    lora_alpha: int = 32
    """LoRA scaling numerator: the update is scaled by lora_alpha / lora_r."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA input."""
    lora_target_modules: str = "all-linear"
    """Which linear layers get adapters ("all-linear": every linear layer but the output head)."""
    resume: bool = True
    """Resume from the newest checkpoint in `output_dir` when one exists."""
    share_prefix: bool = True
    """Run the prefix every row of a batch shares (system prompt, few-shot examples) once per
    forward instead of once per row, and project only completion positions through the LM head
    (`sharpen.train.prefix`). Exact, same values; off = TRL's own forward."""
    # defaults sharpen changes (the fields are TrainingArguments')
    max_steps: int = 100
    learning_rate: float = 5e-5
    seed: int = 0
    logging_steps: float = 5
    save_steps: float = 50
    save_total_limit: int | None = 2
    disable_tqdm: bool | None = True
    dataloader_num_workers: int = 0
    report_to: None | str | list[str] = "none"
    gradient_checkpointing: bool | None = None
    """Off (TRL's configs turn it on): recomputing activations saves memory and costs ~30% speed."""
    bf16: bool | None = None
    """None = bf16 on a GPU that supports it, fp32 elsewhere (CPU: no mixed precision)."""
    use_cpu: bool | None = None
    """None = on the CPU when there is no CUDA device."""

    def __post_init__(self) -> None:
        if self.bf16 is None:
            self.bf16 = has_bf16()
        if self.use_cpu is None:
            self.use_cpu = not has_cuda()
        if not self.model or not self.output_dir:
            raise TypeError(f"{type(self).__name__} needs model= and output_dir=")
        parent = super()
        if hasattr(parent, "__post_init__"):
            parent.__post_init__()

    def peft_config(self, task_type: str = "CAUSAL_LM") -> Any:
        """The LoRA adapter config (peft), or None for full fine-tuning."""
        if not self.lora:
            return None
        from peft import LoraConfig

        return LoraConfig(r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                          target_modules=self.lora_target_modules, task_type=task_type)


def trainer_fields(config_cls: type) -> dict[str, Any]:
    """Every option of a trainer config class, name -> default (what a run config's `train`
    section may set)."""
    import dataclasses

    return {f.name: (f.default if f.default is not dataclasses.MISSING else
                     f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            for f in dataclasses.fields(config_cls) if f.init}


def prepare_model(model: Any, cfg: SharpenArgs) -> Any:
    """Apply the speed options that leave the maths unchanged (`share_prefix`) to a freshly loaded
    causal LM, before a TRL trainer wraps it (so its reference pass uses them too)."""
    if cfg.share_prefix:
        from sharpen.train.prefix import backbone_of, share_prefix

        share_prefix(backbone_of(model))
    return model


def prepare_trainer(trainer: Any, cfg: SharpenArgs) -> Any:
    """The trainer's half of `share_prefix`: TRL's fused LM head projects only completion
    positions, in this trainer's loss and reference passes only
    (`sharpen.train.prefix.score_completion_positions_only`)."""
    if cfg.share_prefix:
        from sharpen.train.prefix import score_completion_positions_only

        score_completion_positions_only(trainer)
    return trainer


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def has_bf16() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def last_checkpoint(out: Path) -> str | None:
    """The newest complete out/checkpoint-N, or None.

    The Trainer writes trainer_state.json last, so a checkpoint without a readable one was cut off
    mid-save (a kill); it is removed and the one before it is used."""
    import json
    import shutil

    ckpts = Path(out)
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


def main_process() -> bool:
    """False in every process but the first of a distributed launch (`torchrun`, `accelerate launch`
    set RANK): only the first writes adapter/, merged/ and sharpen_train.json."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def write_summary(
    out: Path, kind: str, config: Any, metrics: dict[str, Any], extra: dict | None = None
) -> None:
    if not main_process():
        return
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    atomic_write_json(
        out / "sharpen_train.json", {"kind": kind, "config": cfg, "metrics": metrics, **(extra or {})}
    )


def quiet(trainer: Any) -> Any:
    """No per-step log dicts on stdout (they stay in checkpoints' trainer_state.json)."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def fit(trainer: Any, out: Path, resume: bool, stopped: bool = False) -> tuple[dict[str, Any], str | None]:
    """Train (from the newest checkpoint in out/checkpoints when `resume`); returns the trainer's
    metrics with wall seconds, and the checkpoint it resumed from. `stopped`: the run ended at that
    checkpoint (its token budget), which is restored as one at `max_steps` is."""
    import time

    start = last_checkpoint(out) if resume else None
    t0 = time.perf_counter()
    if start is not None and (stopped or 0 < trainer.args.max_steps <= _checkpoint_step(start)):
        restore(trainer, start)
        return {"wall_seconds": time.perf_counter() - t0, "resumed_from": start}, start
    result = trainer.train(resume_from_checkpoint=start)
    metrics = dict(result.metrics)
    metrics.update(wall_seconds=time.perf_counter() - t0, resumed_from=start)
    return metrics, start


def _checkpoint_step(checkpoint: str) -> int:
    import json

    return int(json.loads((Path(checkpoint) / "trainer_state.json").read_text()).get("global_step", 0))


def restore(trainer: Any, checkpoint: str) -> None:
    """A checkpoint at (or past) `max_steps`: its weights and trainer state, without training a step,
    as a `train()` that has nothing left to do. transformers' resume, when the checkpoint lies inside an
    epoch, trains one more step before it checks `max_steps` (and a GRPO step generates), so a resumed
    stage would differ from the uninterrupted one. The callbacks see the train's begin and end, as in a
    `train()` (sharpen's token budget restores its counts from the state at its begin)."""
    from transformers import TrainerState

    trainer._load_from_checkpoint(checkpoint)
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    trainer.control = trainer.callback_handler.on_train_begin(trainer.args, trainer.state, trainer.control)
    trainer.control = trainer.callback_handler.on_train_end(trainer.args, trainer.state, trainer.control)


def save_outputs(trainer: Any, out: Path, lora: bool, extra: Callable[[Path], None] | None = None) -> Path:
    """adapter/ (LoRA), then merged/: a plain model dir `--model` accepts; `extra(dir)` adds files."""
    from sharpen.core.io import atomic_dir

    merged = out / "merged"
    if main_process():  # the trainer has synchronised the weights; the first process writes them
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

        merged = atomic_dir(merged, write)
    trainer.accelerator.wait_for_everyone()  # every process returns a merged/ that exists (one process: no wait)
    return merged
