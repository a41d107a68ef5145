"""Step samples from two models: the policy, and for a share of the rows a second model (the run's
starting model). After a round of DPO the policy's sibling steps repeat (benchmarks/starvation.py), so
fewer sibling pairs split by value; drawing part of each expansion from the reference model keeps the
siblings apart while rollouts, and so the values that label them, stay the policy's.

Only step calls (`stop_at="step"`, sampled) are split: each row goes to the second model with
probability `share`, decided by the row's own stream seed, so a row's model and text do not depend on
which rows share the call (the lockstep batcher's flattened rows get the same split). Completions,
rollouts, greedy calls and log-probabilities are the policy's. Both models' tokens go into one meter.
The two models must share a tokenizer (a policy and the model it was trained from do).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sharpen.backends.base import (
    Backend,
    BackendBase,
    Completion,
    SamplingParams,
    close_all,
    mix_seed,
    prompt_seeds,
    row_seed,
)

_SPLIT = 0x5EED_0F_2E  # salt: which model a row goes to is independent of the row's own sampling


class MixtureBackend(BackendBase):
    def __init__(self, main: Backend, other: Backend, share: float):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must lie in [0, 1], not {share}")
        self.main, self.other, self.share = main, other, share
        other.meter = main.meter  # one budget: both models' tokens count
        self.meter = main.meter
        self.rows = {"main": 0, "other": 0}  # step rows each model sampled
        self._rng = random.Random(0)

    def __getattr__(self, name: str) -> Any:
        """Everything but `generate` is the policy's: name, eos_text, chat_prompt, count_tokens,
        next_token_logprobs, tokenizer, require_logprobs, ..."""
        if name == "main":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.main, name)

    def close(self) -> None:
        """Close both models' backends."""
        close_all(self.main, self.other)

    def to_other(self, seed: int) -> bool:
        return random.Random(mix_seed(seed, _SPLIT)).random() < self.share

    def generate(self, prompts: list[str], params: SamplingParams, seeds: Sequence[int] | None = None
                 ) -> list[list[Completion]]:
        if params.stop_at != "step" or params.greedy or self.share <= 0.0 or not prompts:
            return self.main.generate(prompts, params, seeds)
        pseeds = prompt_seeds(params, len(prompts), seeds, self._rng)
        rows = [(i, row_seed(s, j)) for i, s in enumerate(pseeds) for j in range(params.n)]
        parts: dict[str, list[int]] = {"main": [], "other": []}
        for r, (_, s) in enumerate(rows):
            parts["other" if self.to_other(s) else "main"].append(r)
        done: dict[int, Completion] = {}
        one = replace(params, n=1, seed=None)
        for which, backend in (("main", self.main), ("other", self.other)):
            idx = parts[which]
            if idx:
                # a one-sample row with seed row_seed(s, j) samples the stream of row j of seed s
                out = backend.generate([prompts[rows[r][0]] for r in idx], one, seeds=[rows[r][1] for r in idx])
                for r, res in zip(idx, out, strict=True):
                    done[r] = res[0]
                self.rows[which] += len(idx)
        result: list[list[Completion]] = [[] for _ in prompts]
        for r, (i, _) in enumerate(rows):
            result[i].append(done[r])
        return result
