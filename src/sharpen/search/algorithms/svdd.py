"""Soft value-based decoding (SVDD; Li et al. 2024, "Derivative-Free Guidance in Continuous and
Discrete Diffusion Models with Soft Value-Based Decoding", arXiv 2408.08252, Algorithm 1).

    chains c^1..c^n = root
    while budget left and some chain is unfinished:
        for every unfinished chain c:
            draw m candidates  y^1..y^m ~ p(. | c)          (one reverse step / one step of the policy)
            value them          v^j = scorer(y^j)             (x0-reward: SVDD-PM, mc-reward: SVDD-MC)
            keep one            c <- y^argmax v               when alpha = 0
                                c <- y^j with probability softmax(v / alpha)^j   otherwise
    answer = the finished chain with the best value (of its x_0: the reward itself on a denoiser)

The chains of a set step in lockstep (one `expand` call for all of them, so their candidates share
the model's batches). With `fill` (the default), once every chain of the set has finished and the
budget left covers another chain at the cost measured so far (spent / chains run), a fresh set of up
to n chains starts from the root, as many as that budget left covers, again and again; the answer is
the best of all of them. The budget, rather than n, then sets the number of chains, as it sets pf's
particles with `fill`, so the two compare at equal spend. Without `fill`, exactly n chains run.

Near the end of the budget a step draws fewer candidates (`plan`: fewer per chain first, then fewer
chains); a chain whose candidates the budget left unvalued keeps the first of them (a draw from the
model, unguided). On a language-model process this is step-level beam search of width 1 per chain
with soft selection. `tree.meta["chains"]` records the last node of every chain, in the order they ran.
"""

from __future__ import annotations

import random

from pydantic import Field

from sharpen.core.tasks import Problem
from sharpen.core.tree import Tree
from sharpen.search.algorithms.common import finish, need_scorer, open_search, plan, value
from sharpen.search.algorithms.pf import softmax
from sharpen.search.process import Process
from sharpen.search.registry import MAX_ROWS, Options, algorithm


class SVDDOptions(Options):
    counts = ("n", "m")
    n: int = Field(1, ge=1, le=MAX_ROWS, description="chains stepped side by side (with fill: at most, per set)")
    m: int = Field(4, ge=1, le=MAX_ROWS, description="candidates drawn and valued per chain and step; one is kept")
    alpha: float = Field(0.0, ge=0, allow_inf_nan=False,
                         description="0: keep the best-valued candidate; > 0: sample it with softmax(value / alpha)")
    fill: bool = Field(True, description="when every chain has finished, start fresh chains while the budget "
                       "covers one (the answer is the best of all)")


def _keep(candidates: list[int], values: list[float | None], alpha: float, rng: random.Random) -> int:
    """The candidate a chain keeps: among the valued ones, the best (alpha = 0; first of equals) or a
    draw with probabilities softmax(value / alpha); the first candidate when none was valued."""
    valued = [(c, v) for c, v in zip(candidates, values, strict=True) if v is not None]
    if not valued:
        return candidates[0]
    if alpha == 0:
        return max(valued, key=lambda cv: cv[1])[0]
    weights = softmax([v for _, v in valued], alpha)
    return rng.choices([c for c, _ in valued], weights=weights, k=1)[0]


@algorithm("svdd", SVDDOptions)
def svdd(process: Process, scorer, problem: Problem, budget_tokens: int, seed: int, **options) -> Tree:
    """Soft value-based decoding: m valued candidates per step, one kept (Li et al. 2024, SVDD)."""
    o = SVDDOptions.parse(options, "algorithm svdd")
    scorer = need_scorer(scorer, "svdd")
    tree, budget = open_search(process, problem, budget_tokens, seed, "svdd")
    rng = random.Random(seed)
    chains = [tree.root.id] * o.n
    done: list[int] = []  # the last nodes of earlier sets' chains (with `fill`)
    while not budget.exhausted:
        unfinished = [i for i in range(len(chains)) if not tree.nodes[chains[i]].terminal]
        if not unfinished and o.fill:
            done, chains = done + chains, []
            per_chain = budget.spent / len(done)  # measured: what a chain has cost in this search
            fits = int(budget.remaining // per_chain) if per_chain > 0 else o.n
            chains = [tree.root.id] * min(o.n, fits)
            unfinished = list(range(len(chains)))
        if not unfinished:
            break
        served, k = plan(budget, scorer, unfinished, o.m, {"step": process.step_tokens})  # chain indices
        if not served:
            break
        kids = process.expand(tree, [chains[i] for i in served], k, budget)
        if not any(kids):
            break
        values = scorer.score(tree, [c for cs in kids for c in cs], budget)
        at = 0
        for i, cs in zip(served, kids, strict=True):
            if cs:
                chains[i] = _keep(cs, values[at:at + len(cs)], o.alpha, rng)
            at += len(cs)
    ends = done + chains
    tree.meta["chains"] = ends
    finished = [c for c in ends if tree.nodes[c].terminal]
    chosen = max(finished or ends, key=lambda c: value(tree, c)) if ends else None  # first of equals
    if chosen == tree.root.id:
        chosen = None
    return finish(process, tree, budget, chosen)
