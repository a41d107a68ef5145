"""`x0-reward` and `mc-reward[:k]`: values of a denoising process's states (`sharpen.search.denoise`)
from its reward (the process's `reward`: the classifier's probability of the target class, the
realism of the image, or their product).

- `x0-reward`: the reward of the denoiser's predicted x_0 at the node, E[x_0 | x_t] (SVDD's
  posterior-mean value, SVDD-PM, Li et al. 2024, arXiv 2408.08252): one denoiser forward (one NFE;
  none when the tree has the node's noise prediction already, and the step from the node then
  reuses this one) and one reward call per inner node; a terminal's value is its x_0's reward, free.
- `mc-reward:k`: the mean reward of k denoisings of the node to x_0 (a Monte Carlo value; SVDD's
  MC variant, SVDD-MC): up to k x the reverse steps left in NFE, k reward calls.

The root (no image yet) is valued at the process's `prior_reward`. Values are in [0, 1]. Both work
only on a `DenoiseProcess`.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from sharpen.core.budget import Budget, allowed_rows
from sharpen.core.errors import ConfigError
from sharpen.core.tree import Tree
from sharpen.search.denoise import DenoiseProcess
from sharpen.search.process import Process
from sharpen.search.registry import MAX_ROWS, Options
from sharpen.search.registry import scorer as register_scorer
from sharpen.search.scorers.common import ForkableScorer, Scorer, rollouts_cost, unscored


def _check(process: Process, name: str) -> DenoiseProcess:
    if not isinstance(process, DenoiseProcess):
        raise ConfigError(f"the {name} scorer works only on a denoising process (fix: choose another --scorer)")
    return process


def _clip(v: float) -> float:
    return min(1.0, max(0.0, float(v)))


class X0RewardScorer(ForkableScorer):
    """The reward of the predicted x_0 (posterior mean) at each node: one NFE per inner node."""

    name = "x0-reward"

    def __init__(self, process: DenoiseProcess):
        self.process = process

    def cost(self, terminal: bool, budget: Budget | None = None) -> float:
        if terminal:
            return 0
        return budget.expected("judge", 1) if budget is not None else 1

    def score(self, tree: Tree, node_ids: list[int], budget: Budget | None = None) -> list[float | None]:
        todo = unscored(tree, node_ids)
        free = [n for n in todo if tree.nodes[n].terminal or "k" not in tree.nodes[n].meta]
        paid = [n for n in todo if n not in free]
        paid = paid[: allowed_rows(budget, len(paid), 1, "judge")]
        for n, v in zip(free + paid, self.process.x0_rewards(tree, free + paid), strict=True):
            tree.nodes[n].score = _clip(v)
        return [tree.nodes[n].score for n in node_ids]


class MCRewardScorer(ForkableScorer):
    """The mean reward of k denoisings of each node to x_0."""

    name = "mc-reward"

    def __init__(self, process: DenoiseProcess, k: int = 4):
        self.process = process
        self.k = k

    def cost(self, terminal: bool, budget: Budget | None = None) -> float:
        return rollouts_cost(self.k, self.process, terminal, budget)

    def score(self, tree: Tree, node_ids: list[int], budget: Budget | None = None) -> list[float | None]:
        todo = unscored(tree, node_ids)
        for n in todo:
            node = tree.nodes[n]
            if node.terminal:
                node.score = _clip(node.meta["reward"])
            elif "k" not in node.meta:
                node.score = self.process.prior_reward
        inner = [n for n in todo if tree.nodes[n].score is None]
        for n, rewards in zip(inner, self.process.rollout_rewards(tree, inner, self.k, budget), strict=True):
            if rewards:
                tree.nodes[n].score = _clip(sum(rewards) / len(rewards))
                tree.nodes[n].meta["mc_rewards"] = [round(r, 6) for r in rewards]
        return [tree.nodes[n].score for n in node_ids]


class X0RewardOptions(Options):
    pass


class MCRewardOptions(Options):
    positional: ClassVar[tuple[str, ...]] = ("k",)
    counts: ClassVar[tuple[str, ...]] = ("k",)
    k: int = Field(4, ge=1, le=MAX_ROWS, description="denoisings to x_0 per scored node")


@register_scorer("x0-reward", X0RewardOptions)
def _x0_reward(process: Process, o: X0RewardOptions, collect: bool) -> Scorer:
    """Reward of the denoiser's predicted x_0 (SVDD's posterior-mean value; a denoising process)."""
    return X0RewardScorer(_check(process, "x0-reward"))


@register_scorer("mc-reward", MCRewardOptions)
def _mc_reward(process: Process, o: MCRewardOptions, collect: bool) -> Scorer:
    """Mean reward of k denoisings to x_0 (a Monte Carlo value; a denoising process)."""
    return MCRewardScorer(_check(process, "mc-reward"), o.k)
