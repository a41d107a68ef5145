"""A denoising process: the search algorithms steer a diffusion model's sampler, step by step.

The process behind the same protocol as `LMProcess` and the toy random walk (`sharpen.search.process`),
on a DDPM (Ho et al. 2020, arXiv 2006.11239; the model is `sharpen.backends.diffusion`'s `digits-ddpm`):

- the root is the prior; its children are draws of x_T ~ N(0, I) (no denoiser forward);
- a step is one stochastic reverse step, x_t -> x_{t'} ~ p(x_{t'} | x_t) (DDPM ancestral sampling,
  `DDPMScheduler.step`), over `steps` reverse steps strided from T to 0 (50 by default); the last
  reverse step (from timestep 0) adds no noise, so the step that reaches timestep 0 goes on to x_0
  (two reverse steps, one more forward): the tree holds no state at timestep 0;
- a node is terminal when its state is x_0; its answer is the classifier's class of x_0 and
  `meta["reward"]` the reward of x_0 (`REWARDS`, the process's `reward`, also in `tree.meta["reward"]`):
  `class`, the classifier's probability of the problem's target class; `realism`, the density model's
  squashed log-density of x_0 (class-agnostic, `DigitsDiffusion.realism`); `product`, the two
  multiplied (a likely image of the target class);
- `expand(tree, nodes, k)` runs the denoiser once per distinct node state and draws k noise samples
  from it, so k candidate next states cost one forward (the candidates SVDD chooses among, Li et al.
  2024, "Derivative-Free Guidance in Continuous and Discrete Diffusion Models with Soft Value-Based
  Decoding", arXiv 2408.08252; `sharpen.search.algorithms.svdd`); `complete`/`rollout` denoise to x_0.

Units: one denoiser forward of one row is one NFE, recorded in the process's `UsageMeter` as `nfe`,
the process's `budget_unit` (so a search's budget is a budget of NFE; `generated_tokens` stays 0);
each reward evaluation of one sample is a `reward_calls`. A node's `num_tokens` is the reverse steps
its segment took. A node's noise prediction is computed once per tree: the forward that values a node
(its predicted x_0, `x0_rewards`) is the one that steps it on (`expand`, `complete`), so a search that
values the states it extends pays one NFE per state, not two (the cache is per tree, so a tree's
spend does not depend on other searches; a tree forgets its entries least recently used first,
`EPS_KEPT`).

A node keeps its state compactly in `meta`: `x` (float16 bytes, base64; 64 values for 8x8), `k`
(reverse steps taken, 0 for x_T) and `t` (the timestep of x). `strip_states` drops the inner
nodes' states from a finished tree. Randomness follows the protocol: each generating call takes
`next_seed(tree)`, and row j of node position i its own torch generator seeded from that, i and j
(`row_seed`), so the same seed gives the identical tree whatever shares the denoiser's batches. Many
problems' searches share them under lockstep batching (`fork`; `search_problems` with `parallel`, as
`sharpen search` and `sweep` run), which fills the denoiser's padded forward chunks with rows of
several problems instead of one problem's few.

`diversity(trees)` measures collapse beside reward: the mean pairwise L2 distance between the chosen
x_0 of trees with the same target class, averaged over the classes.
"""

from __future__ import annotations

import base64
import random
import time
import weakref
from collections import defaultdict
from typing import Any

from sharpen.backends.base import row_seed
from sharpen.core.budget import Budget, allot, allowed_rows
from sharpen.core.errors import ConfigError
from sharpen.core.lru import LRUDict
from sharpen.core.meter import UsageMeter
from sharpen.core.seeding import derive_seed
from sharpen.core.tasks import Problem
from sharpen.core.tree import Tree
from sharpen.search.process import Forkable, Rollout, next_seed, set_priors

SPLIT_STREAMS = {"train": 0, "test": 1}
REWARDS = ("class", "realism", "product")
"""What a terminal's `meta["reward"]` is: the classifier's probability of the target class, the
density model's realism, or their product."""
EPS_KEPT = 512
"""Noise predictions a tree keeps for reuse (more than the states one step of a search values)."""


