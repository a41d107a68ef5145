"""Best-of-N and self-consistency: sample whole solutions until the budget is spent.

The tree has depth one: every child of the root is a complete solution.

- `best_of_n`: the answer of the highest-scoring solution (a verifier reranks N samples;
  Cobbe et al. 2021, arXiv 2110.14168).
- `majority_vote`: self-consistency, the most common extracted answer (Wang et al. 2022,
  arXiv 2203.11171). Needs no scorer.
"""

from __future__ import annotations

from pydantic import Field

from sharpen.core.budget import Budget
from sharpen.core.tasks import Problem
from sharpen.core.tree import Tree
from sharpen.search.algorithms.common import finish, need_scorer, open_search, plan, value, weighted_vote
from sharpen.search.process import Process
from sharpen.search.registry import MAX_ROWS, Options, algorithm


def sample_solutions(process: Process, scorer, tree: Tree, budget: Budget, batch: int) -> list[int]:
    """Complete the root `batch` times per call (scoring each batch) until the budget is spent."""
    solutions: list[int] = []
    while not budget.exhausted:
        roots, k = plan(budget, scorer, [tree.root.id], batch, {"answer": process.rollout_tokens}, terminal=True)
        if not roots:
            break
        new = process.complete(tree, roots, k, budget)[0]
        if not new:
            break
        if scorer is not None:
            scorer.score(tree, new, budget)
        solutions += new
    return solutions


class SampleOptions(Options):
    counts = ("batch",)
    batch: int = Field(8, ge=1, le=MAX_ROWS, description="solutions sampled per call until the budget is spent")


@algorithm("bon", SampleOptions)
def best_of_n(process: Process, scorer, problem: Problem, budget_tokens: int, seed: int, **options) -> Tree:
    """Best-of-N: the highest-scoring of N sampled solutions (Cobbe et al. 2021)."""
    o = SampleOptions.parse(options, "algorithm bon")
    scorer = need_scorer(scorer, "bon")
    tree, budget = open_search(process, problem, budget_tokens, seed, "bon")
    solutions = sample_solutions(process, scorer, tree, budget, o.batch)
    scored = [s for s in solutions if tree.nodes[s].score is not None]
    if scored:
        chosen = max(scored, key=lambda s: value(tree, s))  # first of equals
    else:  # the budget ran out before any score: fall back to the vote
        chosen = weighted_vote(process, tree, solutions, [1.0] * len(solutions))
    return finish(process, tree, budget, chosen)


@algorithm("vote", SampleOptions, needs_scorer=False)
def majority_vote(process: Process, scorer, problem: Problem, budget_tokens: int, seed: int, **options) -> Tree:
    """Self-consistency: the most common answer of sampled solutions (Wang et al. 2022); no scorer."""
    o = SampleOptions.parse(options, "algorithm vote")
    tree, budget = open_search(process, problem, budget_tokens, seed, "vote")
    solutions = sample_solutions(process, None, tree, budget, o.batch)
    chosen = weighted_vote(process, tree, solutions, [1.0] * len(solutions))
    return finish(process, tree, budget, chosen)
