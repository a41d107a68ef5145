"""The loop's configuration: YAML validated by pydantic. Every default is written into the run dir.

Recipes: `mcts-dpo` (MCTS trees -> step pairs -> DPO, arXiv 2405.00451), `step-dpo` (first wrong
step vs a correct continuation -> DPO, arXiv 2406.18629), `rft` (best-of-N -> verified traces ->
SFT, rejection-sampling fine-tuning), `prm-guided` (train a PRM each round and search with it as
the scorer in the next, as in ReST-MCTS* arXiv 2406.03816 / rStar-Math arXiv 2501.04519), `grpo`
(online RL, TRL's GRPOTrainer with the task's verifier as reward, arXiv 2402.03300); and for the
`digits-ddpm` denoiser on the `digits` task, `diffusion-spo` (searched denoising steps -> sibling
step pairs -> the Diffusion-DPO step loss, SPO arXiv 2406.04314) and `diffusion-rwr` (reward-weighted
fine-tuning on unguided samples of equal NFE, arXiv 2302.12192). A language-model recipe with the
digits task, or a denoiser's recipe with a text task, is a one-line error.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sharpen.backends.models import DEFAULT_MODEL
from sharpen.core.errors import ConfigError
from sharpen.core.tasks import DEFAULT_TASK
from sharpen.search.credit import LABEL_THRESHOLD
from sharpen.search.evaluate import EvalConfig
from sharpen.search.process import SearchSettings
from sharpen.search.spec import SearchRequest

Recipe = str  # a name in sharpen.loop.recipes.RECIPES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CollectConfig(SearchSettings):
    algo: str = Field("mcts", description=SearchRequest.model_fields["algo"].description)
    scorer: str = Field("oracle", description=SearchRequest.model_fields["scorer"].description)
    problems: int = Field(64, ge=1, description="training problems searched per round")
    pool: int | None = Field(
        None, ge=1,
        description="draw each run's training problems at random from the first `pool` distinct training "
        "problems (default: the first problems x rounds, in stream order). Set it as deep as the held-out "
        "set reaches (about 4 x eval.n) so the few, often-repeated short problems do not dominate training "
        "while the held-out set, distinct by construction, holds mostly long ones",
    )
    budget: int = Field(512, ge=1, description=SearchRequest.model_fields["budget"].description)
    temperature_step: float = Field(
        0.0, ge=0.0,
        description="added to `temperature` for each round after the first. A trained policy is sharper: at "
        "the same temperature its sibling steps repeat and fewer pairs split by value "
        "(benchmarks/starvation.py); a hotter collection keeps them apart",
    )
    reference_share: float = Field(
        0.0, ge=0.0, le=1.0,
        description="from round 2 on, this share of the sampled step rows comes from the run's starting model "
        "instead of the trained policy (rollouts stay the policy's): diverse siblings after training "
        "(`sharpen.backends.mixture`). Not with a cluster section",
    )
    screen: int = Field(
        0, ge=0,
        description="from round 2 on, sample this many whole solutions of each candidate problem from the trained "
        "policy and search the problems it solves only some of the time first (DAPO's dynamic sampling): "
        "a problem the policy always or never solves gives few sibling steps that differ in value. The "
        "candidates are the round's problems plus an equal share of the pool's unused ones (needs "
        "collect.pool above problems x rounds); the samples' tokens are reported in the round's collect "
        "metrics (`screen`). 0: off",
    )
    args: dict[str, Any] = Field(default_factory=dict, description="the algorithm's options (e.g. mcts: k, c_puct; "
                                 "`sharpen algos` lists each algorithm's), checked when the config is loaded")
    strict_format: bool = Field(
        True,
        description="a collected solution counts as correct only with an `Answer:` line, as the prompt asks "
        "(held-out evaluation keeps its lenient extraction). Without it, steps like 'The answer is 8.' earn "
        "credit through the fallback extraction, win step pairs, and training drifts away from the format",
    )


class BuildConfig(_Strict):
    min_margin: float = Field(0.2, ge=0.0, description="min value gap between chosen and rejected step")
    pairing: Literal["best_worst", "all"] = Field("best_worst", description="mcts-dpo: best vs worst sibling, or every sibling pair over the margin")
    label_threshold: float = Field(LABEL_THRESHOLD, ge=0.0, le=1.0, description="PRM label = value >= threshold")
    trace_pairs: int = Field(
        0, ge=0,
        description="pair recipes (mcts-dpo, step-dpo): add up to this many outcome pairs per problem to the round's "
        "step pairs, a verified correct whole solution against a wrong one of the same tree (Iterative RPO, "
        "arXiv 2404.19733); with train.sft_weight the correct solutions also get the NLL term, the rft signal "
        "mixed into the DPO round. 0: off",
    )


class TrainConfig(BaseModel):
    """How the loop trains. The fields below are the loop's own (how many steps a round gets, what it
    starts from, what it trains on); every other key is a field of the recipe's trainer config, by
    its TRL name (`sharpen.train.config_class`: TRL's `DPOConfig`, `SFTConfig` or `GRPOConfig` plus
    `sharpen.train.common.SharpenArgs`), e.g. `max_steps`, `learning_rate`,
    `per_device_train_batch_size`, `beta`, `sft_weight`, `lora`, `lora_r`, `warmup_steps`; checked
    when the config is loaded. `precompute_ref_log_probs` may also be `auto` (the default): on when
    each pair is seen twice or more. The run's `seed` (+ the round) seeds training."""

    model_config = ConfigDict(extra="allow")

    max_epochs: float | None = Field(None, gt=0, description="cap on passes over the round's data: steps = "
                                     "min(max_steps, ceil(max_epochs x rows / (per_device_train_batch_size x "
                                     "gradient_accumulation_steps))); grpo's rows are completions")
    prm_soft_labels: bool = Field(False, description="prm-guided: train the PRM on the Monte Carlo values "
                                  "themselves (soft labels) instead of value >= build.label_threshold")
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

    @property
    def options(self) -> dict[str, Any]:
        """The trainer config fields this section sets."""
        return dict(self.model_extra or {})


