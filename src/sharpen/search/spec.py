"""What a search is built from (a model, a task and the process over them) and what it is asked to
do: a `SearchSpec` (algorithm, scorer, budget, the algorithm's typed options, the process's
settings), validated once, and `execute`, the one function that runs a spec over problems. `sharpen
search`, `sharpen sweep`, a run's collect stage, the Ray workers and `sharpen serve` (one tree a
request, `SearchSpec.tree`) all go through it.

Two kinds of process: a language model (a backend) on a text task is an `LMProcess`, whose budget
is generated tokens; `digits-ddpm` (or a diffusers pipeline directory) on the `digits` task is a
`DenoiseProcess` (DDPM ancestral sampling searched step by step, `sharpen.search.denoise_task`),
whose budget is denoiser forwards (NFE). A model of one kind with a task of the other is a one-line
ConfigError (`check_pairing`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, model_validator

from sharpen.backends.models import DEFAULT_MODEL
from sharpen.core.errors import ConfigError
from sharpen.core.tasks import DEFAULT_TASK
from sharpen.search.process import SearchSettings
from sharpen.search.registry import AlgorithmEntry, Options, check_counts, get_algorithm, parse_scorer


def load_model(model: str = DEFAULT_MODEL, seed: int = 0, **backend_options: Any):
    """A backend for a built-in model name, an HF id or a local model directory; for `digits-ddpm`
    or a diffusers pipeline directory, its denoiser and the digits rewards (`sharpen.backends.load_backend`)."""
    from sharpen.backends import load_backend

    return load_backend(model, seed=seed, **backend_options)


def load_task(spec: str = DEFAULT_TASK, **task_args: Any):
    """`gym:<dataset>`, `gsm8k:<file.jsonl>` or `math:<file.jsonl>`, with the dataset's options; or
    `digits` ("draw the digit c", for a denoising model; `sharpen.search.denoise_task`)."""
    from sharpen.search.denoise_task import DigitsTask, is_digits_task

    if is_digits_task(spec):
        return DigitsTask(**task_args)
    from sharpen.core.tasks import load_task as _load

    return _load(spec, task_args)


def _pairing_error(model_is_diffusion: bool) -> ConfigError:
    if model_is_diffusion:
        return ConfigError("a denoising model (digits-ddpm) searches the digits task only (fix: --task digits, "
                           "or a language model with --model)")
    return ConfigError("the digits task needs a denoising model (fix: --model digits-ddpm or a diffusers "
                       "pipeline dir, or a text --task such as gym:chain_sum)")


def check_pairing(model: str, task: str) -> None:
    """Refuse, before anything is loaded, a `--model` and `--task` of different kinds: a denoising
    model with a text task, or a language model (a name, HF id, HF model directory or server) with
    `digits`; a directory that is neither an HF model nor a diffusers pipeline, with `digits`, is
    refused naming the files a pipeline directory lacks."""
    from sharpen.backends.models import diffusion_path, is_diffusion
    from sharpen.search.denoise_task import is_digits_task

    diffusion = is_diffusion(model)
    if is_digits_task(task) and not diffusion:
        p = Path(model).expanduser()
        if p.is_dir() and not (p / "config.json").is_file():
            diffusion_path(model)  # raises: which files are missing
    if diffusion != is_digits_task(task):
        raise _pairing_error(diffusion)


def default_scorer(task: str) -> str:
    """The scorer a search uses when none is named: `x0-reward` for the digits task (the reward of
    the predicted x_0), `self` (the policy's own judgement) for a text task."""
    from sharpen.search.denoise_task import DEFAULT_SCORER, is_digits_task

    return DEFAULT_SCORER if is_digits_task(task) else "self"


def default_algos(task: str) -> str:
    """The algorithms a sweep compares when none are named: on the digits task those that select by
    reward (`check_algorithm`), best-of-N first as the baseline."""
    from sharpen.search.denoise_task import is_digits_task

    return "bon,pf,beam,svdd" if is_digits_task(task) else "vote,bon,beam,mcts,pf"


def check_algorithm(algo: str, task: str) -> None:
    """Refuse `vote` on the digits task: it keeps the most frequent answer, and an image's answer is
    only the class the reward model sees in it, so it would not select by reward."""
    from sharpen.search.denoise_task import is_digits_task

    if algo == "vote" and is_digits_task(task):
        raise ConfigError("vote keeps the most frequent answer, and images are selected by reward (fix: bon, "
                          "which keeps the sample of highest reward, or pf, beam, svdd)")


def make_process(backend, task, settings: SearchSettings | None = None, strict_answers: bool = False):
    """The process that search algorithms talk to: a `DenoiseProcess` for a denoising model with the
    digits task (`sharpen.search.denoise_task.make_denoise_process`), else the language-model process.
    A model of one kind with a task of the other is a one-line ConfigError."""
    from sharpen.backends.diffusion import DigitsDiffusion
    from sharpen.search.denoise_task import DigitsTask, make_denoise_process
    from sharpen.search.process import LMProcess

    if isinstance(backend, DigitsDiffusion) != isinstance(task, DigitsTask):
        raise _pairing_error(isinstance(backend, DigitsDiffusion))
    if isinstance(task, DigitsTask):
        return make_denoise_process(backend, task, settings, strict_answers=strict_answers)
    s = settings or SearchSettings()
    return LMProcess(backend, task, temperature=s.temperature, step_tokens=s.step_tokens,
                     rollout_tokens=s.rollout_tokens, max_depth=s.max_depth, strict_answers=strict_answers,
                     merge_duplicates=s.merge_duplicates)


BUDGET_UNIT = "in the process's unit: generated tokens for a language model, denoiser forwards (NFE) for a denoising process"


class SearchRequest(Options):
    """One search as a user asks for it, under the same names and descriptions everywhere:
    `sharpen search --algo/--scorer/--budget`, a run config's `collect.algo/scorer/budget` and a
    served request's `search` object (whose other keys are the algorithm's options). Each face
    keeps its own defaults; `SearchSpec.checked` then validates the request as a whole."""

    algo: str = Field("mcts", description="search algorithm (`sharpen algos` lists them)")
    scorer: str | None = Field(None, description="the scorer: self, rollout[:k], oracle[:k] (training problems only), "
                               "prm:<path>, implicit:<path>, pav:<path>; x0-reward or mc-reward[:k] on a denoising "
                               "process (`sharpen algos` lists them; a server's: a name it was started with)")
    budget: int = Field(512, ge=1, description=f"budget per problem, the scorer's spend included, {BUDGET_UNIT}")


class SearchCommand(SearchRequest):
    """`sharpen search`'s options beyond the request: which problems are searched."""

    n: int = Field(20, ge=1, description="problems")
    skip: int = Field(0, ge=0, description="skip the split's first SKIP problems (e.g. those a prover policy "
                      "trained on)")
    collect: bool = Field(False, description="search the training split (allows the oracle scorer)")


class SweepRequest(Options):
    """`sharpen sweep`'s options: which searches at which budgets on which problems (`api.sweep`)."""

    algos: str | None = Field(None, min_length=1, description="comma list: algo or algo@scorer, e.g. "
                              "vote,bon@self,mcts@rollout (default: vote,bon,beam,mcts,pf; bon,pf,beam,svdd with "
                              "--task digits)")
    budgets: str = Field("256,512,1024,2048,4096", min_length=1,
                         description=f"comma list of budgets per problem, {BUDGET_UNIT}")
    scorer: str | None = Field(None, description="default scorer for algorithms that need one (default: self, "
                               "x0-reward with --task digits)")
    n: int = Field(100, ge=1, description="problems (held-out: the test split)")
    split: Literal["test", "train"] = Field(
        "test", description="test (held-out) or train: training-split problems, e.g. a validation set with --skip "
        "past those labels were collected on; the oracle scorer (reference answers) is allowed here only")
    skip: int = Field(0, ge=0, description="skip the split's first SKIP problems")


class SearchSpec(BaseModel):
    """One search, as every caller states it. Built from a dict (a caller's raw options, a YAML
    section, an HTTP body, the `model_dump()` a Ray worker receives), `options` is validated into
    the algorithm's own `Options` class, its row counts against `budget` (`AlgorithmEntry.parse`),
    so options travel typed from here on. `SearchSpec.checked` adds the checks a request from a
    user gets (budget, scorer grammar, a scorer that reads reference answers only with `collect`)."""

    model_config = ConfigDict(extra="forbid")

    algorithm: str = Field(description="search algorithm (`sharpen algos` lists them)")
    scorer: str | None = Field(None, description="the scorer as trees record it: a spec such as `rollout:2` "
                               "(a server's: the name it was started with), None for none")
    budget: int = Field(description=f"budget per problem, {BUDGET_UNIT}")
    options: SerializeAsAny[Options] = Field(default_factory=Options, description="the algorithm's options")
    settings: SearchSettings = Field(default_factory=SearchSettings, description="how the process samples steps")
    collect: bool = Field(False, description="training-data collection: scorers that read reference answers allowed")
    strict_answers: bool = Field(False, description="only an `Answer:` line counts as an answer")

    @model_validator(mode="before")
    @classmethod
    def _typed_options(cls, data: Any) -> Any:
        if isinstance(data, dict) and "algorithm" in data:
            entry = get_algorithm(data["algorithm"])
            raw = data.get("options")
            if not isinstance(raw, entry.options):  # a typo or a count over the budget fails here, before any work
                budget = data.get("budget")
                data = {**data, "options": entry.parse(raw, budget if isinstance(budget, int) else None)}
        return data

    @classmethod
    def checked(cls, algorithm: str, scorer: str | None, budget: int, options: dict[str, Any] | None = None,
                settings: SearchSettings | None = None, collect: bool = False, strict_answers: bool = False,
                drop_unused_scorer: bool = True) -> SearchSpec:
        """A spec from a user's request, each problem a one-line ConfigError: the algorithm and its
        options, the budget, the scorer (needed by the algorithm, well-formed, reference answers only
        with `collect`). With `drop_unused_scorer`, an algorithm that needs no scorer gets none."""
        entry = get_algorithm(algorithm)
        typed = entry.parse(options, budget)
        if budget < 1:
            raise ConfigError("--budget must be >= 1 (generated tokens, or NFE for a denoising process) "
                              "(fix: e.g. --budget 512)")
        if entry.needs_scorer and scorer in (None, "none"):
            raise ConfigError(f"{algorithm} needs a scorer (fix: --scorer self, rollout, prm:<path>, or oracle with --collect)")
        if scorer not in (None, "none"):
            parsed = parse_scorer(scorer)
            check_counts(parsed.options, f"scorer {parsed.name}", budget)
            if parsed.entry.collect_only and not collect:
                raise ConfigError(
                    f"the {parsed.name} scorer reads reference answers, so it may only be used to collect training data "
                    "(fix: pass --collect, which searches the training split, or choose another --scorer)")
        if drop_unused_scorer and not entry.needs_scorer:
            scorer = None
        return cls(algorithm=algorithm, scorer=scorer, budget=budget, options=typed,
                   settings=settings or SearchSettings(), collect=collect, strict_answers=strict_answers)

    @property
    def entry(self) -> AlgorithmEntry:
        return get_algorithm(self.algorithm)

    def process(self, backend: Any, task: Any) -> Any:
        """The process this spec searches (`make_process`): its settings and `strict_answers`."""
        return make_process(backend, task, self.settings, strict_answers=self.strict_answers)

    def make_scorer(self, process: Any) -> Any:
        """This spec's scorer over `process` (None for none)."""
        from sharpen.search.scorers import make_scorer

        return make_scorer(self.scorer, process, collect=self.collect)

    def tree(self, process: Any, scorer: Any, problem: Any, seed: int) -> Any:
        """One problem searched (`sharpen.search.collect.search_tree`); no ground truth is read."""
        from sharpen.search.collect import search_tree

        return search_tree(self.entry, self.options, process, scorer, problem, self.budget, seed, self.scorer)


def execute(spec: SearchSpec, process: Any, problems: list, scorer: Any = None, seed: int = 0,
            out_jsonl: str | Path | None = None, on_progress: Callable[[int], None] | None = None,
            split: str | None = None, batch_meter: Any = None, parallel: int | None = None,
            compact_states: bool = True) -> list:
    """Search every problem with `spec` on `process` and `scorer` (`spec.make_scorer(process)`),
    `parallel` problems at once (default `spec.settings.parallel`): `search_problems`, which labels
    the trees, appends them to `out_jsonl` and resumes from it. A denoising process's finished trees
    keep only their terminals' x_0 (`sharpen.search.denoise_task.compact`), in `out_jsonl` too, unless
    `compact_states` is false (step pairs need the inner states). Returns the trees in problem order."""
    from sharpen.search.collect import search_problems
    from sharpen.search.denoise_task import compact, is_denoise_process

    trees = search_problems(process, scorer, spec.algorithm, problems, spec.budget, seed=seed, out_jsonl=out_jsonl,
                            algo_args=spec.options, on_progress=on_progress,
                            parallel=spec.settings.parallel if parallel is None else parallel, split=split,
                            scorer_spec=spec.scorer, batch_meter=batch_meter)
    return compact(trees, out_jsonl) if compact_states and is_denoise_process(process) else trees
