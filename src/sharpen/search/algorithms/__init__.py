"""Search algorithms: each grows one `Tree` under a budget in generated tokens, talking only to a
process (`sharpen.search.process`) and a scorer (`sharpen.search.scorers`). Every one has the signature

    fn(process, scorer, problem, budget_tokens, seed, **options) -> Tree

validates its options with its own options class, registers itself with `sharpen.search.registry.algorithm`,
and fills `tree.answer`, `tree.chosen`, `tree.algo` and `tree.usage` (what was actually spent).
A new algorithm is one new module in this package: it is found and registered on first use.
"""

from __future__ import annotations

from sharpen.search.algorithms.beam import beam_search
from sharpen.search.algorithms.bon import best_of_n, majority_vote
from sharpen.search.algorithms.mcts import mcts
from sharpen.search.algorithms.pf import particle_filter
from sharpen.search.algorithms.weighted import weighted_vote_search
from sharpen.search.registry import algorithms, get_algorithm

# name -> function and the names that need a scorer, of every registered algorithm (built-ins and
# modules of this package; `sharpen.search.registry.algorithms()` also holds later registrations)
ALGORITHMS = {name: entry.fn for name, entry in algorithms().items()}
NEEDS_SCORER = {name for name, entry in algorithms().items() if entry.needs_scorer}

__all__ = [
    "ALGORITHMS",
    "NEEDS_SCORER",
    "algorithms",
    "best_of_n",
    "majority_vote",
    "weighted_vote_search",
    "beam_search",
    "mcts",
    "particle_filter",
    "get_algorithm",
]
