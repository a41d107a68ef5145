"""Trainers: thin translations of our configs into TRL / transformers `Trainer` (see common.py for
the output layout).

Each trainer's config is one dataclass, a subclass of TRL's or transformers' own
(`dpo.DPOTrainConfig(DPOConfig)`, `sft.SFTTrainConfig(SFTConfig)`, `grpo.GRPOTrainConfig(GRPOConfig)`,
`prm.PRMTrainConfig(TrainingArguments)`, each with `common.SharpenArgs` mixed in): the CLI's `--arg`, a run config's `train` section and the
Python API all set its fields by their TRL names, and `make_config` checks them once.
"""

from __future__ import annotations

import difflib
from typing import Any

from sharpen.core.errors import ConfigError

TRAINERS = ("dpo", "sft", "grpo", "prm")
# names people type for a TRL field (hints only: one name per option)
HINTS = {"batch_size": "per_device_train_batch_size", "lr": "learning_rate", "epochs": "num_train_epochs",
         "precompute_ref": "precompute_ref_log_probs", "warmup": "warmup_steps", "full": "lora: false"}


def config_class(kind: str) -> type:
    if kind not in TRAINERS:
        raise ConfigError(f"unknown trainer {kind!r} (fix: one of {', '.join(TRAINERS)})")
    if kind == "dpo":
        from sharpen.train.dpo import DPOTrainConfig

        return DPOTrainConfig
    if kind == "sft":
        from sharpen.train.sft import SFTTrainConfig

        return SFTTrainConfig
    if kind == "grpo":
        from sharpen.train.grpo import GRPOTrainConfig

        return GRPOTrainConfig
    from sharpen.train.prm import PRMTrainConfig

    return PRMTrainConfig


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
