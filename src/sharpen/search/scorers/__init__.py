"""Scorers give nodes values in [0, 1], batched; the tokens they spend count against the budget.
One module per scorer (named in brackets), each registering itself with `sharpen.search.registry.scorer`;
shared helpers in `common`:

- `self` (`self_eval`): the policy judges the latest step, P(Yes) of a yes/no question normalised over
  {Yes, No} (MCTS-DPO's stepwise self-evaluation, Xie et al. 2024, arXiv 2405.00451).
- `rollout[:k]` (`rollout`): k Monte Carlo completions from the node; value = share that agree with their own
  majority answer (self-consistency as a value; no ground truth).
- `oracle[:k][:prover=<policy>]` (`oracle`): the task's verifier on k completions; value = share correct.
  Training data collection only (`collect=True`, the CLI's `--collect`); refused otherwise. With a
  prover, the completions are another policy's (PAV's prover, arXiv 2410.08146): the values, and so
  the step labels built from them, say whether that policy finishes right from the step.
- `prm:<path>[:agg=last|min|prod|mean]` (`prm`, the model in `prm_model`): a learned process reward model, a token-classification
  model directory; a step's score is the positive-class probability at its last token, and a
  node's value aggregates its path's step scores (`last` by default, as search-and-learn does).
- `pav:<prm>[:alpha=1]` (`pav`): progress under a PRM prover, V(after) + alpha * (V(after) - V(before))
  (PAV, arXiv 2410.08146).
- `implicit:<policy>[:ref=<dir>][:beta=0.1][:agg=...]` (`implicit`): the implicit PRM of a trained policy,
  sigmoid(beta * sum log pi/pi_ref) over the path's steps (arXiv 2412.01981).
- `distance` (`distance`): the toy random walk's heuristic (`sharpen.search.toy.DistanceScorer`).

Every scorer caches: a node with `score` already set is not scored again and costs nothing.
A node the budget does not allow scoring is returned as None and keeps `score = None`.
`make_scorer(spec, process)` builds one from its spec. A new scorer is one new module here, imported below.
"""

from __future__ import annotations

# isort: off
# the modules register their scorers when imported, in this order (the order `sharpen algos` lists them)
from sharpen.search.scorers.rollout import RolloutOptions, RolloutScorer, majority_share
from sharpen.search.scorers.oracle import OracleOptions, OracleScorer, ProverRollouts
from sharpen.search.scorers.self_eval import SELF_QUESTION, SelfOptions, SelfScorer, yes_share
from sharpen.search.scorers.prm import PRMOptions, PRMScorer, prm_text
from sharpen.search.scorers.pav import ProgressOptions, ProgressScorer
from sharpen.search.scorers.implicit import ImplicitOptions, ImplicitPRMScorer
from sharpen.search.scorers.distance import DistanceOptions
from sharpen.search.scorers import digits  # noqa: F401  (registers x0-reward and mc-reward)

# isort: on
from sharpen.search.process import Process
from sharpen.search.registry import parse_scorer
from sharpen.search.scorers.common import AGGREGATIONS, Aggregation, Scorer, aggregate


def make_scorer(spec: str | None, process: Process, collect: bool = False) -> Scorer | None:
    """A scorer from its spec (`sharpen.search.registry.parse_scorer`: `self`, `rollout[:k][:pool]`,
    `oracle[:k]`, `prm:<path>`, `distance`, or any registered one), or None for `none`/None.
    `collect` allows the scorers that read reference answers (training-data collection)."""
    if spec is None or spec == "none":
        return None
    parsed = parse_scorer(spec)
    return parsed.entry.factory(process, parsed.options, collect)


__all__ = [
    "AGGREGATIONS",
    "Aggregation",
    "DistanceOptions",
    "ImplicitOptions",
    "ImplicitPRMScorer",
    "OracleOptions",
    "OracleScorer",
    "PRMOptions",
    "PRMScorer",
    "ProgressOptions",
    "ProgressScorer",
    "ProverRollouts",
    "RolloutOptions",
    "RolloutScorer",
    "SELF_QUESTION",
    "Scorer",
    "SelfOptions",
    "SelfScorer",
    "aggregate",
    "majority_share",
    "make_scorer",
    "prm_text",
    "yes_share",
]