def problems(split: str = "test", n: int = 10, seed: int = 0, classes: int = 10) -> list[Problem]:
    """`n` problems "draw a digit of class c", c uniform in 0..classes-1, the same for the same
    (split, n, seed); train and test draw from different streams."""
    if split not in SPLIT_STREAMS:
        raise ConfigError(f"unknown split {split!r} (fix: one of {', '.join(SPLIT_STREAMS)})")
    rng = random.Random(derive_seed(seed, SPLIT_STREAMS[split]))
    out = []
    for i in range(n):
        c = rng.randrange(classes)
        out.append(Problem(f"digit-{split}-{seed}-{i}", f"draw the digit {c}", str(c), {"target": c}))
    return out


def encode_state(x: Any) -> str:
    """A state (1, 8, 8) as base64 of its float16 bytes."""
    import numpy as np

    return base64.b64encode(x.detach().cpu().numpy().astype(np.float16).tobytes()).decode("ascii")


def decode_state(s: str, shape: tuple[int, ...]) -> Any:
    import numpy as np
    import torch

    return torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.float16).astype(np.float32).reshape(shape))


def strip_states(tree: Tree) -> Tree:
    """Drop the states of inner nodes (kept: x_0 of the terminals), for storing a finished search."""
    for n in tree.nodes:
        if not n.terminal:
            n.meta.pop("x", None)
    return tree


def chosen_x0(tree: Tree, shape: tuple[int, ...] = (1, 8, 8)) -> Any | None:
    """The chosen terminal's x_0 (a tensor of `shape`), or None when the search chose no x_0."""
    if not tree.chosen:
        return None
    node = tree.nodes[tree.chosen[-1]]
    return decode_state(node.meta["x"], shape) if node.terminal and "x" in node.meta else None


def diversity(trees: list[Tree]) -> float | None:
    """The mean pairwise L2 distance between the chosen x_0 (pixels in [-1, 1]) of trees that share
    a target class (`tree.reference`), averaged over the classes with at least two chosen x_0 (each
    class weighs the same); None when no class has two. A search that collapses onto one image per
    class scores near 0 however high its reward."""
    import numpy as np
    from sklearn.metrics import pairwise_distances

    by_class: dict[str, list[Any]] = defaultdict(list)
    for tree in trees:
        x0 = chosen_x0(tree)
        if x0 is not None:
            by_class[str(tree.reference)].append(x0.reshape(-1).numpy())
    means = []
    for xs in by_class.values():
        if len(xs) > 1:
            d = pairwise_distances(np.stack(xs))
            means.append(float(d.sum()) / (len(xs) * (len(xs) - 1)))  # the diagonal is 0
    return sum(means) / len(means) if means else None


