"""`distance`: the toy random walk's heuristic (`sharpen.search.toy.DistanceScorer`), for tests and
examples."""

from __future__ import annotations

from pydantic import Field

from sharpen.core.errors import ConfigError
from sharpen.search.process import Process
from sharpen.search.registry import Options
from sharpen.search.registry import scorer as register_scorer
from sharpen.search.scorers.common import Scorer


class DistanceOptions(Options):
    noise: float = Field(0.1, ge=0, description="std of the deterministic noise on the toy heuristic")


@register_scorer("distance", DistanceOptions)
def _distance(process: Process, o: DistanceOptions, collect: bool) -> Scorer:
    """The toy random walk's heuristic (tests and examples only)."""
    from sharpen.search.toy import DistanceScorer, RandomWalkProcess

    if not isinstance(process, RandomWalkProcess):
        raise ConfigError("the distance scorer works only on the toy random walk (fix: choose another --scorer)")
    return DistanceScorer(process, noise=o.noise)
