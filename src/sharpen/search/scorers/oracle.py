"""`oracle[:k][:prover=<policy>]`: ground truth, the task's verifier on k completions from a node.
Training-data collection only. With a prover, the completions are another policy's (PAV's prover,
Setlur et al. 2024, arXiv 2410.08146), so the step labels built from the values say whether that
policy finishes right from the step."""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from sharpen.core.budget import Budget
from sharpen.core.errors import ConfigError, ModelError
from sharpen.core.tree import Tree
from sharpen.search.process import LMProcess, Process, Rollout
from sharpen.search.registry import MAX_ROWS, Options
from sharpen.search.registry import scorer as register_scorer
from sharpen.search.scorers.common import Scorer, call_batched, policy_and_base
from sharpen.search.scorers.rollout import RolloutScorer


class ProverRollouts:
    """Monte Carlo completions from a second policy, the prover (PAV, Setlur et al. 2024, arXiv
    2410.08146), for the oracle scorer: a step's value becomes the share of the *prover's*
    completions from it that the task verifies, so the labels built from it say whether that policy
    finishes right from the step (with a prover stronger than the searching policy, whether the step
    leaves the problem solvable, less this policy's own later slips). The rollouts are the searching
    process's own `rollout` on a fork whose backend is the prover: prompt, sampling settings, row
    budget and stream seeds are the process's, so a prover equal to the policy gives the very
    rollouts the plain oracle does. The prover reads the policy's prompt text; any causal LM works."""

    def __init__(self, model: str, max_batch: int = 32):
        from sharpen.backends import load_backend

        try:
            self.backend = load_backend(model, seed=0, max_batch=max_batch)
        except (OSError, ValueError, ModelError) as e:
            reason = str(e).splitlines()[0].split(" (fix:")[0]
            raise ModelError(f"oracle prover: cannot load {model}: {reason} "
                             "(fix: oracle:<k>:prover=<a policy dir from `sharpen train`, or a model name>)") from None
        self.model = model

    def close(self) -> None:
        """Close the prover's backend (a server client's connections and thread)."""
        self.backend.close()

    def rollout(self, process: LMProcess, tree: Tree, node_ids: list[int], k: int,
                budget: Budget | None = None) -> list[list[Rollout]]:
        return process.fork(_ProverView(self.backend, process)).rollout(tree, node_ids, k, budget)


class _ProverView:
    """The prover's backend as one search sees it: its calls go through the search's `batched` (under
    lockstep batching, every search's prover rows in one call) and its tokens into the search's meter,
    so they count against the search's budget as rollouts do."""

    def __init__(self, backend, process: LMProcess):
        self.backend, self.process, self.meter = backend, process, process.meter

    def generate(self, prompts: list[str], params, seeds=None) -> list:
        from dataclasses import replace

        from sharpen.backends.base import prompt_seeds

        unseeded = replace(params, seed=None)  # each row brings its stream seed, so calls merge by settings alone
        rows = list(zip(prompts, prompt_seeds(params, len(prompts), seeds), strict=True))
        t0 = time.perf_counter()
        results = call_batched(self.process, ("prover", id(self.backend), unseeded),
                           lambda rs: self.backend.generate([r[0] for r in rs], unseeded, seeds=[r[1] for r in rs]),
                           rows)
        self.meter.record(sum(self.backend.count_tokens(q) for q in prompts) * params.n,
                          sum(c.num_tokens for comps in results for c in comps), time.perf_counter() - t0)
        return results


class OracleScorer(RolloutScorer):
    """Ground-truth value: a terminal node is 1 when verified correct, else 0; an inner node is the
    share of k completions verified correct. Sets `node.correct` on terminals it scores."""

    name = "oracle"

    def __init__(self, process: Process, k: int = 4, collect: bool = False, prover: ProverRollouts | None = None):
        if not collect:
            raise ConfigError(
                "the oracle scorer reads reference answers, so it may only be used to collect training data "
                "(fix: pass --collect, which searches the training split, or choose another --scorer)"
            )
        super().__init__(process, k)
        self.pool = False
        self.prover = prover

    def close(self) -> None:
        """Close the prover this scorer loaded (its copies from `bind` share it: close the original only)."""
        if self.prover is not None:
            self.prover.close()

    def _rollouts(self, tree: Tree, node_ids: list[int], budget: Budget | None) -> list:
        if self.prover is None:
            return super()._rollouts(tree, node_ids, budget)
        return self.prover.rollout(self.process, tree, node_ids, self.k, budget)

    def _terminal_value(self, tree: Tree, n: int) -> float:
        node = tree.nodes[n]
        node.correct = self.process.verify(tree, node.answer)
        return float(node.correct)

    def _value(self, tree: Tree, rolls) -> float:
        return sum(self.process.verify(tree, r.answer) for r in rolls) / len(rolls)


class OracleOptions(Options):
    positional: ClassVar[tuple[str, ...]] = ("k",)
    counts: ClassVar[tuple[str, ...]] = ("k",)
    k: int = Field(4, ge=1, le=MAX_ROWS, description="completions per scored node, each checked by the task's verifier")
    prover: str | None = Field(None, description="a second policy (a `sharpen train` output dir or a model) whose "
                               "completions value the steps (PAV's prover); default: the searching policy's")


@register_scorer("oracle", OracleOptions, collect_only=True)
def _oracle(process: Process, o: OracleOptions, collect: bool) -> Scorer:
    """The task's verifier on k completions (training-data collection only); prover=<policy>: its completions."""
    if not collect:  # refused before a prover is loaded
        return OracleScorer(process, o.k, collect=collect)
    prover = None
    if o.prover:
        if not isinstance(process, LMProcess):
            raise ConfigError("oracle:...:prover needs a language-model process (fix: drop prover=)")
        prover = ProverRollouts(policy_and_base(Path(o.prover))[0].as_posix() if Path(o.prover).exists() else o.prover,
                                max_batch=getattr(process.backend, "max_batch", 32))
    return OracleScorer(process, o.k, collect=collect, prover=prover)
