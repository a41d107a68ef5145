"""Recipes: what a round collects with, builds and trains. One small class per recipe, registered
by name, so the loop reads collect -> build -> train -> evaluate and a new recipe is one class.

- `mcts-dpo`: MCTS trees -> sibling step pairs -> DPO (Xie et al. 2024, arXiv 2405.00451).
- `step-dpo`: the first wrong step against a correct continuation -> DPO (Lai et al. 2024, arXiv 2406.18629).
- `rft`: verified full solutions -> SFT (rejection-sampling fine-tuning).
- `prm-guided`: train a PRM on each round's step labels and search the next round with it as the
  scorer (ReST-MCTS*, arXiv 2406.03816; rStar-Math, arXiv 2501.04519); the policy trains by SFT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from sharpen.errors import ConfigError


class Recipe:
    """Every round builds all three datasets (pairs, labels, traces: the report shows them);
    `trains` names the one the policy trains on, with `trainer` ("dpo" or "sft")."""

    name: ClassVar[str]
    trains: ClassVar[str]
    trainer: ClassVar[str]

    def scorer_spec(self, cfg: Any, run: Path, r: int) -> str:
        """The scorer that collects round `r`'s trees."""
        return cfg.collect.scorer

    def pairs(self, trees: list, cfg: Any, r: int):
        from sharpen import data

        b = cfg.build
        return data.step_pairs(trees, min_margin=b.min_margin, round=r, pairing=b.pairing)

    def build(self, trees: list, cfg: Any, r: int) -> dict[str, Any]:
        from sharpen import data

        return {"pairs": self.pairs(trees, cfg, r),
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
        from sharpen import data

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
        from sharpen.train import make_config, options_for
        from sharpen.train.prm import train_prm

        runner.say(f"round {r}: train PRM on {rows['labels']} step labels")
        shared = options_for("prm", opts)
        path = train_prm(make_config("prm", "train", model=model, data=str(data_dir / "labels"),
                                     output_dir=str(out / "prm"), soft=runner.cfg.train.prm_soft_labels, **shared))
        return {"prm": str(path)}


RECIPES: dict[str, type[Recipe]] = {c.name: c for c in (MCTSDPO, StepDPO, RFT, PRMGuided)}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r} (fix: one of {', '.join(RECIPES)})")
    return RECIPES[name]()
