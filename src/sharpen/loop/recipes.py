"""Recipes: what a round collects with, builds and trains. One small class per recipe, registered
by name, so the loop reads collect -> build -> train -> evaluate and a new recipe is one class.

- `mcts-dpo`: MCTS trees -> sibling step pairs -> DPO (Xie et al. 2024, arXiv 2405.00451).
- `step-dpo`: the first wrong step against a correct continuation -> DPO (Lai et al. 2024, arXiv 2406.18629).
- `rft`: verified full solutions -> SFT (rejection-sampling fine-tuning).
- `prm-guided`: train a PRM on each round's step labels and search the next round with it as the
  scorer (ReST-MCTS*, arXiv 2406.03816; rStar-Math, arXiv 2501.04519); the policy trains by SFT.
- `grpo`: online RL, no search: TRL's GRPOTrainer samples and verifies its own completions of the
  round's training problems (DeepSeekMath, arXiv 2402.03300), its generated tokens capped at an
  offline round's search budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from sharpen.core.errors import ConfigError


class Recipe:
    """Every offline round builds all three datasets (pairs, labels, traces: the report shows them);
    `trains` names the one the policy trains on, with `trainer` ("dpo", "sft" or "grpo").

    An `online` recipe samples its own data while it trains: its collect stage searches nothing and
    writes the round's training problems, its build stage turns them into prompts."""

    name: ClassVar[str]
    trains: ClassVar[str]
    trainer: ClassVar[str]
    online: ClassVar[bool] = False
    unused: ClassVar[tuple[str, ...]] = ("train.prm_soft_labels",)  # config fields it never reads (the report leaves them out)

    def check(self, cfg: Any, trainer_cfg: Any, where: str) -> None:
        """Refuse a run config this recipe cannot run (`trainer_cfg`: its train section, built)."""

    def samples_per_row(self, opts: dict[str, Any], defaults: dict[str, Any]) -> int:
        """Training samples per dataset row (what `per_device_train_batch_size` counts)."""
        return 1

    def policy_options(self, cfg: Any) -> dict[str, Any]:
        """Trainer options the run config decides beside its `train` section."""
        return {}

    def describe(self, rows: int, trainer_cfg: Any) -> str:
        # "pairs": step pairs, and whole-solution pairs too with build.trace_pairs
        return f"DPO on {rows} pairs" if self.trainer == "dpo" else f"SFT on {rows} verified traces"

    def train_record(self, policy_dir: Path) -> dict[str, Any]:
        """What the round's train summary.json records from the policy's training, beside its model."""
        return {}

    def scorer_spec(self, cfg: Any, run: Path, r: int) -> str:
        """The scorer that collects round `r`'s trees."""
        return cfg.collect.scorer

    def pairs(self, trees: list, cfg: Any, r: int):
        from sharpen.train import data

        b = cfg.build
        return data.step_pairs(trees, min_margin=b.min_margin, round=r, pairing=b.pairing)

    def build(self, trees: list, cfg: Any, r: int) -> dict[str, Any]:
        from sharpen.train import data

        # build.trace_pairs is refused for recipes that do not train on pairs (loop.config.validate)
        return {"pairs": data.with_trace_pairs(self.pairs(trees, cfg, r), trees, cfg.build.trace_pairs, round=r),
                "labels": data.step_labels(trees, threshold=cfg.build.label_threshold, round=r),
                "traces": data.verified_traces(trees, round=r)}

    def train_extra(self, runner: Any, r: int, model: str, data_dir: Path, out: Path, opts: Any,
                    rows: dict[str, int]) -> dict[str, Any]:
        """Anything the recipe trains beside the policy (the PRM of `prm-guided`)."""
        return {}


class MCTSDPO(Recipe):
    name, trains, trainer = "mcts-dpo", "pairs", "dpo"


class StepDPO(Recipe):
    name, trains, trainer = "step-dpo", "pairs", "dpo"

    def pairs(self, trees: list, cfg: Any, r: int):
        from sharpen.train import data

        return data.step_dpo_pairs(trees, round=r)


class RFT(Recipe):
    name, trains, trainer = "rft", "traces", "sft"


