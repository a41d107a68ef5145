"""What every scorer shares: the `Scorer` protocol, aggregating a path's step scores, the nodes
still to score, calls through a process's lockstep batcher, and reading a trained policy's directory."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, Protocol

from sharpen.core.budget import Budget
from sharpen.core.tree import Tree
from sharpen.search.process import Process


class Scorer(Protocol):
    name: str

    def score(self, tree: Tree, node_ids: list[int], budget: Budget | None = None) -> list[float | None]:
        """Values in [0, 1] for `node_ids` (duplicates allowed), also written to `node.score`."""

    def cost(self, terminal: bool, budget: Budget | None = None) -> float:
        """The generated tokens scoring one (terminal or inner) node is expected to spend: at the row
        costs measured so far in `budget`'s search, or at their maximum without one. Algorithms
        leave room in the budget to score what they generate."""


AGGREGATIONS = ("last", "min", "prod", "mean")
PROMPTS_KEPT = 256
"""Tokenized prompts a scorer keeps (least recently used dropped first): far more than the searches in
flight, bounded for a server that sees a new prompt with every request."""


Aggregation = Literal["last", "min", "prod", "mean"]


def aggregate(step_scores: list[float], how: str) -> float:
    """One value for a path from its steps' scores (search-and-learn's PRM aggregation): the last
    step's, the smallest, the product or the mean."""
    if not step_scores:
        return 0.0
    if how == "last":
        return step_scores[-1]
    if how == "min":
        return min(step_scores)
    if how == "prod":
        return math.prod(step_scores)
    return sum(step_scores) / len(step_scores)


def call_batched(process: Process, key, fn, items: list) -> list:
    """`fn(items)` through the process's `batched` (merged with other searches' calls under lockstep
    batching) when it has one, else directly."""
    batched = getattr(process, "batched", None)
    return batched(key, fn, items) if batched else fn(items)


class ForkableScorer:
    """`bind(process)`: the same scorer on another process (one search's fork under lockstep batching)."""

    process: Process

    def bind(self, process: Process):
        import copy

        s = copy.copy(self)
        s.process = process
        return s


def rollouts_cost(k: int, process: Process, terminal: bool, budget: Budget | None = None) -> float:
    """What scoring a node by `k` rollouts to the end is expected to cost (nothing for a terminal)."""
    if terminal:
        return 0
    row = process.rollout_tokens
    return k * (budget.expected("answer", row) if budget is not None else row)


def unscored(tree: Tree, node_ids: list[int]) -> list[int]:
    """The nodes of `node_ids` without a score yet, each once, in their first order."""
    return list(dict.fromkeys(n for n in node_ids if tree.nodes[n].score is None))


def policy_and_base(path: Path) -> tuple[Path, str | None]:
    """A trained policy's weights (`out/merged` of `sharpen train`, or the dir itself) and the base
    model it was trained from (its sharpen_train.json's `config.model`), when recorded."""
    import json

    out = path.parent if path.name == "merged" else path
    policy = out / "merged" if (out / "merged" / "config.json").exists() else path
    summary = out / "sharpen_train.json"
    base = None
    if summary.exists():
        try:
            base = json.loads(summary.read_text()).get("config", {}).get("model")
        except (ValueError, AttributeError):
            base = None
    return policy, base
