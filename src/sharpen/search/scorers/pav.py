"""`pav:<prm>[:alpha=1]`: progress under a PRM prover, V(after) + alpha * (V(after) - V(before))
(PAV, Setlur et al. 2024, "Rewarding Progress", arXiv 2410.08146)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from sharpen.core.budget import Budget, allowed_rows
from sharpen.core.lru import LRUDict
from sharpen.core.tree import Tree
from sharpen.search.process import Process
from sharpen.search.registry import MAX_ROWS, Options
from sharpen.search.registry import scorer as register_scorer
from sharpen.search.scorers import common
from sharpen.search.scorers.common import Scorer, unscored
from sharpen.search.scorers.prm import PRMScorer


class ProgressScorer(PRMScorer):
    """Progress under a prover (PAV, Setlur et al. 2024, "Rewarding Progress", arXiv 2410.08146): the
    prover's value after the step plus `alpha` times its advantage, the value after minus the value
    before, A(s_h) = V(s_h) - V(s_{h-1}); clipped to [0, 1]. The prover is a PRM (`sharpen train prm`),
    read at the node's last step and at its parent's (the prompt's last token for a first step).
    For beam search, PAV's Q + alpha * A ranks steps by what they add, not only by where they are."""

    name = "pav"

    def __init__(self, path: str | Path, process: Process, alpha: float = 1.0, batch: int = 16):
        super().__init__(path, process, batch=batch)
        self.alpha = alpha
        self._prompt_lens = LRUDict(common.PROMPTS_KEPT)  # every node of a tree shares its prompt: tokenized once

    def _prompt_len(self, prompt: str) -> int:
        if prompt not in self._prompt_lens:
            self._prompt_lens[prompt] = len(self.prm.encode([prompt], [[]])[0][0])
        return self._prompt_lens[prompt]

    def score(self, tree: Tree, node_ids: list[int], budget: Budget | None = None) -> list[float | None]:
        todo = unscored(tree, node_ids)
        todo = todo[: allowed_rows(budget, len(todo), 1, "judge")]
        if todo:
            t0 = time.perf_counter()
            head = self._prompt_len(self._context(tree)) - 1  # the context's last token
            enc = self._encode(tree, todo)
            at = [(ids, [head, *pos][-2:] if pos else [head, head]) for ids, pos in enc]
            for i, (before, after) in zip(todo, self._score_encoded(at), strict=True):
                advantage = after - before
                tree.nodes[i].score = min(1.0, max(0.0, after + self.alpha * advantage))
                tree.nodes[i].meta["advantage"] = advantage
            self._meter(enc, t0)
        return [tree.nodes[n].score for n in node_ids]


class ProgressOptions(Options):
    positional: ClassVar[tuple[str, ...]] = ("path",)
    path: str = Field(description="the prover: a PRM directory from `sharpen train prm`")
    alpha: float = Field(1.0, ge=0, description="weight of the advantage V(after) - V(before) beside V(after)")
    batch: int = Field(16, ge=1, le=MAX_ROWS, description="nodes per PRM forward pass")


@register_scorer("pav", ProgressOptions)
def _pav(process: Process, o: ProgressOptions, collect: bool) -> Scorer:
    """Progress under a PRM prover: V(after) + alpha x (V(after) - V(before)) (PAV, arXiv 2410.08146)."""
    return ProgressScorer(o.path, process, alpha=o.alpha, batch=o.batch)
