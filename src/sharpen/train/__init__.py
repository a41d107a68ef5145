"""Trainers: thin translations of our configs into TRL / transformers `Trainer` (see common.py for
the output layout).

`TRAINERS` is the one table of trainers (name -> config class, train function) that the API, the
CLI and the loop's recipes read. Each trainer's config is one dataclass, a subclass of TRL's or
transformers' own (`dpo.DPOTrainConfig(DPOConfig)`, `sft.SFTTrainConfig(SFTConfig)`,
`grpo.GRPOTrainConfig(GRPOConfig)`, `prm.PRMTrainConfig(TrainingArguments)`, each with
`common.SharpenArgs` mixed in): the CLI's `--arg`, a run config's `train` section and the Python
API all set its fields by their TRL names, and `make_config` checks them once.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

from sharpen.core.errors import ConfigError


@dataclass(frozen=True)
class Trainer:
    """One trainer: its config class and its train function, both in `sharpen.train.<module>`,
    which is imported on first use (it imports torch, transformers and TRL)."""

    name: str
    module: str
    config_name: str
    train_name: str
    needs_data: bool = True
    """False: trains without a built dataset (GRPO samples its own completions of a task's problems)."""

    @property
    def config(self) -> type:
        return getattr(import_module(f"sharpen.train.{self.module}"), self.config_name)

    def train(self, cfg: Any) -> Path:
        """Train with `cfg` (an instance of `config`); returns the merged model dir."""
        return getattr(import_module(f"sharpen.train.{self.module}"), self.train_name)(cfg)


TRAINERS: dict[str, Trainer] = {t.name: t for t in (
    Trainer("dpo", "dpo", "DPOTrainConfig", "train_dpo"),
    Trainer("sft", "sft", "SFTTrainConfig", "train_sft"),
    Trainer("grpo", "grpo", "GRPOTrainConfig", "train_grpo", needs_data=False),
    Trainer("prm", "prm", "PRMTrainConfig", "train_prm"),
)}
# names people type for a TRL field (hints only: one name per option)
HINTS = {"batch_size": "per_device_train_batch_size", "lr": "learning_rate", "epochs": "num_train_epochs",
         "precompute_ref": "precompute_ref_log_probs", "warmup": "warmup_steps", "full": "lora: false"}


def get_trainer(kind: str) -> Trainer:
    """The table's entry for `kind`; an unknown trainer is a one-line `ConfigError`."""
    if kind not in TRAINERS:
        raise ConfigError(f"unknown trainer {kind!r} (fix: one of {', '.join(TRAINERS)})")
    return TRAINERS[kind]


def config_class(kind: str) -> type:
    return get_trainer(kind).config


def options_for(kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """The entries of `options` that are fields of trainer `kind`'s config (e.g. a DPO round's
    options passed on to the PRM a recipe trains beside it)."""
    from sharpen.train.common import trainer_fields

    fields = trainer_fields(config_class(kind))
    return {k: v for k, v in options.items() if k in fields}


def _type_ok(value: Any, default: Any) -> bool:
    """A light check of a value against its field's default (the dataclasses carry no runtime types)."""
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, (str, list))
    return True


def check_options(kind: str, options: dict[str, Any], where: str = "train") -> None:
    """Unknown or mistyped trainer options are a one-line `ConfigError` naming the nearest field."""
    from sharpen.train.common import trainer_fields

    fields = trainer_fields(config_class(kind))
    for key, value in options.items():
        if key not in fields:
            near = [HINTS[key]] if key in HINTS else difflib.get_close_matches(key, list(fields), n=1)
            hint = f"did you mean {near[0]}?" if near else f"a field of {config_class(kind).__name__} (TRL's names)"
            raise ConfigError(f"{where}: unknown {kind} trainer option {key!r} (fix: {hint})")
        if not _type_ok(value, fields[key]):
            raise ConfigError(f"{where}: {key}={value!r} should be like {fields[key]!r} (fix: a value of that type)")


def make_config(kind: str, where: str = "train", **options: Any) -> Any:
    """The trainer config of `kind` with `options` (TRL's field names), checked: a typo or a value
    TRL refuses is a one-line `ConfigError`."""
    check_options(kind, options, where)
    try:
        return config_class(kind)(**options)
    except (TypeError, ValueError) as e:
        msg = " ".join(str(e).split())
        raise ConfigError(f"{where}: {msg} (fix: check the {kind} trainer options)") from None
