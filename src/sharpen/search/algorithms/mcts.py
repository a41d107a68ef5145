"""Monte Carlo tree search over steps with PUCT selection (AlphaZero's rule, Silver et al. 2017), as
used for reasoning in MCTS-DPO (Xie et al. 2024, arXiv 2405.00451) and rStar-Math (Guan et al.
2025, arXiv 2501.04519).

    repeat until the budget is spent or every leaf is terminal:
        1. select:   from the root, go to the child maximising
                         Q(s,a) + c_puct * P(s,a) * sqrt(N(s)) / (1 + N(s,a))
                     until an unexpanded or terminal node s_L
        2. expand:   s_L gets k children, P = the step's policy probability among its siblings
        3. evaluate: v = scorer(child), or with evaluate="rollout" the scorer's value of one
                     completion from the child to a terminal (attached to the tree, meta.rollout)
        4. backup:   every node on the path gets N += 1 and W += v per evaluated child;
                     Q = W / N  (node.visits, node.value_sum)
                     a terminal child is backed up this once and then closed: selection never
                     returns to a finished solution, so the budget goes to unexplored nodes
    answer: descend from the root by most visits (final="visits") or best Q (final="value")

Progressive widening: a node whose children are all terminal or exhausted gets k more children
(up to `max_children`) instead of being closed, so budget left over when short problems end in
one step still buys search (the tree grows wider where it cannot grow deeper).

Visit counts add up: an expanded node's visits = (1 if it was itself evaluated, i.e. is not the
root) + its step children's visits; a terminal has exactly 1 (or 0 if never scored).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from sharpen.core.tasks import Problem
from sharpen.core.tree import Tree
from sharpen.search.algorithms.common import finish, need_scorer, open_search, plan, value
from sharpen.search.process import Process, require_logprobs
from sharpen.search.registry import MAX_ROWS, Options, algorithm


class MCTSOptions(Options):
    counts = ("k",)
    k: int = Field(4, ge=1, le=MAX_ROWS, description="candidate steps per expansion")
    c_puct: float = Field(1.0, ge=0, description="exploration constant of PUCT")
    evaluate: Literal["scorer", "rollout"] = Field(
        "scorer", description="value a new child by the scorer, or by the scorer's value of one completion from it")
    final: Literal["visits", "value"] = Field("visits", description="descend from the root by most visits or best Q")
    max_iters: int = Field(10_000, ge=1, description="selection-expansion iterations at most")
    max_children: int | None = Field(None, ge=1, le=4 * MAX_ROWS, description="progressive widening cap per node (default 4 x k)")
    priors: Literal["policy", "uniform"] = Field(
        "policy", description="PUCT prior of a child: the policy's (length-normalised) step probability, or "
        "uniform over siblings (for a server backend that returns no log-probabilities)")


def step_children(tree: Tree, node_id: int) -> list[int]:
    """Children that are steps of the search (rollout completions excluded)."""
    return [c for c in tree.nodes[node_id].children if not tree.nodes[c].meta.get("rollout")]


def puct(tree: Tree, parent: int, child: int, c_puct: float, uniform: bool = False) -> float:
    s, a = tree.nodes[parent], tree.nodes[child]
    q = a.q if a.visits else 0.0
    prior = 1.0 / max(1, len(step_children(tree, parent))) if uniform else a.prior
    return q + c_puct * prior * math.sqrt(s.visits) / (1 + a.visits)


@algorithm("mcts", MCTSOptions)
def mcts(process: Process, scorer, problem: Problem, budget_tokens: int, seed: int, **options) -> Tree:
    """Monte Carlo tree search over steps with PUCT selection (MCTS-DPO, rStar-Math)."""
    o = MCTSOptions.parse(options, "algorithm mcts")
    k, c_puct, evaluate, final = o.k, o.c_puct, o.evaluate, o.final
    scorer = need_scorer(scorer, "mcts")
    if o.priors == "policy":
        require_logprobs(process, "mcts's PUCT priors (the policy's step probabilities)")
    tree, budget = open_search(process, problem, budget_tokens, seed, "mcts")
    closed: set[int] = set()  # finished solutions and subtrees with nothing left to expand
    max_children = 4 * k if o.max_children is None else max(k, o.max_children)
    max_iters = o.max_iters

    for _ in range(max_iters):
        if budget.exhausted or tree.root.id in closed:
            break
        # 1. select
        path = [tree.root.id]
        while True:
            kids = [c for c in step_children(tree, path[-1]) if c not in closed]
            if not kids or tree.nodes[path[-1]].terminal:
                break
            if all(tree.nodes[c].terminal for c in kids) and len(step_children(tree, path[-1])) < max_children:
                break  # only finished solutions below: widen here
            parent = path[-1]
            path.append(max(kids, key=lambda c, p=parent: puct(tree, p, c, c_puct, o.priors == "uniform")))
        leaf = tree.nodes[path[-1]]
        if leaf.terminal:  # only the root can be reached terminal: children close when backed up
            closed.add(leaf.id)
            _close(tree, closed, path, max_children)
            continue
        if len(step_children(tree, leaf.id)) >= max_children:  # expanded, every child closed
            _close(tree, closed, path, max_children)
            continue
        # 2. expand
        rows = {"step": process.step_tokens} | ({"answer": process.rollout_tokens} if evaluate == "rollout" else {})
        leaves, kk = plan(budget, scorer, [leaf.id], k, rows, terminal=evaluate == "rollout")
        if not leaves:
            break
        kk = min(kk, max_children - len(step_children(tree, leaf.id)))
        before = set(step_children(tree, leaf.id))
        landed = process.expand(tree, leaves, kk, budget)[0]
        if not landed:
            break
        new = [c for c in landed if c not in before]  # a duplicate of a child is no new evidence
        if not new:
            _close(tree, closed, path, max_children)
            continue
        # 3. evaluate
        if evaluate == "rollout":
            vals = _rollout_values(process, tree, scorer, new, budget)
        else:
            vals = scorer.score(tree, new, budget)
        values = []
        for c, v in zip(new, vals, strict=True):
            if v is not None:
                tree.nodes[c].visits, tree.nodes[c].value_sum = 1, v
                values.append(v)
            if tree.nodes[c].terminal:
                closed.add(c)  # backed up once, below, and never selected again
        # 4. backup
        for n in path:
            tree.nodes[n].visits += len(values)
            tree.nodes[n].value_sum += sum(values)
        _close(tree, closed, path, max_children)

    chosen = _final(tree, final)
    return finish(process, tree, budget, chosen)


def _rollout_values(process: Process, tree: Tree, scorer, new: list[int], budget) -> list[float | None]:
    """Terminal children are scored as they are; the others by the score of one completion from
    them to the end, attached to the tree and marked `meta["rollout"]` (selection ignores it)."""
    stands_for: dict[int, int | None] = {c: c for c in new}
    inner = [c for c in new if not tree.nodes[c].terminal]
    for c, sims in zip(inner, process.complete(tree, inner, 1, budget), strict=True):
        stands_for[c] = sims[0] if sims else None
        for s in sims:
            tree.nodes[s].meta["rollout"] = True
    scorer.score(tree, [t for t in stands_for.values() if t is not None], budget)
    return [None if stands_for[c] is None else tree.nodes[stands_for[c]].score for c in new]


def _close(tree: Tree, closed: set[int], path: list[int], max_children: int) -> None:
    """Close, bottom-up, nodes that cannot widen further and whose every step child is terminal
    or closed."""
    for n in reversed(path):
        kids = step_children(tree, n)
        if len(kids) >= max_children and all(tree.nodes[c].terminal or c in closed for c in kids):
            closed.add(n)
        else:
            break


def _final(tree: Tree, final: str) -> int | None:
    def rank(c: int) -> tuple[float, float]:
        node = tree.nodes[c]
        q = node.q if node.visits else (node.score or 0.0)
        return (node.visits, q) if final == "visits" else (q, node.visits)

    n = tree.root.id
    while not tree.nodes[n].terminal and step_children(tree, n):
        n = max(step_children(tree, n), key=rank)
    if tree.nodes[n].terminal:
        return n
    below = [t for t in _subtree(tree, n) if tree.nodes[t].terminal] or [t.id for t in tree.terminals()]
    return max(below, key=lambda t: value(tree, t)) if below else (n if n != tree.root.id else None)


def _subtree(tree: Tree, n: int) -> list[int]:
    out, stack = [], [n]
    while stack:
        x = stack.pop()
        out.append(x)
        stack.extend(tree.nodes[x].children)
    return out
