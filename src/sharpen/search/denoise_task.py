"""The `digits` task: what `sharpen search` and `sharpen sweep` run a denoising process on, with
`--model digits-ddpm` (or a diffusers pipeline directory, `sharpen.backends.models.check_pipeline`) and `--task digits`.

A problem is "draw the digit c" (`sharpen.search.denoise.problems`: c uniform in 0..classes-1, by
split, n and seed); the process is DDPM ancestral sampling (Ho et al. 2020, arXiv 2006.11239) searched
step by step (`DenoiseProcess`), and a sample is correct when the reward classifier's class of its
x_0 is c. Beside that accuracy (the target-class share) a search reports the mean reward of the
chosen x_0 (by default the classifier's probability of c; Li et al. 2024, SVDD, arXiv 2408.08252,
measure search by the reward), the share of searches that chose an x_0, the diversity of the chosen
x_0 and the denoiser forwards spent (NFE), the unit its budget is in.

Task arguments (`--task-arg key=value`): `steps` (reverse steps from T to 0, one NFE each per row),
`classes` (the target classes drawn) and `reward` (`DenoiseProcess`'s `reward`, one of its
`REWARDS`). The language-model settings (temperature, step and rollout tokens, depth, merged
duplicates, strict answers) do not apply to it and are refused when set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from sharpen.core.errors import ConfigError
from sharpen.core.tasks import Problem, Split, Task
from sharpen.core.tree import Tree
from sharpen.search.registry import Options

DIGITS_TASK = "digits"
DEFAULT_SCORER = "x0-reward"  # the value a scorer-guided search of a denoising process uses by default
# SearchSettings fields that shape a language model's steps only
LM_SETTINGS = ("temperature", "step_tokens", "rollout_tokens", "max_depth", "merge_duplicates")


def is_digits_task(spec: str) -> bool:
    """Whether a `--task` spec names the digits task."""
    return spec.strip() == DIGITS_TASK


class DigitsTaskOptions(Options):
    """The digits task's `--task-arg`s."""

    steps: int = Field(50, ge=1, le=1000, description="reverse steps of the DDPM sampler from T to 0 (each one "
                       "denoiser forward of a row: a whole sample costs `steps` NFE)")
    classes: int = Field(10, ge=2, le=10, description="target classes: problems draw c uniformly from 0..classes-1")
    reward: str | None = Field(None, description="the denoising process's reward (`DenoiseProcess`'s `reward`; "
                               "default: its own)")


class DigitsTask(Task):
    """Problems "draw the digit c" and their verifier: the answer (the class of x_0) equals c."""

    name = DIGITS_TASK

    def __init__(self, **args: Any):
        self.options: DigitsTaskOptions = DigitsTaskOptions.parse(args, "task digits (--task-arg)")  # type: ignore[assignment]

    def problems(self, split: Split, n: int, seed: int = 0) -> list[Problem]:
        from sharpen.search.denoise import problems

        return problems(split, n, seed, classes=self.options.classes)

    def messages(self, problem: Problem) -> list[dict[str, str]]:
        raise ConfigError("the digits task has no prompt for a language model (fix: --model digits-ddpm)")

    def verify(self, problem: Problem, answer: str | None) -> bool:
        return answer is not None and answer == problem.answer


def make_denoise_process(model: Any, task: DigitsTask, settings: Any = None, strict_answers: bool = False) -> Any:
    """The `DenoiseProcess` over a loaded digits-ddpm `model` for `task`: its `steps` and, when set,
    its `reward`. A one-line ConfigError for a language-model setting changed from its default (it
    would be ignored), or more target classes than the model's classifier knows."""
    from sharpen.search.denoise import DenoiseProcess
    from sharpen.search.process import SearchSettings

    if settings is not None:
        default = SearchSettings()
        changed = [f for f in LM_SETTINGS if getattr(settings, f) != getattr(default, f)]
        if changed:
            flag = "--" + changed[0].replace("_", "-")
            raise ConfigError(f"{flag} shapes a language model's steps and does not apply to a denoising process "
                              "(fix: drop it; the sampler's steps are --task-arg steps=N)")
    if strict_answers:
        raise ConfigError("strict answers apply to a language model's text, not a denoising process (fix: drop it)")
    o = task.options
    known = int(model.weight.shape[0])
    if o.classes > known:
        raise ConfigError(f"--task-arg classes={o.classes}: the model's classifier knows {known} classes "
                          f"(fix: classes <= {known})")
    return DenoiseProcess(model, steps=o.steps, **({} if o.reward is None else {"reward": o.reward}))