LOOP_SETS = {"model": "the loop trains each round's policy", "data": "the loop builds each round's data",
             "output_dir": "the loop writes into the run dir", "seed": "the run's top-level seed (+ the round) seeds it",
             "task": "the run's top-level task: is the one trained on", "task_args": "the run's top-level task_args: apply",
             "problems": "collect.problems decides a round's problems",
             "strict_answers": "collect.strict_format decides it",
             "token_budget": "a grpo round may generate collect.budget x collect.problems tokens"}


def trainer_options(cfg: LoopConfig, kind: str) -> dict[str, Any]:
    """The `train` section's trainer options that apply to trainer `kind` ("dpo", "sft", "prm"),
    `precompute_ref_log_probs: auto` left for the loop to resolve."""
    from sharpen.train import options_for

    return options_for(kind, cfg.train.options)


_E = EvalConfig.model_fields


class EvalSection(_Strict):
    """The loop's evaluation: `sharpen.search.evaluate.EvalConfig`'s fields and defaults, plus `n`."""

    n: int = Field(200, ge=1, description="held-out problems")
    split: Literal["test", "validation"] = Field(
        "test",
        description="which problems every round is evaluated on: `test`, the task's held-out split; `validation`, "
        "n problems of the run's training pool (collect.pool) that no round trains on or screens, drawn with "
        "the run's seed: the training problems' mix, for choosing a recipe's settings without looking at the "
        "held-out problems (needs collect.pool >= collect.problems x rounds + n)",
    )
    samples: int = _E["samples"]
    temperature: float = _E["temperature"]
    max_tokens: int = _E["max_tokens"]
    batch: int = _E["problems_per_call"]


class ClusterConfig(_Strict):
    """Where the loop's collect and eval stages run: on `actors` Ray actors of the cluster at
    `address` (`sharpen.search.distributed`, the same trees and rows as one process); build and train
    stay in this process (TRL/accelerate). Without the section: all in this process."""

    address: str = Field(min_length=1, description="local (a local Ray cluster), auto (the cluster this machine "
                         "joined with `ray start`) or ray://HEAD:10001")
    actors: int = Field(2, ge=1, description="Ray actors, one backend each")


