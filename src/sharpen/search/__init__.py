"""Search algorithms: each grows one `Tree` under a budget in generated tokens, talking only to a
process (`sharpen.process`) and a scorer (`sharpen.scorers`). Every one has the signature

    fn(process, scorer, problem, budget_tokens, seed, **cfg) -> Tree

and fills `tree.answer`, `tree.chosen`, `tree.algo` and `tree.usage` (what was actually spent).
"""

from __future__ import annotations

from collections.abc import Callable

from sharpen.errors import ConfigError
from sharpen.search.beam import beam_search
from sharpen.search.bon import best_of_n, majority_vote
from sharpen.search.mcts import mcts
from sharpen.search.pf import particle_filter
from sharpen.search.weighted import weighted_vote_search
from sharpen.tree import Tree

Algorithm = Callable[..., Tree]

ALGORITHMS: dict[str, Algorithm] = {
    "bon": best_of_n,
    "vote": majority_vote,
    "weighted": weighted_vote_search,
    "beam": beam_search,
    "mcts": mcts,
    "pf": particle_filter,
}

# algorithms that need a scorer (vote ignores it)
NEEDS_SCORER = {"bon", "weighted", "beam", "mcts", "pf"}


def get_algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {name!r} (fix: one of {', '.join(ALGORITHMS)})")
    return ALGORITHMS[name]


__all__ = [
    "ALGORITHMS",
    "NEEDS_SCORER",
    "best_of_n",
    "majority_vote",
    "weighted_vote_search",
    "beam_search",
    "mcts",
    "particle_filter",
    "get_algorithm",
]
