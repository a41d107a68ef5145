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
from typing import Protocol

from sharpen.budget import Budget, allowed_rows
from sharpen.errors import ConfigError, ModelError
from sharpen.process import LMProcess, Process
from sharpen.tree import Tree


class Scorer(Protocol):
    name: str

    def score(self, tree: Tree, node_ids: list[int], budget: Budget | None = None) -> list[float | None]:
        """Values in [0, 1] for `node_ids` (duplicates allowed), also written to `node.score`."""

    def cost(self, terminal: bool) -> int:
        """The most generated tokens scoring one (terminal or inner) node can spend, so that
        algorithms can leave room in the budget to score what they generate."""


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

    def cost(self, terminal: bool) -> int:
        return 0 if terminal else self.k * self.process.rollout_tokens

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

    def cost(self, terminal: bool) -> int:
        return 1

    def prompt(self, tree: Tree, node_id: int) -> str:
        p = self.process
        msgs = p.task.messages(p.problem(tree))
        msgs = msgs + [
            {"role": "assistant", "content": tree.text(node_id, p.delimiter)},
            {"role": "user", "content": self.question},
        ]
        return p.backend.chat_prompt(msgs)

    def score(self, tree: Tree, node_ids: list[int], budget: Budget | None = None) -> list[float | None]:
        todo = _todo(tree, node_ids)
        todo = todo[: allowed_rows(budget, len(todo), 1)]
        if todo:
            lps = self.process.backend.next_token_logprobs([self.prompt(tree, n) for n in todo], [self.yes, self.no])
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
    """A learned process reward model: `AutoModelForTokenClassification` over `prm_text`; the value
    of a node is the positive-class probability (class 1; sigmoid when there is a single label) at
    the last token of its step. One token per node is charged to the budget, like `self`.
    `path` is a model directory or the output directory of `sharpen train prm` (its `merged/`)."""

    name = "prm"

    def __init__(self, path: str | Path, process: Process, batch: int = 16, device: str | None = None):
        import torch
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        self.process = process
        self.batch = batch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if (Path(path) / "merged" / "config.json").exists():
            path = Path(path) / "merged"
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path))
            self.model = AutoModelForTokenClassification.from_pretrained(str(path)).to(self.device).eval()
        except (OSError, ValueError) as e:
            raise ModelError(
                f"cannot load a PRM from {path}: {str(e).splitlines()[0]} "
                "(fix: prm:<directory of a token-classification model trained by `sharpen train prm`>)"
            ) from None
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self.delimiter = getattr(process, "delimiter", "\n")

    def cost(self, terminal: bool) -> int:
        return 1

    def score(self, tree: Tree, node_ids: list[int], budget: Budget | None = None) -> list[float | None]:
        import torch

        todo = _todo(tree, node_ids)
        todo = todo[: allowed_rows(budget, len(todo), 1)]
        for start in range(0, len(todo), self.batch):
            chunk = todo[start : start + self.batch]
            t0 = time.perf_counter()
            prompt = tree.prompt or tree.question
            texts = [prm_text(prompt, [n.step for n in tree.path(i)], self.delimiter) for i in chunk]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            with torch.inference_mode():
                logits = self.model(**enc).logits.float()
            last = enc["attention_mask"].sum(1) - 1  # right padding: the last real token
            at = logits[torch.arange(len(chunk)), last]
            probs = torch.sigmoid(at[:, 0]) if at.shape[-1] == 1 else torch.softmax(at, -1)[:, 1]
            for i, v in zip(chunk, probs.tolist(), strict=True):
                tree.nodes[i].score = float(v)
            self.process.meter.record(int(enc["attention_mask"].sum()), len(chunk), time.perf_counter() - t0)
        return [tree.nodes[n].score for n in node_ids]


SCORERS = ("self", "rollout", "oracle", "prm:<path>", "distance")


def make_scorer(spec: str | None, process: Process, collect: bool = False) -> Scorer | None:
    """`self`, `rollout[:k][:pool]`, `oracle[:k]`, `prm:<path>`, `distance` (toy), or `none`/None."""
    if spec is None or spec == "none":
        return None
    kind, _, arg = spec.partition(":")
    if kind in ("rollout", "oracle"):
        pool = arg == "pool" or arg.endswith(":pool")
        arg = arg.removesuffix("pool").removesuffix(":")
        try:
            k = int(arg) if arg else 4
        except ValueError:
            raise ConfigError(f"bad scorer {spec!r} (fix: {kind}:<number of rollouts>, e.g. {kind}:4)") from None
        if k <= 0:
            raise ConfigError(f"bad scorer {spec!r} (fix: at least one rollout)")
        return RolloutScorer(process, k, pool) if kind == "rollout" else OracleScorer(process, k, collect=collect)
    if kind == "self":
        return SelfScorer(process)  # type: ignore[arg-type]
    if kind == "prm":
        if not arg:
            raise ConfigError("bad scorer 'prm' (fix: prm:<path to a trained PRM directory>)")
        return PRMScorer(arg, process)
    if kind == "distance":
        from sharpen.toy import DistanceScorer, RandomWalkProcess

        if not isinstance(process, RandomWalkProcess):
            raise ConfigError("the distance scorer works only on the toy random walk (fix: choose another --scorer)")
        return DistanceScorer(process)
    raise ConfigError(f"unknown scorer {spec!r} (fix: one of {', '.join(SCORERS)})")