def is_denoise_process(process: Any) -> bool:
    from sharpen.search.denoise import DenoiseProcess

    return isinstance(process, DenoiseProcess)


def chosen_reward(tree: Tree) -> float:
    """The reward of the tree's chosen x_0; 0 when the search chose none or stopped before x_0 (as
    accuracy counts such a tree wrong)."""
    node = tree.nodes[tree.chosen[-1]] if tree.chosen else None
    return float(node.meta["reward"]) if node is not None and node.terminal and "reward" in node.meta else 0.0


def finished(tree: Tree) -> bool:
    """Whether the search chose an x_0 (a terminal); a stepwise search stopped by its budget chooses
    an inner state, whose answer is the class of its predicted x_0."""
    return bool(tree.chosen) and tree.nodes[tree.chosen[-1]].terminal


def denoise_metrics(trees: list[Tree]) -> dict[str, Any]:
    """What a denoising search is measured by beside accuracy: the mean reward of the chosen x_0 with
    its bootstrap 95% interval, the share of searches that chose an x_0 (`finished`), the diversity of
    the chosen x_0 within a target class (`sharpen.search.denoise.diversity`; None with fewer than
    two per class), the NFE (mean, max) and reward calls spent per problem, and for particle filtering
    the mean effective sample size over its resampling decisions (`mean_ess`; None for other algorithms)."""
    from sharpen.core.stats import bootstrap_ci
    from sharpen.search.denoise import diversity

    n = max(1, len(trees))
    rewards = [chosen_reward(t) for t in trees]
    nfe = [int(t.usage.get("nfe", 0)) for t in trees]
    lo, hi = bootstrap_ci(rewards)
    ess = [e for t in trees for e in t.meta.get("ess", []) if e is not None]
    return {"budget_unit": "nfe", "mean_ess": sum(ess) / len(ess) if ess else None, "mean_reward": sum(rewards) / n, "mean_reward_ci95": [lo, hi],
            "finished": sum(finished(t) for t in trees) / n, "diversity": diversity(trees),
            "mean_nfe": sum(nfe) / n, "max_nfe": max(nfe, default=0),
            "mean_reward_calls": sum(int(t.usage.get("reward_calls", 0)) for t in trees) / n}


def summary_rows(m: dict[str, Any]) -> list[list[str]]:
    """A denoising search's metrics (`search_metrics` and `denoise_metrics`) as a header and rows."""
    lo, hi = m["accuracy_ci95"]
    rlo, rhi = m["mean_reward_ci95"]
    div = m.get("diversity")
    return [["metric", "value"], ["accuracy (target class)", f"{m['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]"],
            ["mean reward of the chosen x_0", f"{m['mean_reward']:.3f} [{rlo:.3f}, {rhi:.3f}]"],
            ["chose an x_0 (finished)", f"{m['finished']:.3f}"],
            ["diversity (same-class L2)", "-" if div is None else f"{div:.3f}"],
            *([["pf's mean effective sample size", f"{m['mean_ess']:.2f}"]] if m.get("mean_ess") is not None else []),
            ["mean NFE (denoiser forwards)", f"{m['mean_nfe']:.0f}"], ["max NFE", f"{m['max_nfe']}"],
            ["mean reward calls", f"{m['mean_reward_calls']:.0f}"], ["mean nodes / tree", f"{m['mean_nodes']:.1f}"]]


def compact(trees: list[Tree], jsonl: str | Path | None = None) -> list[Tree]:
    """Keep only the terminals' x_0 in each finished tree (`sharpen.search.denoise.strip_states`),
    and rewrite `jsonl` (the trees file a search appended to, other problems' trees included) the
    same way when any of its trees still holds an inner state. Returns `trees`."""
    from sharpen.core.io import read_jsonl, write_jsonl
    from sharpen.search.denoise import strip_states

    for t in trees:
        strip_states(t)
    if jsonl is None or not Path(jsonl).is_file():
        return trees
    rows = list(read_jsonl(jsonl))
    if any("x" in n.get("meta", {}) and not n.get("terminal") for r in rows for n in r.get("nodes", [])):
        write_jsonl(jsonl, [strip_states(Tree.from_dict(r)).to_dict() for r in rows])
    return trees
