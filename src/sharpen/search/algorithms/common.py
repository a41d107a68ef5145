"""What every algorithm shares: opening a search, voting, and writing the result into the tree."""

from __future__ import annotations

from collections import defaultdict

from sharpen.core.budget import Budget, allot
from sharpen.core.errors import ConfigError
from sharpen.core.meter import DEFAULT_UNIT
from sharpen.core.tasks import Problem
from sharpen.core.tree import Tree
from sharpen.search.process import Process


def open_search(process: Process, problem: Problem, budget_tokens: int, seed: int, algo: str) -> tuple[Tree, Budget]:
    """A fresh tree for `problem` and its budget of `budget_tokens` in the process's `budget_unit`
    (generated tokens for a process that declares none; NFE for a denoising process)."""
    tree = process.new_tree(problem, seed=seed)
    tree.algo = algo
    unit = getattr(process, "budget_unit", DEFAULT_UNIT)
    return tree, Budget(process.meter, budget_tokens, prior=tree.meta.get("row_prior"), unit=unit)


def need_scorer(scorer, algo: str):
    if scorer is None:
        raise ConfigError(f"{algo} needs a scorer (fix: --scorer self, rollout, prm:<path>, or oracle with --collect)")
    return scorer


def plan(
    budget: Budget, scorer, node_ids: list[int], k: int, rows: dict[str, int], terminal: bool = False
) -> tuple[list[int], int]:
    """Which nodes to extend and with how many rows each, so that the budget left covers, at their
    expected costs (`Budget.expected`, measured as the search goes), the rows (`rows`: kind -> max
    tokens of one row, e.g. {"step": step_tokens}; several kinds when one candidate costs a step and
    a rollout) and the scoring of every new node (`scorer.cost(terminal, budget)`)."""
    cost = sum(budget.expected(kind, max_tokens) for kind, max_tokens in rows.items())
    cost += scorer.cost(terminal, budget) if scorer is not None else 0
    served, k = allot(list(range(len(node_ids))), k, budget.fit(len(node_ids) * k, cost))
    return [node_ids[i] for i in served], k


def value(tree: Tree, node_id: int, default: float = 0.0) -> float:
    s = tree.nodes[node_id].score
    return default if s is None else s


def weighted_vote(process: Process, tree: Tree, node_ids: list[int], weights: list[float]) -> int | None:
    """The node carrying the answer with the largest total weight (first seen wins ties; within the
    winning answer, the heaviest node). Nodes without an answer do not vote. On a process that
    `selects_by_value` (a denoiser: its answers are classes of images, not what the reward ranks),
    the heaviest node itself, first of equals."""
    if getattr(process, "selects_by_value", False):
        return node_ids[weights.index(max(weights))] if node_ids else None
    total: dict[str, float] = defaultdict(float)
    best: dict[str, int] = {}
    for n, w in zip(node_ids, weights, strict=True):
        key = process.vote_key(process.answer(tree, n))
        if key is None:
            continue
        total[key] += w
        if key not in best or w > weights[node_ids.index(best[key])]:
            best[key] = n
    if not total:
        return None
    top = max(total.values())
    return best[next(k for k, v in total.items() if v == top)]


def finish(process: Process, tree: Tree, budget: Budget, chosen: int | None) -> Tree:
    """Record the chosen node's path and answer, and what was actually spent."""
    if chosen is not None:
        tree.chosen = [n.id for n in tree.path(chosen)]
        tree.answer = process.answer(tree, chosen)
    tree.usage = budget.report()
    return tree
