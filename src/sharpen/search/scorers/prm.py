"""`prm:<path>[:agg=last|min|prod|mean]`: a learned process reward model, a token-classification model
directory (Math-Shepherd, arXiv 2312.08935); a step's score is the positive-class probability at its
last token, and a node's value aggregates its path's step scores (`last` by default, as
search-and-learn does). The model is run by `sharpen.search.scorers.prm_model.PRMModel`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from sharpen.core.budget import Budget, allowed_rows
from sharpen.core.tree import Tree
from sharpen.search.process import Process
from sharpen.search.registry import MAX_ROWS, Options
from sharpen.search.registry import scorer as register_scorer
from sharpen.search.scorers.common import Aggregation, Scorer, aggregate, call_batched, unscored


def prm_text(prompt: str, steps: list[str], delimiter: str = "\n") -> str:
    """The PRM input, the format `sharpen.train.prm` trains on: the tree's rendered prompt, then
    each step followed by the delimiter. A step's label sits on the token holding its delimiter;
    for the node's own (last) step that is the last token of this text."""
    return prompt + "".join(s + delimiter for s in steps)


class PRMScorer:
    """A learned process reward model, loaded and run by `prm_model.PRMModel` (the one PRM inference
    path): the value of a node is the positive-class probability (class 1; sigmoid when there is a
    single label) at the last token of its step in `prm_text` of its path. One token per node is
    charged to the budget, like `self`.
    `path` is the output directory of `sharpen train prm` or its `merged/` (the steps are joined with
    the delimiter the PRM was trained with, from its sharpen_prm.json), or any token-classification
    model directory (then with the process's delimiter)."""

    name = "prm"

    def __init__(self, path: str | Path, process: Process, batch: int = 16, device: str | None = None,
                 agg: str = "last"):
        from sharpen.search.scorers.prm_model import PRMModel

        self.process = process
        self.batch = batch
        self.agg = agg
        self.prm = PRMModel.load(path, device=device, max_length=None, require_format=False,
                                 delimiter=getattr(process, "delimiter", "\n"))
        self.delimiter = self.prm.delimiter

    def bind(self, process: Process) -> PRMScorer:
        """The same PRM (model shared, not reloaded) scoring for another process."""
        import copy

        s = copy.copy(self)
        s.process = process
        return s

    def cost(self, terminal: bool, budget: Budget | None = None) -> float:
        return 1

    def score(self, tree: Tree, node_ids: list[int], budget: Budget | None = None) -> list[float | None]:
        todo = unscored(tree, node_ids)
        todo = todo[: allowed_rows(budget, len(todo), 1, "judge")]
        if todo:
            t0 = time.perf_counter()
            enc = self._encode(tree, todo)
            # a node's value sits on its own (last) step, or aggregates every step's (`agg`); the root,
            # with no step yet, on the prompt's last token
            last = self.agg == "last"
            enc = [(ids, (pos[-1:] if last else pos) if pos else [len(ids) - 1]) for ids, pos in enc]
            for i, p in zip(todo, self._score_encoded(enc), strict=True):
                tree.nodes[i].score = aggregate(p, self.agg)
            self._meter(enc, t0)
        return [tree.nodes[n].score for n in node_ids]

    def _encode(self, tree: Tree, todo: list[int]) -> list:
        return self.prm.encode([self._context(tree)] * len(todo), [[n.step for n in tree.path(i)] for i in todo])

    def _context(self, tree: Tree) -> str:
        """What the PRM reads before a tree's steps (its rendered prompt, or the bare question)."""
        return self.prm.context_of(tree.prompt, tree.question)

    def _meter(self, enc: list, t0: float) -> None:
        """One budget token per node; the PRM's input tokens as verifier tokens."""
        self.process.meter.record(0, len(enc), time.perf_counter() - t0, verifier_tokens=sum(len(ids) for ids, _ in enc))

    def _score_encoded(self, enc: list) -> list[list[float]]:
        """`PRMModel.score_encoded`, through the process's `batched` when it has one: under lockstep
        batching every search's nodes go through the PRM in one pass (`batch` sequences per forward)."""
        return call_batched(self.process, ("prm", id(self.prm)),
                        lambda items: self.prm.score_encoded(items, batch_size=self.batch), enc)


class PRMOptions(Options):
    positional: ClassVar[tuple[str, ...]] = ("path",)
    path: str = Field(description="a PRM directory from `sharpen train prm`")
    batch: int = Field(16, ge=1, le=MAX_ROWS, description="nodes per PRM forward pass")
    agg: Aggregation = Field("last", description="a path's value from its step scores: last, min, prod or mean")


@register_scorer("prm", PRMOptions)
def _prm(process: Process, o: PRMOptions, collect: bool) -> Scorer:
    """A learned process reward model (`sharpen train prm`)."""
    return PRMScorer(o.path, process, batch=o.batch, agg=o.agg)
