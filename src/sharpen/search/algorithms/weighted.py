"""Verifier-weighted voting: sample whole solutions until the budget is spent, then the answer
with the largest sum of scores wins (Li et al. 2023 "Making Large Language Models Better Reasoners
with Step-Aware Verifier", arXiv 2206.02336; compared with majority vote and best-of-N in Brown et
al. 2024 "Large Language Monkeys", arXiv 2407.21787).

    for each answer a:  W(a) = sum over solutions s with answer a of score(s)
    answer = argmax_a W(a)
"""

from __future__ import annotations

from sharpen.core.tasks import Problem
from sharpen.core.tree import Tree
from sharpen.search.algorithms.bon import SampleOptions, sample_solutions
from sharpen.search.algorithms.common import finish, need_scorer, open_search, value, weighted_vote
from sharpen.search.process import Process
from sharpen.search.registry import algorithm


@algorithm("weighted", SampleOptions)
def weighted_vote_search(process: Process, scorer, problem: Problem, budget_tokens: int, seed: int, **options) -> Tree:
    """Verifier-weighted vote: the answer with the largest sum of scores (Li et al. 2023)."""
    o = SampleOptions.parse(options, "algorithm weighted")
    scorer = need_scorer(scorer, "weighted")
    tree, budget = open_search(process, problem, budget_tokens, seed, "weighted")
    solutions = sample_solutions(process, scorer, tree, budget, o.batch)
    weights = [value(tree, s) for s in solutions]
    chosen = weighted_vote(process, tree, solutions, weights) if any(weights) else None
    if chosen is None:  # every score was 0 or missing: plain vote
        chosen = weighted_vote(process, tree, solutions, [1.0] * len(solutions))
    return finish(process, tree, budget, chosen)
