"""Step-level beam search guided by a scorer (Snell et al. 2024, "Scaling LLM Test-Time Compute
Optimally", arXiv 2408.03314, beam search against a PRM; the BFS of Yao et al. 2023, "Tree of
Thoughts", arXiv 2305.10601).

    beams = [root]
    while budget left and some beam is unfinished:
        children = expand every unfinished beam with `expansions` next steps
        score the children
        beams = the `width` best of (finished beams + children)
    answer = the best-scoring finished beam

With `fill`, once every beam has finished and budget is left, a fresh beam search starts from the
root, again and again; the answer is the best-scoring finished beam of them all. The token budget,
rather than width x expansions, then sets the spend, as it does for vote.
"""

from __future__ import annotations

from pydantic import Field

from sharpen.core.tasks import Problem
from sharpen.core.tree import Tree
from sharpen.search.algorithms.common import finish, need_scorer, open_search, plan, value
from sharpen.search.process import Process
from sharpen.search.registry import MAX_ROWS, Options, algorithm


class BeamOptions(Options):
    counts = ("width", "expansions")
    width: int = Field(4, ge=1, le=MAX_ROWS, description="beams kept after each step")
    expansions: int = Field(4, ge=1, le=MAX_ROWS, description="next steps sampled per unfinished beam")
    fill: bool = Field(False, description="when every beam has finished and budget is left, search again from the root (best of all)")


@algorithm("beam", BeamOptions)
def beam_search(process: Process, scorer, problem: Problem, budget_tokens: int, seed: int, **options) -> Tree:
    """Step-level beam search guided by a scorer (Snell et al. 2024; Tree of Thoughts BFS)."""
    o = BeamOptions.parse(options, "algorithm beam")
    width, expansions = o.width, o.expansions
    scorer = need_scorer(scorer, "beam")
    tree, budget = open_search(process, problem, budget_tokens, seed, "beam")
    beams = [tree.root.id]
    done: list[int] = []  # the finished beams of earlier searches (with `fill`)
    while not budget.exhausted:
        unfinished = [b for b in beams if not tree.nodes[b].terminal]
        if not unfinished and o.fill:
            done += beams
            beams = unfinished = [tree.root.id]
        if not unfinished:
            break
        parents, k = plan(budget, scorer, unfinished, expansions, {"step": process.step_tokens})
        children = list(dict.fromkeys(c for kids in process.expand(tree, parents, k, budget) for c in kids))
        if not children:
            break
        scorer.score(tree, children, budget)
        pool = list(dict.fromkeys([b for b in beams if tree.nodes[b].terminal] + children))
        beams = sorted(pool, key=lambda n: value(tree, n), reverse=True)[:width]  # stable: ties keep order
    finished = [b for b in dict.fromkeys(done + beams) if tree.nodes[b].terminal] or [n.id for n in tree.terminals()]
    chosen = max(finished or beams, key=lambda n: value(tree, n))
    tree.meta["beams"] = beams
    return finish(process, tree, budget, chosen)
