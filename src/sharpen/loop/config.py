"""The loop's configuration: YAML validated by pydantic. Every default is written into the run dir.

Recipes: `mcts-dpo` (MCTS trees -> step pairs -> DPO, arXiv 2405.00451), `step-dpo` (first wrong
step vs a correct continuation -> DPO, arXiv 2406.18629), `rft` (best-of-N -> verified traces ->
SFT, rejection-sampling fine-tuning), `prm-guided` (train a PRM each round and search with it as
the scorer in the next, as in ReST-MCTS* arXiv 2406.03816 / rStar-Math arXiv 2501.04519).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sharpen.errors import ConfigError

Recipe = Literal["mcts-dpo", "step-dpo", "rft", "prm-guided"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CollectConfig(_Strict):
    algo: Literal["bon", "vote", "weighted", "beam", "mcts", "pf"] = Field("mcts", description="search algorithm on training problems")
    scorer: str = Field("oracle", description="scorer spec: oracle | rollout | self | prm:<path>")
    problems: int = Field(64, ge=1, description="training problems searched per round")
    pool: int | None = Field(
        None, ge=1,
        description="draw each run's training problems at random from the first `pool` distinct training "
        "problems (default: the first problems x rounds, in stream order). Set it as deep as the held-out "
        "set reaches (about 4 x eval.n) so the few, often-repeated short problems do not dominate training "
        "while the held-out set, distinct by construction, holds mostly long ones",
    )
    budget: int = Field(512, ge=1, description="generated-token budget per problem")
    temperature: float = Field(0.8, ge=0.0)
    step_tokens: int = Field(32, ge=1, description="max tokens of one step")
    rollout_tokens: int = Field(64, ge=1, description="max tokens of one completion")
    max_depth: int = Field(6, ge=1)
    parallel: int = Field(16, ge=1, description="problems searched at once (lockstep batching)")
    batch: int = Field(32, ge=1, description="rows per forward pass of the collecting backend (its max_batch): "
                       "speed, but it also regroups the sampled rows, so the draw changes with it")
    args: dict[str, Any] = Field(default_factory=dict, description="algorithm options (e.g. k, c_puct, rollouts)")
    strict_format: bool = Field(
        True,
        description="a collected solution counts as correct only with an `Answer:` line, as the prompt asks "
        "(held-out evaluation keeps its lenient extraction). Without it, steps like 'The answer is 8.' earn "
        "credit through the fallback extraction, win step pairs, and training drifts away from the format",
    )


class BuildConfig(_Strict):
    min_margin: float = Field(0.2, ge=0.0, description="min value gap between chosen and rejected step")
    pairing: Literal["best_worst", "all"] = Field("best_worst", description="mcts-dpo: best vs worst sibling, or every sibling pair over the margin")
    label_threshold: float = Field(0.5, ge=0.0, le=1.0, description="PRM label = value >= threshold")


class TrainConfig(_Strict):
    max_steps: int = Field(20, ge=1)
    max_epochs: float | None = Field(None, gt=0, description="cap on passes over the round's data: steps = min(max_steps, ceil(max_epochs x rows / batch_size))")
    learning_rate: float = Field(5e-5, gt=0)
    batch_size: int = Field(8, ge=1)
    beta: float = Field(0.1, gt=0, description="DPO beta")
    lora: bool = Field(True, description="LoRA adapters (peft) instead of full fine-tuning")
    lora_r: int = Field(16, ge=1)
    sft_weight: float = Field(0.0, ge=0, description="DPO: weight of an NLL term on the chosen step (RPO); 0 = plain DPO")
    precompute_ref: bool | Literal["auto"] = Field("auto", description="DPO: reference log-probs computed once before training; auto = when each pair is seen twice or more")
    replay: bool = Field(False, description="train on this round's data plus every earlier round's (exact duplicates "
                         "dropped): a round whose search finds little still trains on enough rows, and what earlier "
                         "rounds taught is not unlearned")
    init: Literal["previous", "base"] = Field(
        "previous",
        description="the model each round's training starts from: `previous` = the last round's policy (its "
        "reference too, for DPO); `base` = the run's starting model, retrained each round on every round's data "
        "so far (needs replay), as ReST-EM does (arXiv 2312.06585): data still comes from the newest policy, but "
        "no round compounds the last one's over-optimisation",
    )


class EvalSection(_Strict):
    n: int = Field(200, ge=1, description="held-out problems")
    samples: int = Field(4, ge=0, description="sampled solutions per problem (pass@k, majority@k)")
    temperature: float = Field(0.7, ge=0.0)
    max_tokens: int = Field(64, ge=1)
    batch: int = Field(64, ge=1, description="problems per generate call and rows per forward pass: speed only, the "
                       "greedy rows do not depend on it (benchmarks/eval_batch.py)")


class LoopConfig(_Strict):
    name: str = "run"
    recipe: Recipe = "mcts-dpo"
    model: str = "smollm2-135m"
    task: str = "gym:chain_sum"
    task_args: dict[str, Any] = Field(default_factory=lambda: {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1})
    rounds: int = Field(2, ge=1)
    seed: int = 0
    collect: CollectConfig = Field(default_factory=CollectConfig)
    build: BuildConfig = Field(default_factory=BuildConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalSection = Field(default_factory=EvalSection)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> LoopConfig:
    """Read YAML, apply dotted overrides (`{"train.max_steps": 5}`), validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (fix: pass a YAML file, e.g. configs/demo.yaml)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]}) (fix: check the indentation)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level (fix: key: value lines)")
    for key, value in (overrides or {}).items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return validate(data, str(path))


def validate(data: dict[str, Any], where: str = "config") -> LoopConfig:
    try:
        cfg = LoopConfig.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise ConfigError(f"{where}: {loc}: {first['msg']} (fix: see configs/ for valid examples)") from None
    if cfg.train.init == "base" and not cfg.train.replay and cfg.rounds > 1:
        raise ConfigError(f"{where}: train.init=base without train.replay trains each round on its own data only "
                          "and throws earlier rounds away (fix: train.replay: true, or train.init: previous)")
    need = cfg.collect.problems * cfg.rounds
    if cfg.collect.pool is not None and cfg.collect.pool < need:
        raise ConfigError(
            f"{where}: collect.pool={cfg.collect.pool} is smaller than collect.problems x rounds = {need} "
            f"(fix: collect.pool >= {need}, or leave it out)"
        )
    return cfg


def dump(cfg: LoopConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
