"""`rollout[:k][:pool]`: Monte Carlo value without ground truth, the share of k completions from a
node that agree with their own (or the tree's pooled) majority answer: self-consistency as a value."""

from __future__ import annotations

from collections import Counter
from typing import ClassVar

from pydantic import Field

from sharpen.core.budget import Budget
from sharpen.core.tree import Tree
from sharpen.search.process import Process
from sharpen.search.registry import MAX_ROWS, Options
from sharpen.search.registry import scorer as register_scorer
from sharpen.search.scorers.common import ForkableScorer, Scorer, rollouts_cost, unscored


def majority_share(keys: list[str | None]) -> float:
    """Share of `keys` equal to their most common non-None key (0 when there is none)."""
    counts = Counter(k for k in keys if k is not None)
    return counts.most_common(1)[0][1] / len(keys) if counts and keys else 0.0


class RolloutScorer(ForkableScorer):
    """Monte Carlo value without ground truth from k completions of the node.

    `pool=False`: value = share of the k completions agreeing with their own majority answer; a
    terminal node is its own only completion (1 when it has an answer, else 0).
    `pool=True`: the majority is taken over every completion made so far in this tree (the
    self-consistency answer so far, `tree.meta["rollout_answers"]`, terminal answers included), so nodes whose rollouts agree
    with the tree's consensus score high, and a terminal node scores the share of the pool that
    agrees with its answer. Own-majority agreement rewards low-entropy states and gives every
    terminal 1; the pool fixes both."""

    name = "rollout"

    def __init__(self, process: Process, k: int = 4, pool: bool = False):
        self.process = process
        self.k = k
        self.pool = pool

    def cost(self, terminal: bool, budget: Budget | None = None) -> float:
        return rollouts_cost(self.k, self.process, terminal, budget)

    def score(self, tree: Tree, node_ids: list[int], budget: Budget | None = None) -> list[float | None]:
        todo = unscored(tree, node_ids)
        inner = [n for n in todo if not tree.nodes[n].terminal]
        results = self._rollouts(tree, inner, budget)
        if self.pool:
            pooled = tree.meta.setdefault("rollout_answers", [])
            pooled += [self.process.vote_key(r.answer) for rolls in results for r in rolls]
            pooled += [self.process.vote_key(tree.nodes[n].answer) for n in todo if tree.nodes[n].terminal]
        for n in todo:
            if tree.nodes[n].terminal:
                tree.nodes[n].score = self._terminal_value(tree, n)
        for n, rolls in zip(inner, results, strict=True):
            if rolls:
                tree.nodes[n].score = self._value(tree, rolls)
                tree.nodes[n].meta["rollouts"] = [r.answer for r in rolls]
        return [tree.nodes[n].score for n in node_ids]

    def _rollouts(self, tree: Tree, node_ids: list[int], budget: Budget | None) -> list:
        return self.process.rollout(tree, node_ids, self.k, budget)

    def _terminal_value(self, tree: Tree, n: int) -> float:
        key = self.process.vote_key(tree.nodes[n].answer)
        if key is None:
            return 0.0
        pooled = tree.meta.get("rollout_answers") if self.pool else None
        return pooled.count(key) / len(pooled) if pooled else 1.0

    def _value(self, tree: Tree, rolls) -> float:
        keys = [self.process.vote_key(r.answer) for r in rolls]
        pooled = tree.meta.get("rollout_answers") if self.pool else None
        if not pooled:
            return majority_share(keys)
        top = Counter(k for k in pooled if k is not None).most_common(1)
        return sum(k == top[0][0] for k in keys) / len(keys) if top else 0.0


class RolloutOptions(Options):
    positional: ClassVar[tuple[str, ...]] = ("k",)
    counts: ClassVar[tuple[str, ...]] = ("k",)
    k: int = Field(4, ge=1, le=MAX_ROWS, description="completions per scored node")
    pool: bool = Field(False, description="agreement with the tree's pooled majority instead of the node's own")


@register_scorer("rollout", RolloutOptions)
def _rollout(process: Process, o: RolloutOptions, collect: bool) -> Scorer:
    """Agreement of k Monte Carlo completions (self-consistency as a value; no ground truth)."""
    return RolloutScorer(process, o.k, o.pool)