class LoopConfig(_Strict):
    name: str = "run"
    recipe: Recipe = "mcts-dpo"
    model: str = DEFAULT_MODEL
    task: str = DEFAULT_TASK
    task_args: dict[str, Any] = Field(default_factory=lambda: {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1})
    rounds: int = Field(2, ge=1)
    seed: int = 0
    threads: int | None = Field(
        None, ge=1,
        description="torch's CPU thread count for every stage (`torch.set_num_threads`; default: torch's own, "
        "the physical cores). The thread count sets the order of float reductions, so a run at another count "
        "rounds as another machine would: a cheap check that a figure does not hinge on rounding. The count "
        "used is recorded in the run's manifest.json",
    )
    collect: CollectConfig = Field(default_factory=CollectConfig)
    build: BuildConfig = Field(default_factory=BuildConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalSection = Field(default_factory=EvalSection)
    cluster: ClusterConfig | None = Field(None, description="collect and evaluate on Ray actors (default: here)")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> LoopConfig:
    """Read YAML, apply dotted overrides (`{"train.max_steps": 5}`), validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (fix: pass a YAML file, e.g. configs/demo.yaml)")
    # files as people have them: a UTF-8 byte-order mark and CRLF line ends are fine; anything
    # else that is not UTF-8 YAML is a one-line error naming the file and the line
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e}) (fix: check the file's permissions)") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        what = "UTF-16 text" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else f"byte 0x{raw[e.start]:02x}; a binary file?"
        raise ConfigError(f"{path}:{line}: not UTF-8 text ({what}) (fix: save the config as UTF-8 YAML)") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        pos = getattr(e, "position", None)  # a ReaderError (e.g. a control character) has no mark
        line = mark.line + 1 if mark is not None else text[:pos].count("\n") + 1 if pos is not None else None
        where = f"{path}:{line}" if line else str(path)
        problem = " ".join((getattr(e, "problem", None) or str(e).splitlines()[0]).split())
        fix = "save it as plain UTF-8 text" if isinstance(e, yaml.reader.ReaderError) else "check the indentation"
        raise ConfigError(f"{where}: not valid YAML ({problem}) (fix: {fix})") from None
    if data is None:
        raise ConfigError(f"{path}: the file is empty or all comments (fix: key: value lines, e.g. a copy of configs/demo.yaml)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level (fix: key: value lines)")
    for key, value in (overrides or {}).items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise ConfigError(f"{path}: cannot set {key}: {p} is not a section (fix: override a field of a section)")
        node[leaf] = value
    return validate(data, str(path))


def validate(data: dict[str, Any], where: str = "config") -> LoopConfig:
    try:
        cfg = LoopConfig.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise ConfigError(f"{where}: {loc}: {first['msg']} (fix: see configs/ for valid examples)") from None
    from sharpen.loop.recipes import get_recipe
    from sharpen.search.registry import get_algorithm, parse_scorer

    if cfg.cluster is not None and cfg.collect.reference_share > 0:
        raise ConfigError(f"{where}: collect.reference_share does not run on a cluster yet (fix: remove the cluster "
                          "section, or set collect.reference_share: 0)")
    if cfg.cluster is not None and importlib.util.find_spec("ray") is None:
        raise ConfigError(f"{where}: cluster: needs Ray (fix: pip install 'sharpen[ray]', or remove the section)")

    if cfg.model.startswith("openai:"):
        raise ConfigError(f"{where}: model: the loop trains the model, so it needs its weights here, not a server "
                          "(fix: a local model dir or built-in name; servers serve `sharpen eval|search|sweep`)")
    try:
        recipe = get_recipe(cfg.recipe)
    except ConfigError as e:
        raise ConfigError(f"{where}: recipe: {e}") from None
    _check_kind(cfg, recipe, where)
    if recipe.denoise:
        if "task_args" not in cfg.model_fields_set:  # the default is a text task's: the digits task's own instead
            cfg = cfg.model_copy(update={"task_args": {}})
        recipe.check(cfg, None, where)
    else:
        _check_train(cfg, recipe, where)
    if cfg.build.trace_pairs and recipe.trains != "pairs":
        raise ConfigError(f"{where}: build.trace_pairs adds pairs, but recipe {cfg.recipe} trains on "
                          f"{recipe.trains} (fix: build.trace_pairs: 0, or recipe mcts-dpo or step-dpo)")
    try:
        get_algorithm(cfg.collect.algo).parse(cfg.collect.args, cfg.collect.budget)
        if cfg.collect.scorer != "none":
            parse_scorer(cfg.collect.scorer)
    except ConfigError as e:
        raise ConfigError(f"{where}: collect: {e}") from None
    if cfg.train.init == "base" and not cfg.train.replay and cfg.rounds > 1:
        raise ConfigError(f"{where}: train.init=base without train.replay trains each round on its own data only "
                          "and throws earlier rounds away (fix: train.replay: true, or train.init: previous)")
    need = cfg.collect.problems * cfg.rounds
    if cfg.collect.pool is not None and cfg.collect.pool < need:
        raise ConfigError(
            f"{where}: collect.pool={cfg.collect.pool} is smaller than collect.problems x rounds = {need} "
            f"(fix: collect.pool >= {need}, or leave it out)"
        )
    held = cfg.eval.n if cfg.eval.split == "validation" else 0  # pool problems kept for validation
    taken = f"collect.problems x rounds{' + eval.n' if held else ''} = {need + held}"
    if held and (cfg.collect.pool is None or cfg.collect.pool < need + held):
        raise ConfigError(
            f"{where}: eval.split=validation evaluates on {held} problems of collect.pool that no round trains "
            f"on, so it needs collect.pool >= {taken} (fix: collect.pool: {need + held}, or a smaller eval.n)"
        )
    if cfg.collect.screen and (cfg.collect.pool is None or cfg.collect.pool <= need + held or cfg.rounds < 2):
        raise ConfigError(
            f"{where}: collect.screen picks each round's problems among more candidates than it searches, so it "
            f"needs collect.pool above {taken} and two rounds or more "
            f"(fix: collect.pool: {2 * (need + held) - cfg.collect.problems}, or collect.screen: 0)"
        )
    if cfg.collect.screen and cfg.cluster is not None:
        raise ConfigError(f"{where}: collect.screen does not run on a cluster yet (fix: remove the cluster "
                          "section, or set collect.screen: 0)")
    return cfg


def with_cluster(cfg: LoopConfig, address: str | None, actors: int | None) -> LoopConfig:
    """`cfg` with its `cluster` section set or changed by `sharpen run --ray ADDR --actors N`."""
    if address is None and actors is None:
        return cfg
    raw = cfg.cluster.model_dump() if cfg.cluster is not None else {}
    if address is not None:
        raw["address"] = address
    if actors is not None:
        raw["actors"] = actors
    if "address" not in raw:
        raise ConfigError("--actors needs a cluster (fix: add --ray local|auto|ray://HEAD:10001, or a cluster: "
                          "section in the config)")
    return validate(cfg.model_dump(mode="json") | {"cluster": raw}, "--ray/--actors")


def _check_kind(cfg: LoopConfig, recipe: Any, where: str) -> None:
    """A recipe that trains a denoiser runs on the digits task and a language model's recipe on a text
    task; the model is of the task's kind (`sharpen.search.spec.check_pairing`)."""
    from sharpen.search.denoise_task import is_digits_task
    from sharpen.search.spec import check_pairing

    digits = is_digits_task(cfg.task)
    if recipe.denoise and not digits:
        raise ConfigError(f"{where}: recipe {cfg.recipe} trains a denoiser on the digits task, not {cfg.task} "
                          "(fix: task: digits and model: digits-ddpm, or a language-model recipe such as mcts-dpo)")
    if digits and not recipe.denoise:
        raise ConfigError(f"{where}: recipe {cfg.recipe} trains a language model; the digits task is a denoiser's "
                          "(fix: recipe: diffusion-spo or diffusion-rwr, or a text task such as gym:chain_sum)")
    try:
        check_pairing(cfg.model, cfg.task)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _check_train(cfg: LoopConfig, recipe: Any, where: str) -> None:
    """Every key of the `train` section is a loop field or an option of the recipe's trainer
    (checked by building that trainer's config once, as TRL would)."""
    from sharpen.train import make_config

    opts = cfg.train.options
    for key, why in LOOP_SETS.items():
        if key in opts:
            raise ConfigError(f"{where}: train.{key} is not set in a run config: {why} (fix: remove it)")
    if opts.get("precompute_ref_log_probs") == "auto":
        opts.pop("precompute_ref_log_probs")
    recipe.check(cfg, make_config(recipe.trainer, f"{where}: train", model="check", output_dir="check", **opts), where)


def dump(cfg: LoopConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
