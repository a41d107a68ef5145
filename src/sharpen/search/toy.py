"""A tiny non-language process: a random walk that must reach a target.

The state is an integer position starting at 0; each step moves -1, 0 or +1; a walk ends after
`horizon` steps and its answer is the final position, correct iff it equals the target. The
"policy" is informative but imperfect, like a small language model: it moves toward the target
with probability `p_good` and otherwise picks one of the other two moves. Each step costs one
"token" in the process's own `UsageMeter`, so budgets mean the same thing as for `LMProcess`.
With `early_stop=True` a walk also ends when it first reaches the target, so solutions have
different lengths (like language-model solutions) and particles finish at different times.

The search algorithms run on this process unchanged: the proof that they do not depend on
language models. Tests and benchmarks use it because it is fast and needs no model.
"""

from __future__ import annotations

import math
import random
import time

from sharpen.core.budget import Budget, allot, allowed_rows
from sharpen.core.errors import ConfigError
from sharpen.core.meter import UsageMeter
from sharpen.core.seeding import derive_seed
from sharpen.core.tasks import Problem
from sharpen.core.tree import Tree
from sharpen.search.process import Rollout, next_seed, set_priors

MOVES = (-1, 0, 1)


def make_problems(n: int, seed: int = 0, horizon: int = 6) -> list[Problem]:
    """`n` random-walk problems with targets in ±[1, horizon // 2]."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        target = rng.choice([-1, 1]) * rng.randint(1, max(1, horizon // 2))
        out.append(Problem(f"walk-{seed}-{i}", f"reach {target} in {horizon} steps", str(target), {"target": target}))
    return out


class RandomWalkProcess:
    def __init__(self, horizon: int = 6, p_good: float = 0.5, early_stop: bool = False):
        if horizon <= 0 or not 0.0 <= p_good <= 1.0:
            raise ConfigError("RandomWalkProcess needs horizon > 0 and 0 <= p_good <= 1")
        self.horizon = horizon
        self.p_good = p_good
        self.early_stop = early_stop
        self.meter = UsageMeter()
        self.step_tokens = 1
        self.rollout_tokens = horizon

    # -- the walk ---------------------------------------------------------------------------
    @staticmethod
    def state(tree: Tree, node_id: int) -> tuple[int, int]:
        """(position, time) of a node."""
        m = tree.nodes[node_id].meta
        return m.get("pos", 0), m.get("t", 0)

    def _probs(self, pos: int, target: int) -> list[float]:
        good = (target > pos) - (target < pos)
        return [self.p_good if m == good else (1.0 - self.p_good) / 2 for m in MOVES]

    def _walk(self, rng: random.Random, pos: int, t: int, target: int, steps: int) -> tuple[list[int], float]:
        moves, lp = [], 0.0
        for _ in range(steps):
            if self.early_stop and pos == target:
                break
            probs = self._probs(pos, target)
            m = rng.choices(MOVES, weights=probs)[0]
            lp += math.log(max(probs[MOVES.index(m)], 1e-12))
            pos += m
            moves.append(m)
        return moves, lp

    def _target(self, tree: Tree) -> int:
        return int(tree.reference)  # the toy environment (not the search) knows its target

    def _record(self, tokens: int) -> None:
        self.meter.record(prompt_tokens=0, generated_tokens=tokens, seconds=0.0)

    def _plan(self, tree: Tree, node_ids: list[int], k: int, budget: Budget | None, row_tokens: int, kind: str):
        live = [i for i, nid in enumerate(node_ids) if not tree.nodes[nid].terminal]
        return allot(live, k, allowed_rows(budget, len(live) * k, row_tokens, kind))

    # -- protocol ---------------------------------------------------------------------------
    def new_tree(self, problem: Problem, seed: int = 0) -> Tree:
        tree = Tree(problem.id, problem.question, prompt=problem.question, reference=problem.answer,
                    meta={"seed": seed, "calls": 0})
        tree.root.meta.update(pos=0, t=0)
        return tree

    def expand(self, tree: Tree, node_ids: list[int], k: int, budget: Budget | None = None) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in node_ids]
        live, k = self._plan(tree, node_ids, k, budget, self.step_tokens, "step")
        if not live:
            return out
        rng = random.Random(next_seed(tree))
        target = self._target(tree)
        for i in live:
            pos, t = self.state(tree, node_ids[i])
            kids = []
            for _ in range(k):
                (m,), lp = self._walk(rng, pos, t, target, 1)
                kids.append(self._add(tree, node_ids[i], [m], lp, pos + m, t + 1).id)
            set_priors(tree, kids)
            out[i] = kids
        self._record(len(live) * k)
        return out

    def _walks_to_end(self, tree: Tree, node_ids: list[int], k: int, budget: Budget | None):
        """k random walks to the horizon from each node the budget allows:
        {index in node_ids: (start position, start time, [(moves, logprob), ...])}."""
        live, k = self._plan(tree, node_ids, k, budget, self.rollout_tokens, "answer")
        if not live:
            return {}
        rng = random.Random(next_seed(tree))
        target, walks = self._target(tree), {}
        for i in live:
            pos, t = self.state(tree, node_ids[i])
            walks[i] = (pos, t, [self._walk(rng, pos, t, target, self.horizon - t) for _ in range(k)])
        self._record(sum(len(m) for _, _, ws in walks.values() for m, _ in ws))
        return walks

    def complete(self, tree: Tree, node_ids: list[int], k: int, budget: Budget | None = None) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in node_ids]
        for i, (pos, t, walks) in self._walks_to_end(tree, node_ids, k, budget).items():
            for moves, lp in walks:
                node = self._add(tree, node_ids[i], moves, lp, pos + sum(moves), t + len(moves))
                node.meta["complete"] = True
                out[i].append(node.id)
            set_priors(tree, out[i])
        return out

    def rollout(self, tree: Tree, node_ids: list[int], k: int, budget: Budget | None = None) -> list[list[Rollout]]:
        out: list[list[Rollout]] = [[] for _ in node_ids]
        for i, (pos, _, walks) in self._walks_to_end(tree, node_ids, k, budget).items():
            out[i] = [Rollout(" ".join(f"{m:+d}" for m in moves), str(pos + sum(moves)), len(moves), lp, "eos")
                      for moves, lp in walks]
        return out

    def answer(self, tree: Tree, node_id: int) -> str | None:
        return str(self.state(tree, node_id)[0])

    def vote_key(self, answer: str | None) -> str | None:
        return answer

    def verify(self, tree: Tree, answer: str | None) -> bool:
        return answer is not None and answer == str(self._target(tree))

    def _add(self, tree: Tree, parent: int, moves: list[int], lp: float, pos: int, t: int):
        terminal = t >= self.horizon or (self.early_stop and pos == self._target(tree))
        return tree.add(
            parent, step="\n".join(f"{m:+d}" for m in moves), token_ids=[MOVES.index(m) for m in moves],
            num_tokens=len(moves), logprob=lp, terminal=terminal, answer=str(pos) if terminal else None,
            finish_reason="eos" if terminal else "step", meta={"pos": pos, "t": t},
        )


class DistanceScorer:
    """A heuristic value for the random walk, imperfect like a learned PRM: 1 / (1 + d) where d is
    the distance still to cover (0 when the target can no longer be reached in the steps left),
    plus deterministic noise. Costs one token per scored node, like one PRM call."""

    name = "distance"

    def __init__(self, process: RandomWalkProcess, noise: float = 0.1):
        self.process = process
        self.noise = noise

    def cost(self, terminal: bool, budget: Budget | None = None) -> float:
        return 1

    def bind(self, process: RandomWalkProcess) -> DistanceScorer:
        return DistanceScorer(process, self.noise)

    def score(self, tree: Tree, node_ids: list[int], budget: Budget | None = None) -> list[float | None]:
        todo = list(dict.fromkeys(n for n in node_ids if tree.nodes[n].score is None))
        todo = todo[: allowed_rows(budget, len(todo), 1, "judge")]
        t0 = time.perf_counter()
        target = int(tree.reference)
        for n in todo:
            pos, t = self.process.state(tree, n)
            d, left = abs(target - pos), self.process.horizon - t
            v = 0.0 if d > left else 1.0 / (1.0 + d)
            rng = random.Random(derive_seed(tree.problem_id, int(tree.meta.get("seed", 0)), n))
            tree.nodes[n].score = min(1.0, max(0.0, v + rng.gauss(0.0, self.noise)))
        if todo:
            self.process.meter.record(0, len(todo), time.perf_counter() - t0)
        return [tree.nodes[n].score for n in node_ids]
