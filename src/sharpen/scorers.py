"""Scorers give nodes values in [0, 1], batched; the tokens they spend count against the budget.

- `self`: the policy judges the latest step, P(Yes) of a yes/no question normalised over
  {Yes, No} (MCTS-DPO's stepwise self-evaluation, Xie et al. 2024, arXiv 2405.00451).
- `rollout[:k]`: k Monte Carlo completions from the node; value = share that agree with their own
  majority answer (self-consistency as a value; no ground truth).
- `oracle[:k]`: the task's verifier on k completions; value = share correct. Training data
  collection only (`collect=True`, the CLI's `--collect`); refused otherwise.
- `prm:<path>`: a learned process reward model, a token-classification model directory; the
  value is the positive-class probability at the node's last step-boundary token.
- `distance`: the toy random walk's heuristic (`sharpen.toy.DistanceScorer`).

Every scorer caches: a node with `score` already set is not scored again and costs nothing.
A node the budget does not allow scoring is returned as None and keeps `score = None`.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path
from typing import ClassVar, Protocol

from pydantic import Field

from sharpen.budget import Budget, allowed_rows
from sharpen.errors import ConfigError
from sharpen.process import LMProcess, Process
from sharpen.registry import Options, parse_scorer
from sharpen.registry import scorer as register_scorer
from sharpen.tree import Tree


class Scorer(Protocol):
    name: str

    def score(self, tree: Tree, node_ids: list[int], budget: Budget | None = None) -> list[float | None]:
        """Values in [0, 1] for `node_ids` (duplicates allowed), also written to `node.score`."""

    def cost(self, terminal: bool, budget: Budget | None = None) -> float:
        """The generated tokens scoring one (terminal or inner) node is expected to spend: at the row
        costs measured so far in `budget`'s search, or at their maximum without one. Algorithms
        leave room in the budget to score what they generate."""


def _todo(tree: Tree, node_ids: list[int]) -> list[int]:
    return list(dict.fromkeys(n for n in node_ids if tree.nodes[n].score is None))


def majority_share(keys: list[str | None]) -> float:
    """Share of `keys` equal to their most common non-None key (0 when there is none)."""
    counts = Counter(k for k in keys if k is not None)
    return counts.most_common(1)[0][1] / len(keys) if counts and keys else 0.0


class RolloutScorer:
    """Monte Carlo value without ground truth from k completions of the node.

    `pool=False`: value = share of the k completions agreeing with their own majority answer; a
    terminal node is its own only completion (1 when it has an answer, else 0).
    `pool=True`: the majority is taken over every completion made so far in this tree (the
    self-consistency answer so far, `tree.meta["rollout_answers"]`, terminal answers included), so nodes whose rollouts agree
    with the tree's consensus score high, and a terminal node scores the share of the pool that
    agrees with its answer. Own-majority agreement rewards low-entropy states and gives every
    terminal 1; the pool fixes both."""

    name = "rollout"

    def __init__(self, process: Process, k: int = 4, pool: bool = False):
        self.process = process
        self.k = k
        self.pool = pool

    def bind(self, process: Process) -> RolloutScorer:
        """The same scorer on another process (one search's fork under lockstep batching)."""
        import copy

        s = copy.copy(self)
        s.process = process
        return s

    def cost(self, terminal: bool, budget: Budget | None = None) -> float:
        if terminal:
            return 0
        row = self.process.rollout_tokens
        return self.k * (budget.expected("answer", row) if budget is not None else row)

    def score(self, tree: Tree, node_ids: list[int], budget: Budget | None = None) -> list[float | None]:
        todo = _todo(tree, node_ids)
        inner = [n for n in todo if not tree.nodes[n].terminal]
        results = self.process.rollout(tree, inner, self.k, budget)
        if self.pool:
            pooled = tree.meta.setdefault("rollout_answers", [])
            pooled += [self.process.vote_key(r.answer) for rolls in results for r in rolls]
            pooled += [self.process.vote_key(tree.nodes[n].answer) for n in todo if tree.nodes[n].terminal]
        for n in todo:
            if tree.nodes[n].terminal:
                tree.nodes[n].score = self._terminal_value(tree, n)
        for n, rolls in zip(inner, results, strict=True):
            if rolls:
                tree.nodes[n].score = self._value(tree, rolls)
                tree.nodes[n].meta["rollouts"] = [r.answer for r in rolls]
        return [tree.nodes[n].score for n in node_ids]

    def _terminal_value(self, tree: Tree, n: int) -> float:
        key = self.process.vote_key(tree.nodes[n].answer)
        if key is None:
            return 0.0
        pooled = tree.meta.get("rollout_answers") if self.pool else None
        return pooled.count(key) / len(pooled) if pooled else 1.0

    def _value(self, tree: Tree, rolls) -> float:
        keys = [self.process.vote_key(r.answer) for r in rolls]
        pooled = tree.meta.get("rollout_answers") if self.pool else None
        if not pooled:
            return majority_share(keys)
        top = Counter(k for k in pooled if k is not None).most_common(1)
        return sum(k == top[0][0] for k in keys) / len(keys) if top else 0.0


class OracleScorer(RolloutScorer):
    """Ground-truth value: a terminal node is 1 when verified correct, else 0; an inner node is the
    share of k completions verified correct. Sets `node.correct` on terminals it scores."""

    name = "oracle"

    def __init__(self, process: Process, k: int = 4, collect: bool = False):
        if not collect:
            raise ConfigError(
                "the oracle scorer reads reference answers, so it may only be used to collect training data "
                "(fix: pass --collect, which searches the training split, or choose another --scorer)"
            )
        super().__init__(process, k)
        self.pool = False

    def _terminal_value(self, tree: Tree, n: int) -> float:
        node = tree.nodes[n]
        node.correct = self.process.verify(tree, node.answer)
        return float(node.correct)

    def _value(self, tree: Tree, rolls) -> float:
        return sum(self.process.verify(tree, r.answer) for r in rolls) / len(rolls)


SELF_QUESTION = "Is the last step of this solution correct? Answer Yes or No."


class SelfScorer:
    """The policy judges its own latest step (MCTS-DPO, arXiv 2405.00451): the solution so far is
    shown as the assistant's turn, a user turn asks a yes/no question, and the value is
    P(Yes) / (P(Yes) + P(No)) of the first answer token. One generated token per node."""

    name = "self"

    def __init__(self, process: LMProcess, question: str = SELF_QUESTION, yes: str = "Yes", no: str = "No"):
        if not isinstance(process, LMProcess):
            raise ConfigError("the self scorer needs a language-model process (fix: choose another --scorer)")
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
        todo = _todo(tree, node_ids)
        todo = todo[: allowed_rows(budget, len(todo), 1, "judge")]
        if todo:
            lps = self.process.next_token_logprobs([self.prompt(tree, n) for n in todo], [self.yes, self.no])
            for n, lp in zip(todo, lps, strict=True):
                y, no = lp[self.yes], lp[self.no]
                m = max(y, no)
                tree.nodes[n].score = math.exp(y - m) / (math.exp(y - m) + math.exp(no - m))
        return [tree.nodes[n].score for n in node_ids]


def prm_text(prompt: str, steps: list[str], delimiter: str = "\n") -> str:
    """The PRM input, the format `sharpen.train.prm` trains on: the tree's rendered prompt, then
    each step followed by the delimiter. A step's label sits on the token holding its delimiter;
    for the node's own (last) step that is the last token of this text."""
    return prompt + "".join(s + delimiter for s in steps)


class PRMScorer:
    """A learned process reward model, loaded and run by `sharpen.train.prm.PRMModel` (the one PRM
    inference path): the value of a node is the positive-class probability (class 1; sigmoid when
    there is a single label) at the last token of its step in `prm_text` of its path. One token per
    node is charged to the budget, like `self`.
    `path` is the output directory of `sharpen train prm` or its `merged/` (the steps are joined with
    the delimiter the PRM was trained with, from its sharpen_prm.json), or any token-classification
    model directory (then with the process's delimiter)."""

    name = "prm"

    def __init__(self, path: str | Path, process: Process, batch: int = 16, device: str | None = None):
        from sharpen.train.prm import PRMModel

        self.process = process
        self.batch = batch
        self.prm = PRMModel.load(path, device=device, max_length=None, require_format=False,
                                 delimiter=getattr(process, "delimiter", "\n"))
        self.model, self.tokenizer, self.device = self.prm.model, self.prm.tokenizer, self.prm.device
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
        todo = _todo(tree, node_ids)
        todo = todo[: allowed_rows(budget, len(todo), 1, "judge")]
        prompt = tree.prompt or tree.question
        for start in range(0, len(todo), self.batch):
            chunk = todo[start : start + self.batch]
            t0 = time.perf_counter()
            enc = self.prm.encode([prompt] * len(chunk), [[n.step for n in tree.path(i)] for i in chunk])
            # a node's value sits on its own (last) step; the root, with no step yet, on the prompt's last token
            enc = [(ids, pos[-1:] if pos else [len(ids) - 1]) for ids, pos in enc]
            probs = self.prm.score_encoded(enc, batch_size=len(chunk))
            for i, p in zip(chunk, probs, strict=True):
                tree.nodes[i].score = p[0]
            self.process.meter.record(sum(len(ids) for ids, _ in enc), len(chunk), time.perf_counter() - t0)
        return [tree.nodes[n].score for n in node_ids]


class RolloutOptions(Options):
    positional: ClassVar[tuple[str, ...]] = ("k",)
    k: int = Field(4, ge=1, description="completions per scored node")
    pool: bool = Field(False, description="agreement with the tree's pooled majority instead of the node's own")


class OracleOptions(Options):
    positional: ClassVar[tuple[str, ...]] = ("k",)
    k: int = Field(4, ge=1, description="completions per scored node, each checked by the task's verifier")


class SelfOptions(Options):
    question: str = Field(SELF_QUESTION, description="the yes/no question put to the policy")


class PRMOptions(Options):
    positional: ClassVar[tuple[str, ...]] = ("path",)
    path: str = Field(description="a PRM directory from `sharpen train prm`")
    batch: int = Field(16, ge=1, description="nodes per PRM forward pass")


class DistanceOptions(Options):
    noise: float = Field(0.1, ge=0, description="std of the deterministic noise on the toy heuristic")


@register_scorer("rollout", RolloutOptions)
def _rollout(process: Process, o: RolloutOptions, collect: bool) -> Scorer:
    """Agreement of k Monte Carlo completions (self-consistency as a value; no ground truth)."""
    return RolloutScorer(process, o.k, o.pool)


@register_scorer("oracle", OracleOptions, collect_only=True)
def _oracle(process: Process, o: OracleOptions, collect: bool) -> Scorer:
    """The task's verifier on k completions (training-data collection only)."""
    return OracleScorer(process, o.k, collect=collect)


@register_scorer("self", SelfOptions)
def _self(process: Process, o: SelfOptions, collect: bool) -> Scorer:
    """The policy's P(Yes) that its latest step is correct (MCTS-DPO self-evaluation)."""
    return SelfScorer(process, question=o.question)  # type: ignore[arg-type]


@register_scorer("prm", PRMOptions)
def _prm(process: Process, o: PRMOptions, collect: bool) -> Scorer:
    """A learned process reward model (`sharpen train prm`)."""
    return PRMScorer(o.path, process, batch=o.batch)


@register_scorer("distance", DistanceOptions)
def _distance(process: Process, o: DistanceOptions, collect: bool) -> Scorer:
    """The toy random walk's heuristic (tests and examples only)."""
    from sharpen.toy import DistanceScorer, RandomWalkProcess

    if not isinstance(process, RandomWalkProcess):
        raise ConfigError("the distance scorer works only on the toy random walk (fix: choose another --scorer)")
    return DistanceScorer(process, noise=o.noise)


def make_scorer(spec: str | None, process: Process, collect: bool = False) -> Scorer | None:
    """A scorer from its spec (`sharpen.registry.parse_scorer`: `self`, `rollout[:k][:pool]`,
    `oracle[:k]`, `prm:<path>`, `distance`, or any registered one), or None for `none`/None.
    `collect` allows the scorers that read reference answers (training-data collection)."""
    if spec is None or spec == "none":
        return None
    parsed = parse_scorer(spec)
    return parsed.entry.factory(process, parsed.options, collect)