class PRMGuided(Recipe):
    name, trains, trainer = "prm-guided", "traces", "sft"

    def scorer_spec(self, cfg: Any, run: Path, r: int) -> str:
        """The newest PRM an earlier round trained (a round that built no labels trains none: fall
        back to the one before it), else the configured scorer."""
        for q in range(r - 1, 0, -1):
            prm = run / f"round-{q}" / "train" / "prm" / "merged"
            if (prm / "config.json").exists():
                return f"prm:{prm}"
        return cfg.collect.scorer

    def train_extra(self, runner: Any, r: int, model: str, data_dir: Path, out: Path, opts: Any,
                    rows: dict[str, int]) -> dict[str, Any]:
        if not rows.get("labels", 0):
            runner.say(f"round {r}: no step labels, no PRM trained; the next round uses the last PRM there is")
            return {}
        from sharpen.train import get_trainer, make_config, options_for

        runner.say(f"round {r}: train PRM on {rows['labels']} step labels")
        shared = options_for("prm", opts)
        path = get_trainer("prm").train(make_config("prm", "train", model=model, data=str(data_dir / "labels"),
                                                    output_dir=str(out / "prm"), soft=runner.cfg.train.prm_soft_labels,
                                                    **shared))
        return {"prm": str(path)}


class GRPO(Recipe):
    """Online RL with TRL's GRPOTrainer (`sharpen.train.grpo`): the round's training problems are the
    ones an offline round would search, as the task's chat prompts; the reward is the task's verifier
    (under `collect.strict_format`), plus a PRM's with `train.process_reward: prm:<path>`. The round
    may generate as many tokens as an offline round's search: collect.budget x collect.problems
    (`token_budget`); its train summary.json records what it generated (`usage`)."""

    name, trains, trainer = "grpo", "prompts", "grpo"
    online = True
    unused = ("collect.algo", "collect.scorer", "collect.args", "collect.temperature", "collect.temperature_step",
              "collect.step_tokens", "collect.rollout_tokens", "collect.max_depth", "collect.merge_duplicates",
              "collect.batch", "collect.parallel", "collect.reference_share", "collect.screen", "build",
              "train.prm_soft_labels")

    @staticmethod
    def token_cap(cfg: Any) -> int:
        return cfg.collect.budget * cfg.collect.problems

    def check(self, cfg: Any, trainer_cfg: Any, where: str) -> None:
        worst = trainer_cfg.generation_batch_size * trainer_cfg.max_completion_length
        if worst > self.token_cap(cfg):
            raise ConfigError(
                f"{where}: one GRPO generation may produce {trainer_cfg.generation_batch_size} completions x "
                f"max_completion_length {trainer_cfg.max_completion_length} = {worst} tokens, more than a round's "
                f"budget collect.budget x collect.problems = {self.token_cap(cfg)} (fix: fewer or shorter completions "
                "per step, or a larger collect.budget)")

    def samples_per_row(self, opts: dict[str, Any], defaults: dict[str, Any]) -> int:
        return opts.get("num_generations", defaults["num_generations"])

    def build_prompts(self, task: Any, problems: list, r: int) -> dict[str, Any]:
        from sharpen.train.grpo import prompt_rows

        return {"prompts": prompt_rows(task, problems, round=r)}

    def policy_options(self, cfg: Any) -> dict[str, Any]:
        return {"task": cfg.task, "task_args": dict(cfg.task_args), "strict_answers": cfg.collect.strict_format,
                "token_budget": self.token_cap(cfg)}

    def describe(self, rows: int, trainer_cfg: Any) -> str:
        return (f"GRPO on {rows} prompts x {trainer_cfg.num_generations} completions, at most "
                f"{trainer_cfg.token_budget} generated tokens")

    def train_record(self, policy_dir: Path) -> dict[str, Any]:
        import json

        m = json.loads((policy_dir / "sharpen_train.json").read_text())["metrics"]
        keys = ("generated_tokens", "token_budget", "usage", "steps", "stopped_by_budget_at", "completions", "verified",
                "advantage", "credit_tokens")
        return {k: m.get(k) for k in keys}


RECIPES: dict[str, type[Recipe]] = {c.name: c for c in (MCTSDPO, StepDPO, RFT, PRMGuided, GRPO)}


def unused_fields(run: Path) -> tuple[str, ...]:
    """The config fields the recipe of run dir `run` never reads (none when its config.yaml names no
    recipe sharpen knows)."""
    import yaml

    try:
        name = (yaml.safe_load((Path(run) / "config.yaml").read_text()) or {}).get("recipe")
    except (OSError, yaml.YAMLError, AttributeError):
        return ()
    return RECIPES[name].unused if name in RECIPES else ()


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r} (fix: one of {', '.join(RECIPES)})")
    return RECIPES[name]()
