"""Step-level DPO with TRL's `DPOTrainer` (Rafailov et al. 2023; step pairs as in MCTS-DPO,
arXiv 2405.00451, and Step-DPO, arXiv 2406.18629).

The reference model is the policy before this training: with LoRA (the default), TRL uses the
base model with the adapters disabled; with full fine-tuning, TRL loads a frozen copy of `model`.

One deviation from TRL's defaults, on purpose: TRL appends EOS to every non-conversational
completion, but a step is not the end of a solution, so a pair `(prompt, step)` must not teach the
policy to stop after the step. `append_eos=False` (default) strips it again after TRL tokenises.
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


def _trainer_class() -> Any:
    from trl import DPOTrainer

    class StepDPOTrainer(DPOTrainer):
        """DPOTrainer that, unless asked, leaves completions without a trailing EOS."""

        sharpen_append_eos: bool = False

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):  # type: ignore[override]
            if self.sharpen_append_eos:
                return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            eos, eos_id = self._tokenizer.eos_token, self._tokenizer.eos_token_id

            # end each completion with EOS so TRL's `add_eos` is a no-op, then drop that one token
            def add(ex: dict) -> dict:
                return {"chosen": ex["chosen"] + eos, "rejected": ex["rejected"] + eos}

            def strip(ex: dict) -> dict:
                c, r = ex["chosen_ids"], ex["rejected_ids"]
                return {
                    "chosen_ids": c[:-1] if c and c[-1] == eos_id and len(c) > 1 else c,
                    "rejected_ids": r[:-1] if r and r[-1] == eos_id and len(r) > 1 else r,
                }

            dataset = super()._prepare_dataset(dataset.map(add), processing_class, args, dataset_name)
            return dataset.map(strip)

    return StepDPOTrainer


def build_trainer(cfg: DPOTrainConfig, dataset: Any | None = None) -> Any:
    """The configured TRL trainer (exposed for benchmarks and tests)."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig

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
    cls = _trainer_class()
    cls.sharpen_append_eos = cfg.append_eos
    trainer = cls(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tok,
        peft_config=cfg.train.lora_options.peft_config() if cfg.train.lora else None,
    )
    if trainer.ref_model is not None:  # full fine-tuning: TRL's frozen copy of the policy
        prepare_model(trainer.ref_model, cfg.train)
    return trainer


def train_dpo(cfg: DPOTrainConfig) -> Path:
    """Train, resuming from the newest checkpoint; returns out/merged."""
    out = Path(cfg.out)
    trainer = quiet(build_trainer(cfg))
    metrics, _ = fit(trainer, out, cfg.train.resume)
    merged = save_outputs(trainer, out, cfg.train.lora)
    metrics["pairs"] = len(trainer.train_dataset)
    write_summary(out, "dpo", cfg, metrics)
    return merged
