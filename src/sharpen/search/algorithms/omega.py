"""OmegaPRM-style collection of step labels (Luo et al. 2024, "Improve Mathematical Reasoning in
Language Models by Automated Process Supervision", arXiv 2406.06592): sample whole solutions step
by step, and for each one the scorer judges wrong, locate its first wrong step by binary search
over Monte Carlo values of its prefixes, so rollouts are spent where the first error is.

    solutions = `samples` step-by-step samples from the root (one tree node per step), fewer
                when the budget does not cover that many with their scoring (`plan`)
    for each solution s with value(s) = 0 (the scorer's value of its terminal):
        BinarySearch(s): lo = 0 (the question), hi = |s|
            while hi - lo > 1:  mid = (lo + hi) // 2
                if value(prefix of mid steps) > 0: lo = mid  else: hi = mid
        -> step hi is the first wrong one; the prefixes probed carry their values (node.score)
    answer = weighted vote of the solutions by value

With the oracle scorer (`oracle:k`, training-data collection) the probed values are Monte Carlo
estimates from k verified rollouts and `sharpen build labels` turns them into soft and hard step
labels; steps after the first wrong one are not probed (OmegaPRM assumes them wrong too, and
`credit.mc_values` gives them the share of correct terminals below them, i.e. 0 on a wrong path).
`tree.meta["first_wrong"]` records, per wrong solution's terminal, the node of its first wrong step.
"""

from __future__ import annotations

from pydantic import Field

from sharpen.core.tasks import Problem
from sharpen.core.tree import Tree
from sharpen.search.algorithms.common import finish, need_scorer, open_search, plan, value, weighted_vote
from sharpen.search.credit import first_wrong_step
from sharpen.search.process import Process
from sharpen.search.registry import MAX_ROWS, Options, algorithm


class OmegaOptions(Options):
    counts = ("samples",)
    samples: int = Field(4, ge=1, le=MAX_ROWS, description="solutions sampled step by step from the root")
    threshold: float = Field(0.0, ge=0, le=1, description="a prefix whose value is <= this is wrong")


@algorithm("omega", OmegaOptions)
def omega(process: Process, scorer, problem: Problem, budget_tokens: int, seed: int, **options) -> Tree:
    """OmegaPRM's binary search for the first wrong step of each wrong sampled solution (arXiv 2406.06592)."""
    o = OmegaOptions.parse(options, "algorithm omega")
    scorer = need_scorer(scorer, "omega")
    tree, budget = open_search(process, problem, budget_tokens, seed, "omega")
    # 1. sample solutions step by step, all of them advancing together (one call per step)
    roots, k = plan(budget, scorer, [tree.root.id], o.samples, {"step": process.step_tokens}, terminal=True)
    live = roots * k  # the samples the budget left covers, each with its scoring (at most `samples`)
    ends: list[int] = []
    while live and not budget.exhausted:
        stepped = process.expand(tree, live, 1, budget)
        nxt = []
        for kids in stepped:
            for kid in kids:
                (ends if tree.nodes[kid].terminal else nxt).append(kid)
        if not any(stepped):
            break
        live = nxt
    scorer.score(tree, ends, budget)
    # 2. binary search for the first wrong step of each wrong solution
    first_wrong: dict[int, int] = {}
    for end in ends:
        if value(tree, end, default=1.0) > o.threshold or budget.exhausted:
            continue
        path = [n.id for n in tree.path(end)]

        def value_fn(h: int, path: list[int] = path) -> float:
            v = scorer.score(tree, [path[h - 1]], budget)[0]
            return 0.0 if v is None else v

        wrong = first_wrong_step(path, value_fn, threshold=o.threshold, known_wrong=True)
        if wrong is not None:
            first_wrong[end] = path[wrong]
    tree.meta["first_wrong"] = first_wrong
    chosen = weighted_vote(process, tree, ends, [value(tree, e) for e in ends]) if ends else None
    if chosen is None and ends:
        chosen = weighted_vote(process, tree, ends, [1.0] * len(ends))
    return finish(process, tree, budget, chosen)
