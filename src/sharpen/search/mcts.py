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
                     (a terminal s_L is evaluated by its own score)
        4. backup:   every node on the path gets N += 1 and W += v per evaluated child;
                     Q = W / N  (node.visits, node.value_sum)
    answer: descend from the root by most visits (final="visits") or best Q (final="value")

Progressive widening: a node whose children are all terminal or exhausted gets k more children
(up to `max_children`) instead of being closed, so budget left over when short problems end in
one step still buys search (the tree grows wider where it cannot grow deeper).

Visit counts add up: an expanded node's visits = (1 if it was itself evaluated, i.e. is not the
root) + its step children's visits + its re-selections as a terminal (never, since it has children).
"""

from __future__ import annotations

import math

from sharpen.errors import ConfigError
from sharpen.process import Process
from sharpen.search.common import finish, need_scorer, open_search, plan, value
from sharpen.tasks import Problem
from sharpen.tree import Tree


def step_children(tree: Tree, node_id: int) -> list[int]:
    """Children that are steps of the search (rollout completions excluded)."""
    return [c for c in tree.nodes[node_id].children if not tree.nodes[c].meta.get("rollout")]


def puct(tree: Tree, parent: int, child: int, c_puct: float) -> float:
    s, a = tree.nodes[parent], tree.nodes[child]
    q = a.q if a.visits else 0.0
    return q + c_puct * a.prior * math.sqrt(s.visits) / (1 + a.visits)


def mcts(
    process: Process,
    scorer,
    problem: Problem,
    budget_tokens: int,
    seed: int,
    k: int = 4,
    c_puct: float = 1.0,
    evaluate: str = "scorer",
    final: str = "visits",
    max_iters: int = 10_000,
    max_children: int | None = None,
) -> Tree:
    if evaluate not in ("scorer", "rollout") or final not in ("visits", "value"):
        raise ConfigError("mcts: evaluate must be 'scorer' or 'rollout', final must be 'visits' or 'value'")
    scorer = need_scorer(scorer, "mcts")
    tree, budget = open_search(process, problem, budget_tokens, seed, "mcts")
    closed: set[int] = set()  # subtrees with nothing left to expand
    max_children = 4 * k if max_children is None else max(k, max_children)

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
            path.append(max(kids, key=lambda c, p=parent: puct(tree, p, c, c_puct)))
        leaf = tree.nodes[path[-1]]
        if leaf.terminal:
            values = [v for v in scorer.score(tree, [leaf.id], budget) if v is not None]  # cached: free
        elif len(step_children(tree, leaf.id)) >= max_children:  # expanded, every child closed
            _close(tree, closed, path, max_children)
            continue
        else:
            # 2. expand
            extra = process.rollout_tokens if evaluate == "rollout" else 0
            leaves, kk = plan(budget, scorer, [leaf.id], k, process.step_tokens + extra, terminal=extra > 0)
            if not leaves:
                break
            kk = min(kk, max_children - len(step_children(tree, leaf.id)))
            new = process.expand(tree, leaves, kk, budget)[0]
            if not new:
                break
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