class DenoiseProcess(Forkable):
    """DDPM ancestral sampling as a search process over a `DigitsDiffusion` model (see the module);
    `reward` is one of `REWARDS`."""

    budget_unit = "nfe"
    # an image has no answer to count: a weighted vote (pf, weighted) keeps the heaviest node, i.e.
    # the best-valued x_0, instead of summing weights by class (`algorithms.common.weighted_vote`)
    selects_by_value = True

    def __init__(self, model: Any, steps: int = 50, reward: str = "class"):
        if steps <= 0:
            raise ConfigError("DenoiseProcess needs steps > 0 (reverse steps from T to 0)")
        train_t = int(model.scheduler_config.get("num_train_timesteps", 1000))
        if steps > train_t:
            raise ConfigError(f"steps={steps} exceeds the model's {train_t} training timesteps (fix: steps <= {train_t})")
        if reward not in REWARDS:
            raise ConfigError(f"unknown reward {reward!r} (fix: one of {', '.join(REWARDS)})")
        if reward != "class":
            model.require_realism()
        self.model = model
        self.reward = reward
        self.steps = steps
        self.scheduler = model.scheduler(steps)
        self.timesteps = [int(t) for t in self.scheduler.timesteps]
        # under lockstep batching, forwards and reward calls merge with other searches' of the same key
        self._eps_key = ("eps", id(model), tuple(self.timesteps))
        self._reward_key = ("reward", id(model), reward)
        self.shape = (1, 8, 8)
        self.meter = UsageMeter()
        self.backend = model  # what the denoiser's forwards and the rewards run on (`fork`: one search's proxy)
        self.step_tokens = 2  # the most NFE one `expand` row costs (its parent's forward, the last step's)
        self.rollout_tokens = steps  # the most NFE one `complete`/`rollout` row costs (from the root)
        self._eps: dict[int, LRUDict] = {}  # id(tree) -> {node id: the denoiser's noise prediction}

    @property
    def classes(self) -> int:
        return int(self.model.weight.shape[0])

    @property
    def prior_reward(self) -> float:
        """The root's value (the prior, no image yet): an uninformed guess of the reward, 1 / classes
        for the class probability, 0.5 (the average digit's) for realism, their product for both."""
        return {"class": 1.0 / self.classes, "realism": 0.5, "product": 0.5 / self.classes}[self.reward]

    # -- states ---------------------------------------------------------------------------------
    def state(self, tree: Tree, node_id: int) -> tuple[Any, int] | None:
        """(x, reverse steps taken) of a node; None for the root (the prior, before x_T)."""
        m = tree.nodes[node_id].meta
        if "k" not in m:
            return None
        if "x" not in m:
            raise ConfigError(f"node {node_id} has no state (fix: do not search a tree after strip_states)")
        return decode_state(m["x"], self.shape), int(m["k"])

    def target(self, tree: Tree) -> int:
        return int(tree.reference)  # the environment (not the search) knows its target

    def _record(self, nfe: int, rewards: int, seconds: float) -> None:
        if nfe or rewards:
            self.meter.record(prompt_tokens=0, generated_tokens=0, seconds=seconds, nfe=nfe, reward_calls=rewards)

    def _cache(self, tree: Tree) -> LRUDict:
        """The tree's noise predictions by node id, dropped with the tree."""
        key = id(tree)
        cache = self._eps.get(key)
        if cache is None:
            cache = self._eps[key] = LRUDict(EPS_KEPT)
            weakref.finalize(tree, self._eps.pop, key, None)
        return cache

    def node_eps(self, tree: Tree, node_ids: list[int], states: dict[int, Any]) -> tuple[dict[int, Any], int]:
        """The noise prediction of each node (ids distinct, states `self.state` of each, none the
        root): the tree's cached ones, and one forward for each of the others (cached then). Returns
        them by node id and the forwards run (not metered here)."""
        cache = self._cache(tree)
        out = {nid: cache[nid] for nid in node_ids if nid in cache}
        todo = [nid for nid in node_ids if nid not in out]
        for nid, e in zip(todo, self.eps([states[nid] for nid in todo]), strict=True):
            out[nid] = cache[nid] = e
        return out, len(todo)

    # -- what the lockstep batcher may ask of a denoising process ------------------------------
    def fork(self, backend: Any) -> DenoiseProcess:
        """One search's view (`Forkable.fork`) with its own noise-prediction cache: its denoiser
        forwards and reward calls merge with the other searches' (`batched`), so many problems' rows
        fill one padded forward chunk; a row's output does not depend on its chunk-mates
        (`DigitsDiffusion.eps`), so a tree is the same searched alone or beside others."""
        p = super().fork(backend)
        p._eps = {}
        return p

    def eps(self, states: list[tuple[Any, int]]) -> list[Any]:
        """The denoiser's noise prediction for each (x, k) state: one forward each (not metered here)."""
        if not states:
            return []
        return self.batched(self._eps_key, self._eps_rows, states)

    def _eps_rows(self, states: list[tuple[Any, int]]) -> list[Any]:
        import torch

        x = torch.stack([s[0] for s in states])
        t = torch.tensor([self.timesteps[s[1]] for s in states], dtype=torch.int64)
        return list(self.model.eps(x, t))

    def predicted_x0(self, x: Any, k: int, eps: Any) -> Any:
        """The posterior mean E[x_0 | x_t] under the denoiser (Tweedie; DDPM eq. 15), clipped as the
        scheduler clips it."""
        a = self.scheduler.alphas_cumprod[self.timesteps[k]]
        x0 = (x - (1 - a) ** 0.5 * eps) / a**0.5
        cfg = self.scheduler.config
        return x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range) if cfg.clip_sample else x0

    def rewards(self, tree: Tree, x0s: list[Any]) -> tuple[list[float], list[int]]:
        """The reward of each image (`self.reward`: the classifier's probability of the tree's target
        class, the realism, or their product) and the classifier's predicted class (not metered here)."""
        if not x0s:
            return [], []
        target = self.target(tree)
        out = self.batched(self._reward_key, self._reward_rows, [(x, target) for x in x0s])
        return [r for r, _ in out], [c for _, c in out]

    def _reward_rows(self, rows: list[tuple[Any, int]]) -> list[tuple[float, int]]:
        """(reward, predicted class) of each (x_0, target class)."""
        import torch

        x = torch.stack([x0 for x0, _ in rows])
        lp = self.model.log_probs(x)
        reward = lp[torch.arange(len(rows)), torch.tensor([c for _, c in rows])].exp()
        if self.reward == "realism":
            reward = self.model.realism(x)
        elif self.reward == "product":
            reward = reward * self.model.realism(x)
        return list(zip(reward.tolist(), lp.argmax(-1).tolist(), strict=True))

    def _denoise(self, rows: list[tuple[Any, int]], gens: list[Any], until: int) -> tuple[list[Any], int]:
        """Run each row's state (x, k) (x None: draw x_T from its generator first) to `until` reverse
        steps taken, each with its own generator; rows share the forward batches. Returns the states
        and the forwards run."""
        import torch

        xs = [torch.randn(self.shape, generator=g) if x is None else x for (x, _), g in zip(rows, gens, strict=True)]
        ks = [k for _, k in rows]
        nfe = 0
        while True:
            active = [r for r in range(len(rows)) if ks[r] < until]
            if not active:
                return xs, nfe
            eps = self.eps([(xs[r], ks[r]) for r in active])
            nfe += len(active)
            stepped = self._steps([xs[r] for r in active], [ks[r] for r in active], eps, [gens[r] for r in active])
            for r, x in zip(active, stepped, strict=True):
                xs[r] = x
                ks[r] += 1

    def _steps(self, xs: list[Any], ks: list[int], eps: list[Any], gens: list[Any]) -> list[Any]:
        """One reverse step of each row (`DDPMScheduler.step`; rows at the same step in one call,
        each drawing its noise from its own generator: elementwise, so a row's result does not
        depend on the others)."""
        import torch

        out: list[Any] = [None] * len(xs)
        for k in dict.fromkeys(ks):
            rows = [r for r in range(len(xs)) if ks[r] == k]
            step = self.scheduler.step(torch.stack([eps[r] for r in rows]), self.timesteps[k],
                                       torch.stack([xs[r] for r in rows]), generator=[gens[r] for r in rows])
            for r, x in zip(rows, step.prev_sample, strict=True):
                out[r] = x
        return out

    def _first_steps(self, node_ids: list[int], live: list[int], k: int, seed: int, states: dict, eps: dict,
                     gens: list[Any] | None = None, draw_prior: bool = True) -> list[tuple[int, int, Any, int]]:
        """Row j of each served position i: (i, parent, its next state, steps taken) from the parent's
        shared forward `eps`; the prior's rows draw x_T (or, without `draw_prior`, leave it to
        `_denoise`: state None). `gens` (one per row, in order) default to the rows' own."""
        import torch

        gens = gens or [self._generator(seed, i, j) for i in live for j in range(k)]
        rows = [(i, node_ids[i], g) for (i, _), g in zip(((i, j) for i in live for j in range(k)), gens, strict=True)]
        out: list[Any] = [None] * len(rows)
        inner = [r for r, (_, nid, _) in enumerate(rows) if states[nid] is not None]
        stepped = self._steps([states[rows[r][1]][0] for r in inner], [states[rows[r][1]][1] for r in inner],
                              [eps[rows[r][1]] for r in inner], [rows[r][2] for r in inner])
        for r, x in zip(inner, stepped, strict=True):
            out[r] = (rows[r][0], rows[r][1], x, states[rows[r][1]][1] + 1)
        for r, (i, nid, g) in enumerate(rows):
            if states[nid] is None:  # the prior: x_T
                out[r] = (i, nid, torch.randn(self.shape, generator=g) if draw_prior else None, 0)
        return out

    def _generator(self, seed: int, i: int, j: int) -> Any:
        import torch

        return torch.Generator().manual_seed(row_seed(derive_seed(seed, i), j))

    def _plan(self, tree: Tree, node_ids: list[int], k: int, budget: Budget | None, row_tokens: int, kind: str):
        live = [i for i, nid in enumerate(node_ids) if not tree.nodes[nid].terminal]
        return allot(live, k, allowed_rows(budget, len(live) * k, row_tokens, kind))

    def _add(self, tree: Tree, parent: int, x: Any, k: int, reverse_steps: int, reward: float | None = None,
             cls: int | None = None, complete: bool = False) -> int:
        terminal = k >= self.steps
        meta: dict[str, Any] = {"k": k, "t": 0 if terminal else self.timesteps[k], "x": encode_state(x)}
        if terminal:
            meta["reward"] = round(float(reward), 6)
        if complete:
            meta["complete"] = True
        step = "x_T" if k == 0 else f"t={meta['t']}"
        node = tree.add(parent, step=step, num_tokens=reverse_steps, terminal=terminal,
                        answer=str(cls) if terminal else None, finish_reason="eos" if terminal else "step",
                        meta=meta)
        return node.id

    # -- protocol -------------------------------------------------------------------------------
    def new_tree(self, problem: Problem, seed: int = 0) -> Tree:
        # a step's expected NFE starts at 0 (`Budget.expected`): k draws share their parent's forward, and
        # a valued state's forward is the one that steps it on
        return Tree(problem.id, problem.question, prompt=problem.question, reference=problem.answer,
                    meta={"seed": seed, "calls": 0, "steps": self.steps, "reward": self.reward,
                          "row_prior": {"step": 0.0}})

    def expand(self, tree: Tree, node_ids: list[int], k: int, budget: Budget | None = None) -> list[list[int]]:
        """k next states per node: one forward per distinct node state (none when the tree has it
        already), k noise draws from it. A draw that lands on the last timestep is taken on to x_0 at
        once (one forward each): that last reverse step adds no noise, so it is no choice to search
        over, and its child is terminal."""
        out: list[list[int]] = [[] for _ in node_ids]
        live, k = self._plan(tree, node_ids, k, budget, self.step_tokens, "step")
        if not live:
            return out
        t0 = time.perf_counter()
        seed = next_seed(tree)
        states = {nid: self.state(tree, nid) for nid in dict.fromkeys(node_ids[i] for i in live)}
        eps, nfe = self.node_eps(tree, [nid for nid, s in states.items() if s is not None], states)
        gens = [self._generator(seed, i, j) for i in live for j in range(k)]
        new = self._first_steps(node_ids, live, k, seed, states, eps, gens)  # (position, parent, state, steps taken)
        last = [r for r, row in enumerate(new) if row[3] == self.steps - 1]
        if last:  # the deterministic last step, folded into the step that reached its timestep
            xs, fold = self._denoise([(new[r][2], new[r][3]) for r in last], [gens[r] for r in last], self.steps)
            nfe += fold
            for r, x in zip(last, xs, strict=True):
                new[r] = (new[r][0], new[r][1], x, self.steps)
        finals = [x for _, _, x, kk in new if kk >= self.steps]
        rewards, classes = self.rewards(tree, finals)
        f = 0
        for i, nid, x, kk in new:
            taken = kk - (states[nid][1] if states[nid] is not None else 0)  # x_T: 0 reverse steps
            if kk >= self.steps:
                out[i].append(self._add(tree, nid, x, kk, taken, rewards[f], classes[f]))
                f += 1
            else:
                out[i].append(self._add(tree, nid, x, kk, taken))
        for kids in out:
            set_priors(tree, kids)
        self._record(nfe, len(finals), time.perf_counter() - t0)
        return out

    def _to_end(self, tree: Tree, node_ids: list[int], k: int, budget: Budget | None):
        """k denoisings to x_0 from each node the budget allows: {position: [(x_0, reverse steps), ...]},
        the rewards and classes of the x_0s in that order; metered."""
        live, k = self._plan(tree, node_ids, k, budget, self.rollout_tokens, "answer")
        if not live:
            return {}, [], []
        t0 = time.perf_counter()
        seed = next_seed(tree)
        states = {nid: self.state(tree, nid) for nid in dict.fromkeys(node_ids[i] for i in live)}
        # the first forward, shared by a node's k rows
        eps, first_nfe = self.node_eps(tree, [nid for nid, s in states.items() if s is not None], states)
        gens = [self._generator(seed, i, j) for i in live for j in range(k)]
        first = self._first_steps(node_ids, live, k, seed, states, eps, gens, draw_prior=False)
        rows = [(x, kk) for _, _, x, kk in first]
        starts = [0 if states[nid] is None else kk - 1 for _, nid, _, kk in first]
        finals, nfe = self._denoise(rows, gens, self.steps)
        rewards, classes = self.rewards(tree, finals)
        self._record(nfe + first_nfe, len(finals), time.perf_counter() - t0)
        out: dict[int, list[tuple[Any, int]]] = {}
        r = 0
        for i in live:
            out[i] = [(finals[r + j], self.steps - starts[r + j]) for j in range(k)]
            r += k
        return out, rewards, classes

    def complete(self, tree: Tree, node_ids: list[int], k: int, budget: Budget | None = None) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in node_ids]
        ends, rewards, classes = self._to_end(tree, node_ids, k, budget)
        r = 0
        for i, rows in ends.items():
            for x0, taken in rows:
                out[i].append(self._add(tree, node_ids[i], x0, self.steps, taken, rewards[r], classes[r], complete=True))
                r += 1
            set_priors(tree, out[i])
        return out

    def rollout(self, tree: Tree, node_ids: list[int], k: int, budget: Budget | None = None) -> list[list[Rollout]]:
        """k denoisings to x_0 per node, not added to the tree: text is x_0 (`encode_state`), answer
        its class, num_tokens the reverse steps taken; `rollout_rewards` gives their rewards."""
        return [[Rollout(encode_state(x0), str(c), n, 0.0, "eos") for (x0, n), _, c in rows]
                for rows in self._rollouts(tree, node_ids, k, budget)]

    def rollout_rewards(self, tree: Tree, node_ids: list[int], k: int, budget: Budget | None = None) -> list[list[float]]:
        """The rewards of k denoisings to x_0 per node (a Monte Carlo value's samples)."""
        return [[r for _, r, _ in rows] for rows in self._rollouts(tree, node_ids, k, budget)]

    def _rollouts(self, tree: Tree, node_ids: list[int], k: int, budget: Budget | None) -> list[list[tuple]]:
        out: list[list[tuple]] = [[] for _ in node_ids]
        ends, rewards, classes = self._to_end(tree, node_ids, k, budget)
        r = 0
        for i, rows in ends.items():
            for row in rows:
                out[i].append((row, rewards[r], classes[r]))
                r += 1
        return out

    def answer(self, tree: Tree, node_id: int) -> str | None:
        """A terminal's class of x_0; an inner node's class of its predicted x_0 when a value scorer
        has computed it (`meta["x0_class"]`), else None."""
        node = tree.nodes[node_id]
        if node.terminal:
            return node.answer
        c = node.meta.get("x0_class")
        return None if c is None else str(c)

    def vote_key(self, answer: str | None) -> str | None:
        return answer

    def verify(self, tree: Tree, answer: str | None) -> bool:
        return answer is not None and answer == str(self.target(tree))

    # -- values (the scorers in sharpen.search.scorers.digits) ----------------------------------
    def x0_rewards(self, tree: Tree, node_ids: list[int]) -> list[float]:
        """The reward of each node's predicted x_0 (SVDD's posterior-mean value): a terminal's own
        reward (free), the root's `prior_reward` (no state to denoise), an inner node's from one
        forward (none when the tree has its noise prediction already) and one reward call (metered);
        sets `meta["x0_class"]` on inner nodes."""
        out: dict[int, float] = {}
        inner = []
        for nid in dict.fromkeys(node_ids):
            node = tree.nodes[nid]
            if node.terminal:
                out[nid] = float(node.meta["reward"])
            elif "k" not in node.meta:
                out[nid] = self.prior_reward
            else:
                inner.append(nid)
        if inner:
            t0 = time.perf_counter()
            states = {nid: self.state(tree, nid) for nid in inner}
            eps, nfe = self.node_eps(tree, inner, states)
            x0s = [self.predicted_x0(*states[nid], eps[nid]) for nid in inner]
            rewards, classes = self.rewards(tree, x0s)
            for nid, r, c in zip(inner, rewards, classes, strict=True):
                out[nid] = r
                tree.nodes[nid].meta["x0_class"] = c
            self._record(nfe, len(inner), time.perf_counter() - t0)
        return [out[n] for n in node_ids]
