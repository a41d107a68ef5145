"""Particle filtering over steps (Puri et al. 2025, "A Probabilistic Inference Approach to
Inference-Time Scaling of LLMs using Particle-Based Monte Carlo Methods", arXiv 2502.01618).

    particles x^1..x^N = root
    while budget left and some particle is unfinished:
        extend every unfinished particle by one step:   x^i <- x^i + step ~ policy
        score them:                                      r^i = scorer(x^i)
        weights:                                         w^i = softmax(r / temperature)^i
        among the unfinished particles U (weights renormalised over U):
            ESS = 1 / sum_{i in U} (w^i)^2
            if ESS < ess_threshold * |U|:  resample U from U with probabilities w   (multinomial)
    answer = weighted vote of the finished particles' answers with weights w

With `fill`, once every particle has finished and budget is left, a fresh set of N particles starts
from the root, again and again; the final weighted vote pools the finished particles of every set.
The token budget, rather than N, then sets the spend, as it does for vote (whose sample count is
whatever the budget buys), so the two compare at equal generated tokens.

Finished particles stay finished: they are never extended, never resampled away and never copied
into an unfinished slot (resampling draws only among the unfinished, so a finished particle is never
revived). The PRM score of a partial solution judges the whole prefix, so weights are not multiplied
across steps; Puri et al. resample every step (ess_threshold = 1 gives that).
`tree.meta["particles"]` records the particle set after every step, `tree.meta["resampled"]` when,
and `tree.meta["ess"]` the effective sample size of the unfinished particles' weights that decided
it (rounded to 3 decimals; None at a step after which every particle has finished).
"""

from __future__ import annotations

import math
import random

from pydantic import Field

from sharpen.core.tasks import Problem
from sharpen.core.tree import Tree
from sharpen.search.algorithms.common import finish, need_scorer, open_search, plan, value, weighted_vote
from sharpen.search.process import Process
from sharpen.search.registry import MAX_ROWS, Options, algorithm


def softmax(xs: list[float], temperature: float) -> list[float]:
    if not xs:
        return []
    m = max(xs)
    es = [math.exp((x - m) / temperature) for x in xs]
    z = sum(es)
    return [e / z for e in es]


def effective_sample_size(w: list[float]) -> float:
    z = sum(w)
    return 1.0 / sum((x / z) ** 2 for x in w) if z > 0 else 0.0


class PFOptions(Options):
    counts = ("n",)
    n: int = Field(4, ge=1, le=MAX_ROWS, description="particles")
    temperature: float = Field(0.5, gt=0, description="softmax temperature turning scores into weights")
    ess_threshold: float = Field(0.5, ge=0, le=1, description="resample when ESS < this x unfinished particles (1: every step)")
    fill: bool = Field(False, description="when every particle has finished and budget is left, start a fresh set of n (the vote pools all sets)")


@algorithm("pf", PFOptions)
def particle_filter(process: Process, scorer, problem: Problem, budget_tokens: int, seed: int, **options) -> Tree:
    """Particle filtering over steps (Puri et al. 2025); finished particles are never revived."""
    o = PFOptions.parse(options, "algorithm pf")
    n, temperature, ess_threshold = o.n, o.temperature, o.ess_threshold
    scorer = need_scorer(scorer, "pf")
    tree, budget = open_search(process, problem, budget_tokens, seed, "pf")
    rng = random.Random(seed)
    x = [tree.root.id] * n
    done: list[int] = []  # the finished particles of earlier sets (with `fill`)
    tree.meta["particles"], tree.meta["resampled"], tree.meta["ess"] = [], [], []
    if o.fill:
        tree.meta["restarts"] = []  # how many steps had been taken when each fresh set started

    def r(i: int) -> float:
        return value(tree, x[i], default=0.5)

    while not budget.exhausted:
        unfinished = [i for i in range(n) if not tree.nodes[x[i]].terminal]
        if not unfinished and o.fill:
            done += x
            x = [tree.root.id] * n
            tree.meta["restarts"].append(len(tree.meta["particles"]))
            unfinished = list(range(n))
        if not unfinished:
            break
        served, _ = plan(budget, scorer, unfinished, 1, {"step": process.step_tokens})  # particle indices
        extended = process.expand(tree, [x[i] for i in served], 1, budget)
        if not any(extended):
            break
        for i, kids in zip(served, extended, strict=True):
            if kids:
                x[i] = kids[0]
        scorer.score(tree, [x[i] for i in unfinished], budget)

        w = softmax([r(i) for i in range(n)], temperature)
        U = [i for i in unfinished if not tree.nodes[x[i]].terminal]  # just-finished ones are frozen too
        resampled = False
        ess = effective_sample_size([w[i] for i in U]) if U else None
        if ess is not None and ess < ess_threshold * len(U):
            draws = rng.choices([x[i] for i in U], weights=[w[i] for i in U], k=len(U))
            for i, d in zip(U, draws, strict=True):
                x[i] = d
            resampled = True
        tree.meta["particles"].append(list(x))
        tree.meta["resampled"].append(resampled)
        tree.meta["ess"].append(None if ess is None else round(ess, 3))

    finished = [p for p in done + x if tree.nodes[p].terminal]
    voters = finished or x
    w = softmax([value(tree, p, default=0.5) for p in voters], temperature)
    chosen = weighted_vote(process, tree, voters, w)
    return finish(process, tree, budget, chosen)
