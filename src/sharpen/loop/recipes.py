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

Two recipes train the `digits-ddpm` denoiser on the `digits` task instead of a language model
(`DenoiseRecipe`, run by `sharpen.loop.runner.DenoiseRunner`; `sharpen.train.diffusion`):

- `diffusion-spo`: a search over the denoising steps (e.g. beam with the `x0-reward` scorer) ->
  sibling step pairs -> the Diffusion-DPO step loss (SPO, Liang et al. 2024, arXiv 2406.04314;
  Diffusion-DPO, Wallace et al. 2023, arXiv 2311.12908).
- `diffusion-rwr`: no search: unguided samples costing the NFE a round's search may spend ->
  reward-weighted fine-tuning (RWR, Lee et al. 2023, arXiv 2302.12192), the baseline at equal cost.
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
    denoise: ClassVar[bool] = False  # trains the digits-ddpm denoiser (`DenoiseRecipe`), not a language model
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
        from sharpen.train.grpo import TokenBudget, worst_case_text

        if TokenBudget.for_config(trainer_cfg).worst_case() > self.token_cap(cfg):
            raise ConfigError(
                f"{where}: {worst_case_text(trainer_cfg)} tokens is more than a round's budget collect.budget x "
                f"collect.problems = {self.token_cap(cfg)} (fix: fewer or shorter completions per step, or a larger "
                "collect.budget)")

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
                "advantage", "credit_tokens", "dropped_tokens")
        return {k: m.get(k) for k in keys}


# -- recipes that train a denoiser -----------------------------------------------------------------
DENOISE_SCORERS = ("x0-reward", "mc-reward")  # the scorers that value a denoising process's states
# fields of a run config that shape a language model's search, evaluation or training only
_LM_ONLY = ("collect.temperature", "collect.step_tokens", "collect.rollout_tokens", "collect.max_depth",
            "collect.merge_duplicates", "collect.batch", "collect.parallel", "collect.temperature_step",
            "collect.reference_share", "collect.screen", "collect.strict_format", "build.pairing",
            "build.label_threshold", "build.trace_pairs", "train.prm_soft_labels", "train.replay", "train.init",
            "eval.samples", "eval.temperature", "eval.max_tokens", "eval.batch", "cluster")
_DENOISE_TRAIN = ("max_steps", "batch", "lr", "weight_decay", "max_grad_norm", "threads", "save_every")
_FLOATS = ("lr", "weight_decay", "max_grad_norm", "beta", "tau")


class DenoiseRecipe(Recipe):
    """A recipe that trains the unconditional `digits-ddpm` denoiser (`--task digits`) toward one
    target class, `train.target` (a round on problems of mixed targets would pull the one sampler
    toward different digits: `sharpen.train.diffusion`). Every problem the run draws, for collection
    and for evaluation, is of that class: `collect.problems` and `eval.n` count problems of the
    target, the first of each split's stream. Round 0 evaluates the starting denoiser's unguided
    sampler; round r collects with round r-1's denoiser (`collect_data`), builds the training data
    (`build_data`), trains one `train_round` from it (the reference of `diffusion-spo` is that
    denoiser) and evaluates the new one. The `train` section takes `target` and the fields
    `train_keys` of `DenoiseTrainConfig` (the run's seed and the round seed training), and the loop's
    `max_epochs`."""

    denoise = True
    trainer = "denoise"
    method: ClassVar[str]  # `DenoiseTrainConfig.method`
    train_keys: ClassVar[tuple[str, ...]]
    refused: ClassVar[tuple[str, ...]] = _LM_ONLY  # fields that are an error when changed from their default

    def target(self, cfg: Any) -> int:
        """The digit class the run trains the denoiser to draw (`train.target`, checked by `check`)."""
        return int(cfg.train.options["target"])

    def problems(self, task: Any, split: str, n: int, cfg: Any) -> list:
        """The first `n` problems of `task`'s `split` (a `DigitsTask`, seeded by the run's seed) whose
        target is `train.target`: the problems stream in a fixed order, so these are the same
        whatever the number drawn to find them."""
        target = self.target(cfg)
        draw = max(64, 2 * n * task.options.classes)
        while True:
            found = [p for p in task.problems(split, draw, seed=cfg.seed) if int(p.meta["target"]) == target]
            if len(found) >= n:
                return found[:n]
            draw *= 2

    def train_config(self, cfg: Any, seed: int = 0) -> Any:
        """The `DenoiseTrainConfig` of the run's `train` section (its `target` aside), seeded by
        `seed`; a one-line `ConfigError` for a key this recipe does not take or a value out of range."""
        from sharpen.train.diffusion import DenoiseTrainConfig

        opts = {k: v for k, v in cfg.train.options.items() if k != "target"}
        for key in opts:
            if key not in self.train_keys:
                import difflib

                near = difflib.get_close_matches(key, self.train_keys, n=1)
                hint = f"did you mean {near[0]}? " if near else ""
                raise ConfigError(f"train.{key} is not an option of recipe {self.name} (fix: {hint}one of target, "
                                  f"{', '.join(self.train_keys)}, max_epochs)")
        for key in _FLOATS:  # YAML reads 1e-4 (no decimal point) as a string
            if isinstance(opts.get(key), str):
                try:
                    opts[key] = float(opts[key])
                except ValueError:
                    pass
        return DenoiseTrainConfig(method=self.method, seed=seed, **opts).check()

    def check(self, cfg: Any, trainer_cfg: Any, where: str) -> None:
        """The task's arguments (the class reward only: the target's probability is what a round
        raises), `train.target` and the train section, no language-model field changed from its
        default, and the collection's scorer (`DENOISE_SCORERS`, for a recipe that searches)."""
        from sharpen.search.denoise_task import DigitsTaskOptions

        task = DigitsTaskOptions.parse(cfg.task_args, f"{where}: task_args")
        if task.reward not in (None, "class"):
            raise ConfigError(f"{where}: task_args.reward={task.reward}: recipe {self.name} trains toward a target class, "
                              "by the classifier's probability of it (fix: drop task_args.reward)")
        for name in self.refused:
            value, default = _field_value(cfg, name)
            if value != default:
                raise ConfigError(f"{where}: {name} does not apply to recipe {self.name}, which trains a denoiser "
                                  "(fix: remove it)")
        target = cfg.train.options.get("target")
        if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < task.classes:
            raise ConfigError(f"{where}: train.target={target!r}: recipe {self.name} trains the unconditional denoiser "
                              f"toward one digit class (fix: train.target: an integer in 0..{task.classes - 1})")
        try:
            self.train_config(cfg)
        except ConfigError as e:
            text = str(e)
            raise ConfigError(f"{where}: {text if text.startswith('train.') else 'train: ' + text}") from None

    def collect_data(self, runner: Any, r: int, model: str, d: Path) -> tuple[dict[str, Any], dict[str, str]]:
        """Round `r`'s collection with the denoiser `model` into `d`: its metrics and artifacts."""
        raise NotImplementedError

    def build_data(self, runner: Any, r: int) -> Any:
        """Round `r`'s training data (`StepPairs` or `RewardSamples`) from what it collected."""
        raise NotImplementedError

    def describe(self, rows: int, trainer_cfg: Any) -> str:
        what = "Diffusion-DPO step loss on" if self.method == "dpo-step" else "reward-weighted fine-tuning on"
        return f"{what} {rows} {self.trains}"


