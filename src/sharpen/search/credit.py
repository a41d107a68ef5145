"""Step credit: pure functions from a search tree to a value per step and an advantage per step.

- Monte Carlo rollout values (Math-Shepherd, Wang et al. 2023, arXiv 2312.08935): the value of a
  step is the share of k completions from it that reach the reference answer. Search with the
  oracle scorer does the rollouts and stores that share in `node.score`; `mc_values` reads it and
  falls back to the tree's own verified terminals when a node has no score.
- OmegaPRM's binary search (Luo et al. 2024, arXiv 2406.06592): the first wrong step of a failed
  solution in O(log n) Monte Carlo estimates, `first_wrong_step`.
- MCTS Q-values (`node.q`): the mean backed-up value, `q_values`.
- Advantages as progress (PAV, Setlur et al. 2024, arXiv 2410.08146): A(s_h) = V(s_h) - V(s_{h-1}),
  the value after a step minus the value before it, `advantages`.

No function here touches a model: everything reads a `Tree`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from sharpen.core.errors import ConfigError
from sharpen.core.tree import Node, Tree

LABEL_THRESHOLD = 0.5
"""A step's label is value >= this (`sharpen build labels --threshold`, a run's build.label_threshold)."""

ValueSource = Literal["mc", "q", "score", "value"]
VALUE_SOURCES: tuple[str, ...] = ("mc", "q", "score", "value")


def rollout_value(correct: Sequence[bool]) -> float:
    """Math-Shepherd's soft estimate: the share of k rollouts from a step that reach the answer."""
    if not correct:
        raise ConfigError("rollout_value needs at least one rollout (fix: k >= 1)")
    return sum(bool(c) for c in correct) / len(correct)


def _terminal_correctness(tree: Tree) -> dict[int, list[float]]:
    """For each node, the correctness (1.0 / 0.0) of every verified terminal in its subtree."""
    below: dict[int, list[float]] = {n.id: [] for n in tree.nodes}
    for n in tree.nodes:
        if n.terminal and n.correct is not None:
            c = 1.0 if n.correct else 0.0
            m: Node | None = n
            while m is not None:
                below[m.id].append(c)
                m = tree.nodes[m.parent] if m.parent is not None else None
    return below


def is_verifier_spec(scorer: str | None) -> bool:
    """Whether a scorer spec names the task's verifier (`oracle[:k]`): its values are Monte Carlo
    estimates of correctness, not a learned or self-judged guess. None (no scorer recorded) is not."""
    return isinstance(scorer, str) and scorer.split(":", 1)[0] == "oracle"


def scores_are_monte_carlo(tree: Tree) -> bool:
    """The one rule for reading `node.score` as a Monte Carlo value: only when the tree records that
    the oracle scorer made its scores (the share of k verified rollouts). The `self` scorer's P(Yes),
    a PRM's output or rollout agreement are guesses, not evidence; a tree that records no scorer
    (written before trees recorded one) is not trusted either."""
    return is_verifier_spec(tree.scorer)


def mc_values(tree: Tree) -> dict[int, float]:
    """Monte Carlo value of every node that has one, root included.

    - a verified terminal: 1.0 if correct else 0.0 (its rollouts can only reach its own answer);
    - else the oracle scorer's `node.score` (the share of k rollouts that reached the answer), when
      `scores_are_monte_carlo(tree)`;
    - else the mean correctness of the verified terminals in its subtree;
    - else no entry (the node has no evidence either way).
    """
    below = _terminal_correctness(tree)
    trust_scores = scores_are_monte_carlo(tree)
    out: dict[int, float] = {}
    for n in tree.nodes:
        if n.terminal and n.correct is not None:
            out[n.id] = 1.0 if n.correct else 0.0
        elif trust_scores and n.score is not None:
            out[n.id] = float(n.score)
        elif below[n.id]:
            out[n.id] = sum(below[n.id]) / len(below[n.id])
    return out


def q_values(tree: Tree) -> dict[int, float]:
    """MCTS Q = value_sum / visits for every visited node."""
    return {n.id: q for n in tree.nodes if (q := n.q) is not None}


def score_values(tree: Tree) -> dict[int, float]:
    """The scorer's value (`node.score`) for every scored node."""
    return {n.id: float(n.score) for n in tree.nodes if n.score is not None}


def node_values(tree: Tree) -> dict[int, float]:
    """`node.value`: Q when visited, else the scorer's score."""
    return {n.id: float(v) for n in tree.nodes if (v := n.value) is not None}


def values(tree: Tree, source: ValueSource = "mc") -> dict[int, float]:
    """Step values by name: "mc" (Monte Carlo, with fallbacks), "q" (MCTS), "score", "value"."""
    if source == "mc":
        return mc_values(tree)
    if source == "q":
        return q_values(tree)
    if source == "score":
        return score_values(tree)
    if source == "value":
        return node_values(tree)
    raise ConfigError(f"unknown value source {source!r} (fix: one of {', '.join(VALUE_SOURCES)})")


def advantages(tree: Tree, vals: dict[int, float] | None = None) -> dict[int, float]:
    """PAV's progress A(s_h) = V(s_h) - V(s_{h-1}) for every non-root node whose value and whose
    parent's value are both known. `vals` defaults to `mc_values(tree)`."""
    vals = mc_values(tree) if vals is None else vals
    out: dict[int, float] = {}
    for n in tree.nodes:
        if n.parent is not None and n.id in vals and n.parent in vals:
            out[n.id] = vals[n.id] - vals[n.parent]
    return out


def first_wrong_step(
    steps: Sequence[str],
    value_fn: Callable[[int], float],
    threshold: float = 0.0,
    known_wrong: bool = False,
) -> int | None:
    """OmegaPRM's binary search for the first wrong step (Luo et al. 2024, Alg. 1 "BinarySearch").

    `value_fn(h)` is the Monte Carlo value of the prefix made of the first h steps (h = 0 is the
    question alone). A step is wrong when the value after it is <= `threshold`; as in the paper, once
    a prefix has value 0 every longer one is assumed to have value 0 too, so the first wrong step is
    found with ceil(log2 n) calls (+1 to check the full solution unless `known_wrong`).

    Returns the 0-based index of the first wrong step, or None when the full solution is not wrong.
    """
    n = len(steps)
    if n == 0:
        return None
    cache: dict[int, float] = {}

    def v(h: int) -> float:
        if h not in cache:
            cache[h] = value_fn(h)
        return cache[h]

    if not known_wrong and v(n) > threshold:
        return None
    lo, hi = 0, n  # invariant: prefix `lo` is fine (value > threshold), prefix `hi` is wrong
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if v(mid) > threshold:
            lo = mid
        else:
            hi = mid
    return hi - 1


def path_value_fn(tree: Tree, node_id: int, vals: dict[int, float] | None = None) -> Callable[[int], float]:
    """A `value_fn` for `first_wrong_step` along the path to `node_id`, read from tree values.
    Prefix 0 is the root; a prefix whose node has no value reads 0.0."""
    vals = mc_values(tree) if vals is None else vals
    ids = [0] + [n.id for n in tree.path(node_id)]

    def value_fn(h: int) -> float:
        return vals.get(ids[h], 0.0)

    return value_fn
