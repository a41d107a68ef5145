"""`self`: the policy judges its own latest step, P(Yes) of a yes/no question normalised over
{Yes, No} (MCTS-DPO's stepwise self-evaluation, Xie et al. 2024, arXiv 2405.00451)."""

from __future__ import annotations

import math

from pydantic import Field

from sharpen.core.budget import Budget, allowed_rows
from sharpen.core.errors import ConfigError
from sharpen.core.tree import Tree
from sharpen.search.process import LMProcess, Process, require_logprobs
from sharpen.search.registry import Options
from sharpen.search.registry import scorer as register_scorer
from sharpen.search.scorers.common import Scorer, unscored


def yes_share(yes: float, no: float) -> float:
    """P(Yes) / (P(Yes) + P(No)) from two log-probabilities; 0.5 (no information) when both are
    -inf, 1.0 or 0.0 when only one is."""
    m = max(yes, no)
    if m == -math.inf:
        return 0.5
    return math.exp(yes - m) / (math.exp(yes - m) + math.exp(no - m))


SELF_QUESTION = "Is the last step of this solution correct? Answer Yes or No."


class SelfScorer:
    """The policy judges its own latest step (MCTS-DPO, arXiv 2405.00451): the solution so far is
    shown as the assistant's turn, a user turn asks a yes/no question, and the value is
    P(Yes) / (P(Yes) + P(No)) of the first answer token. One generated token per node.

    When neither answer has a log-probability (a server's top log-probs hold neither token, so the
    backend gives both -inf), the judgement carries no information and the value is 0.5: both
    tokens' mass is then only bounded by the same smallest listed probability, so no ratio other
    than an even one is supported, and a NaN would break sorting, PUCT and max."""

    name = "self"

    def __init__(self, process: LMProcess, question: str = SELF_QUESTION, yes: str = "Yes", no: str = "No"):
        if not isinstance(process, LMProcess):
            raise ConfigError("the self scorer needs a language-model process (fix: choose another --scorer)")
        require_logprobs(process, "the `self` scorer (P(Yes) of a judgement)")
        self.process = process
        self.question = question
        self.yes, self.no = yes, no

    def cost(self, terminal: bool, budget: Budget | None = None) -> float:
        return 1

    def bind(self, process: LMProcess) -> SelfScorer:
        return SelfScorer(process, self.question, self.yes, self.no)

    def prompt(self, tree: Tree, node_id: int) -> str:
        return self.process.judge_prompt(tree, node_id, self.question)

    def score(self, tree: Tree, node_ids: list[int], budget: Budget | None = None) -> list[float | None]:
        todo = unscored(tree, node_ids)
        todo = todo[: allowed_rows(budget, len(todo), 1, "judge")]
        if todo:
            lps = self.process.next_token_logprobs([self.prompt(tree, n) for n in todo], [self.yes, self.no])
            for n, lp in zip(todo, lps, strict=True):
                tree.nodes[n].score = yes_share(lp[self.yes], lp[self.no])
        return [tree.nodes[n].score for n in node_ids]


class SelfOptions(Options):
    question: str = Field(SELF_QUESTION, description="the yes/no question put to the policy")


@register_scorer("self", SelfOptions)
def _self(process: Process, o: SelfOptions, collect: bool) -> Scorer:
    """The policy's P(Yes) that its latest step is correct (MCTS-DPO self-evaluation)."""
    return SelfScorer(process, question=o.question)  # type: ignore[arg-type]