class DiffusionSPO(DenoiseRecipe):
    """Step-aware preference optimisation of the denoiser (SPO, arXiv 2406.04314): each round searches
    its training problems (`collect.algo`, valued by `collect.scorer`, `collect.budget` NFE a
    problem), takes every state's best and worst scored children one reverse step below it as a
    step pair when their value gap is at least `build.min_margin` (`sibling_pairs`), and trains
    the Diffusion-DPO step loss (arXiv 2311.12908) on them, `train.beta` its temperature."""

    name, trains, method = "diffusion-spo", "pairs", "dpo-step"
    train_keys = (*_DENOISE_TRAIN, "beta")
    unused = _LM_ONLY

    def check(self, cfg: Any, trainer_cfg: Any, where: str) -> None:
        super().check(cfg, trainer_cfg, where)
        from sharpen.search.registry import parse_scorer

        scorer = cfg.collect.scorer
        if scorer == "none" or parse_scorer(scorer).name not in DENOISE_SCORERS:
            raise ConfigError(f"{where}: collect.scorer={scorer}: step pairs need the denoising states valued "
                              f"(fix: collect.scorer: x0-reward, or mc-reward:k)")
        if cfg.build.min_margin > 1:
            raise ConfigError(f"{where}: build.min_margin={cfg.build.min_margin}: values are rewards in [0, 1] "
                              "(fix: build.min_margin in [0, 1])")

    def collect_data(self, runner: Any, r: int, model: str, d: Path) -> tuple[dict[str, Any], dict[str, str]]:
        """Search the round's problems with its settings; the trees, inner states kept for the
        pairs, go to `d/trees.jsonl` (a resumed stage skips the problems there)."""
        from sharpen.search.collect import search_metrics
        from sharpen.search.denoise_task import denoise_metrics
        from sharpen.search.spec import execute

        c = runner.cfg.collect
        spec, process = self._search(runner, model)
        problems = runner.round_problems(r)
        with runner.progress(f"round {r}: collect ({c.algo}, {c.scorer})", len(problems)) as advance:
            trees = execute(spec, process, problems, spec.make_scorer(process), seed=runner.round_seed(r),
                            out_jsonl=d / "trees.jsonl", on_progress=advance, split="train", parallel=1,
                            compact_states=False)
        metrics = search_metrics(trees, c.budget) | denoise_metrics(trees)
        runner.say(f"round {r}: searched {len(trees)} problems, mean reward of the chosen x_0 "
                   f"{metrics['mean_reward']:.3f}, {metrics['mean_nfe']:.0f} NFE a problem")
        return metrics | {"scorer": c.scorer}, {"trees": f"round-{r}/collect/trees.jsonl"}

    def build_data(self, runner: Any, r: int) -> Any:
        from sharpen.core.io import read_jsonl
        from sharpen.core.tree import Tree
        from sharpen.train.diffusion import tree_step_pairs

        trees = [Tree.from_dict(t) for t in read_jsonl(runner.run / f"round-{r}" / "collect" / "trees.jsonl")]
        model = runner.manifest.get(f"round-{r}/collect").get("model", runner.cfg.model)
        return tree_step_pairs(self._search(runner, model)[1], trees, runner.cfg.build.min_margin)

    @staticmethod
    def _search(runner: Any, model: str) -> tuple[Any, Any]:
        """The collection's `SearchSpec` and the denoising process over `model` it searches."""
        from sharpen.backends import load_backend
        from sharpen.search.spec import SearchSpec

        c = runner.cfg.collect
        spec = SearchSpec(algorithm=c.algo, scorer=c.scorer, budget=c.budget, options=c.args, collect=True)
        return spec, spec.process(load_backend(model, seed=runner.cfg.seed), runner.task)


class DiffusionRWR(DenoiseRecipe):
    """Reward-weighted fine-tuning of the denoiser (RWR, arXiv 2302.12192), the baseline of
    `diffusion-spo` at the same sampling cost: each round draws as many unguided samples of its
    training problems as the NFE a search of the round may spend buys (`collect.budget` x
    `collect.problems`, `sample_rewarded`) and trains the denoising loss on them, each weighted by
    softmax(reward / `train.tau`). It searches nothing: `collect.algo`, `scorer`, `args` and the
    `build` section are not read."""

    name, trains, method = "diffusion-rwr", "samples", "rwr"
    train_keys = (*_DENOISE_TRAIN, "tau")
    # the search settings are left as they are (not refused), so a diffusion-spo config runs as its
    # baseline at the same NFE with `--set recipe=diffusion-rwr`
    unused = (*_LM_ONLY, "collect.algo", "collect.scorer", "collect.args", "build")

    def collect_data(self, runner: Any, r: int, model: str, d: Path) -> tuple[dict[str, Any], dict[str, str]]:
        """`collect.budget` x the round's problems NFE of unguided samples, written to `d/samples.pt`."""
        from sharpen.backends import load_backend
        from sharpen.core.stats import bootstrap_ci
        from sharpen.train.diffusion import sample_rewarded

        c = runner.cfg.collect
        problems = runner.round_problems(r)
        runner.say(f"round {r}: collect: {c.budget * len(problems)} NFE of unguided samples")
        samples = sample_rewarded(load_backend(model, seed=runner.cfg.seed), problems, c.budget * len(problems),
                                  steps=runner.task.options.steps, seed=runner.round_seed(r))
        save_data(samples, d / "samples.pt")
        rewards = samples.reward.tolist()
        lo, hi = bootstrap_ci(rewards, seed=runner.cfg.seed)
        metrics = {"n": len(problems), "budget": c.budget, "budget_unit": "nfe", "samples": len(samples),
                   "mean_reward": sum(rewards) / len(rewards), "mean_reward_ci95": [lo, hi],
                   "mean_nfe": samples.nfe / len(problems), "nfe": samples.nfe}
        runner.say(f"round {r}: {len(samples)} unguided samples, mean reward {metrics['mean_reward']:.3f}")
        return metrics, {"samples": f"round-{r}/collect/samples.pt"}

    def build_data(self, runner: Any, r: int) -> Any:
        return load_data(runner.run / f"round-{r}" / "collect" / "samples.pt")


def _field_value(cfg: Any, dotted: str) -> tuple[Any, Any]:
    """(the value, the default) of a run config's field `section.name`, or of a whole section."""
    section, _, name = dotted.partition(".")
    if not name:
        return getattr(cfg, section), type(cfg).model_fields[section].get_default(call_default_factory=True)
    obj = getattr(cfg, section)
    return getattr(obj, name), type(obj).model_fields[name].get_default(call_default_factory=True)


def save_data(data: Any, path: Path) -> None:
    """`StepPairs` or `RewardSamples` as one torch file (its tensors and counts, written atomically)."""
    import dataclasses
    import io

    import torch

    from sharpen.core.io import atomic_write_bytes

    buf = io.BytesIO()
    torch.save({"kind": type(data).__name__, **{f.name: getattr(data, f.name) for f in dataclasses.fields(data)}}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_data(path: Path) -> Any:
    """What `save_data` wrote."""
    import torch

    from sharpen.train.diffusion import RewardSamples, StepPairs

    raw = torch.load(path, weights_only=True)
    cls = {"StepPairs": StepPairs, "RewardSamples": RewardSamples}[raw.pop("kind")]
    return cls(**raw)


RECIPES: dict[str, type[Recipe]] = {c.name: c for c in (MCTSDPO, StepDPO, RFT, PRMGuided, GRPO, DiffusionSPO,
                                                         DiffusionRWR)}


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
