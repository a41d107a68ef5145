"""Scorers give nodes values in [0, 1], batched; the tokens they spend count against the budget.

- `self`: the policy judges the latest step, P(Yes) of a yes/no question normalised over
  {Yes, No} (MCTS-DPO's stepwise self-evaluation, Xie et al. 2024, arXiv 2405.00451).
- `rollout[:k]`: k Monte Carlo completions from the node; value = share that agree with their own
  majority answer (self-consistency as a value; no ground truth).
- `oracle[:k][:prover=<policy>]`: the task's verifier on k completions; value = share correct.
  Training data collection only (`collect=True`, the CLI's `--collect`); refused otherwise. With a
  prover, the completions are another policy's (PAV's prover, arXiv 2410.08146): the values, and so
  the step labels built from them, say whether that policy finishes right from the step.
- `prm:<path>[:agg=last|min|prod|mean]`: a learned process reward model, a token-classification
  model directory; a step's score is the positive-class probability at its last token, and a
  node's value aggregates its path's step scores (`last` by default, as search-and-learn does).
- `pav:<prm>[:alpha=1]`: progress under a PRM prover, V(after) + alpha * (V(after) - V(before))
  (PAV, arXiv 2410.08146).
- `implicit:<policy>[:ref=<dir>][:beta=0.1][:agg=...]`: the implicit PRM of a trained policy,
  sigmoid(beta * sum log pi/pi_ref) over the path's steps (arXiv 2412.01981).
- `distance`: the toy random walk's heuristic (`sharpen.search.toy.DistanceScorer`).

Every scorer caches: a node with `score` already set is not scored again and costs nothing.
A node the budget does not allow scoring is returned as None and keeps `score = None`.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path
from typing import ClassVar, Literal, Protocol

from pydantic import Field

from sharpen.core.budget import Budget, allowed_rows
from sharpen.core.errors import ConfigError, ModelError
from sharpen.core.lru import LRUDict
from sharpen.core.tree import Tree
from sharpen.search.process import LMProcess, Process, Rollout, require_logprobs
from sharpen.search.registry import Options, parse_scorer
from sharpen.search.registry import scorer as register_scorer


class Scorer(Protocol):
    name: str

    def score(self, tree: Tree, node_ids: list[int], budget: Budget | None = None) -> list[float | None]:
        """Values in [0, 1] for `node_ids` (duplicates allowed), also written to `node.score`."""

    def cost(self, terminal: bool, budget: Budget | None = None) -> float:
        """The generated tokens scoring one (terminal or inner) node is expected to spend: at the row
        costs measured so far in `budget`'s search, or at their maximum without one. Algorithms
        leave room in the budget to score what they generate."""


AGGREGATIONS = ("last", "min", "prod", "mean")


def aggregate(step_scores: list[float], how: str) -> float:
    """One value for a path from its steps' scores (search-and-learn's PRM aggregation): the last
    step's, the smallest, the product or the mean."""
    if not step_scores:
        return 0.0
    if how == "last":
        return step_scores[-1]
    if how == "min":
        return min(step_scores)
    if how == "prod":
        return math.prod(step_scores)
    return sum(step_scores) / len(step_scores)


def _batched(process: Process, key, fn, items: list) -> list:
    """`fn(items)` through the process's `batched` (merged with other searches' calls under lockstep
    batching) when it has one, else directly."""
    batched = getattr(process, "batched", None)
    return batched(key, fn, items) if batched else fn(items)


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
        results = self._rollouts(tree, inner, budget)
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

    def _rollouts(self, tree: Tree, node_ids: list[int], budget: Budget | None) -> list:
        return self.process.rollout(tree, node_ids, self.k, budget)

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
        results = _batched(self.process, ("prover", id(self.backend), unseeded),
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
        todo = _todo(tree, node_ids)
        todo = todo[: allowed_rows(budget, len(todo), 1, "judge")]
        if todo:
            lps = self.process.next_token_logprobs([self.prompt(tree, n) for n in todo], [self.yes, self.no])
            for n, lp in zip(todo, lps, strict=True):
                tree.nodes[n].score = yes_share(lp[self.yes], lp[self.no])
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

    def __init__(self, path: str | Path, process: Process, batch: int = 16, device: str | None = None,
                 agg: str = "last"):
        from sharpen.search.prm import PRMModel

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
        todo = _todo(tree, node_ids)
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
        return _batched(self.process, ("prm", id(self.prm)),
                        lambda items: self.prm.score_encoded(items, batch_size=self.batch), enc)


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
        self._prompt_lens = LRUDict(256)  # every node of a tree shares its prompt: tokenized once

    def _prompt_len(self, prompt: str) -> int:
        if prompt not in self._prompt_lens:
            self._prompt_lens[prompt] = len(self.prm.encode([prompt], [[]])[0][0])
        return self._prompt_lens[prompt]

    def score(self, tree: Tree, node_ids: list[int], budget: Budget | None = None) -> list[float | None]:
        todo = _todo(tree, node_ids)
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


class ImplicitPRMScorer:
    """The implicit process reward of a trained policy (Yuan et al. 2024, "Free Process Rewards
    without Process Labels", arXiv 2412.01981): with q_t = beta * sum over the tokens of steps 1..t of
    log pi(y|x, y_<) - log pi_ref(y|x, y_<), the score of step t is sigmoid(q_t), and a node's value
    aggregates its path's step scores (`agg`; "last" = sigmoid(q) of the whole path). The steps'
    tokens are the tree's own token ids, so policy and reference must share the process's
    tokenizer. No training beyond the DPO/SFT that made the policy. One token per node is charged
    to the budget, like `prm`; the tokens both models process are the meter's verifier tokens."""

    name = "implicit"

    def __init__(self, process: Process, path: str | Path, ref: str | None = None, beta: float = 0.1,
                 agg: str = "last", batch: int = 8, device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM

        from sharpen.backends.models import resolve_model

        self.process, self.beta, self.agg, self.batch = process, beta, agg, batch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        policy, base = _policy_and_base(Path(path))
        ref = ref or base
        if ref is None:
            raise ConfigError(f"implicit:{path}: no reference policy recorded (fix: implicit:{path}:ref=<base model>)")
        self.models = []
        for what, p in (("policy", policy), ("reference", ref)):
            try:
                m = AutoModelForCausalLM.from_pretrained(str(resolve_model(str(p))), dtype=torch.float32)
            except (OSError, ValueError) as e:
                raise ModelError(f"implicit scorer: cannot load the {what} from {p}: {str(e).splitlines()[0]} "
                                 "(fix: implicit:<policy dir from `sharpen train dpo`>[:ref=<model>])") from None
            self.models.append(m.to(self.device).eval())
        self.policy_path, self.ref_path = str(policy), str(ref)
        self._prompt_ids = LRUDict(256)  # per tree's prompt; bounded for a long-lived server

    def cost(self, terminal: bool, budget: Budget | None = None) -> float:
        return 1

    def bind(self, process: Process) -> ImplicitPRMScorer:
        import copy

        s = copy.copy(self)
        s.process = process
        return s

    def _log_ratios(self, rows: list[list[int]]) -> list:
        """Per row, log pi - log pi_ref of each token after the first (`batch` rows per forward)."""
        out = []
        for i in range(0, len(rows), self.batch):
            chunk = rows[i : i + self.batch]
            pol, ref = (self._token_logprobs(m, chunk) for m in self.models)
            out += [(p - r)[: len(row) - 1] for p, r, row in zip(pol, ref, chunk, strict=True)]
        return out

    def _token_logprobs(self, model, rows: list[list[int]]):
        import torch

        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, : len(r)] = torch.tensor(r)
            mask[j, : len(r)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits.float()
        lp = torch.log_softmax(logits[:, :-1], dim=-1).gather(2, ids[:, 1:, None].to(self.device)).squeeze(2)
        return lp.cpu()  # lp[j, i] = log p(token i + 1 | tokens 0..i)

    def score(self, tree: Tree, node_ids: list[int], budget: Budget | None = None) -> list[float | None]:
        todo = _todo(tree, node_ids)
        todo = todo[: allowed_rows(budget, len(todo), 1, "judge")]
        backend = getattr(self.process, "backend", None)
        if backend is None or not hasattr(backend, "tokenizer"):
            raise ConfigError("the implicit scorer needs a language-model process with a local tokenizer "
                              "(fix: choose another --scorer)")
        if tree.prompt not in self._prompt_ids:  # every node of a tree shares its prompt: tokenized once
            self._prompt_ids[tree.prompt] = backend.tokenizer(tree.prompt, add_special_tokens=False)["input_ids"]
        prompt_ids = self._prompt_ids[tree.prompt]
        if not todo or not prompt_ids:
            return [tree.nodes[n].score for n in node_ids]
        t0 = time.perf_counter()
        paths = [tree.path(n) for n in todo]
        rows = [prompt_ids + [t for m in path for t in m.token_ids] for path in paths]
        ratios = _batched(self.process, ("implicit", id(self.models[0])), self._log_ratios, rows)  # one key for every bound copy
        for n, path, ratio in zip(todo, paths, ratios, strict=True):
            q, scores, at = 0.0, [], len(prompt_ids) - 1  # index of the first step token's log-ratio
            for m in path:
                k = len(m.token_ids)
                q += self.beta * float(ratio[at : at + k].sum())
                at += k
                scores.append(1.0 / (1.0 + math.exp(-q)))
            tree.nodes[n].score = aggregate(scores, self.agg) if scores else 0.5
        self.process.meter.record(0, len(todo), time.perf_counter() - t0,
                                  verifier_tokens=2 * sum(len(r) for r in rows))
        return [tree.nodes[n].score for n in node_ids]


def _policy_and_base(path: Path) -> tuple[Path, str | None]:
    """A trained policy's weights (`out/merged` of `sharpen train`, or the dir itself) and the base
    model it was trained from (its sharpen_train.json's `config.model`), when recorded."""
    import json

    out = path.parent if path.name == "merged" else path
    policy = out / "merged" if (out / "merged" / "config.json").exists() else path
    summary = out / "sharpen_train.json"
    base = None
    if summary.exists():
        try:
            base = json.loads(summary.read_text()).get("config", {}).get("model")
        except (ValueError, AttributeError):
            base = None
    return policy, base


class RolloutOptions(Options):
    positional: ClassVar[tuple[str, ...]] = ("k",)
    k: int = Field(4, ge=1, description="completions per scored node")
    pool: bool = Field(False, description="agreement with the tree's pooled majority instead of the node's own")


class OracleOptions(Options):
    positional: ClassVar[tuple[str, ...]] = ("k",)
    k: int = Field(4, ge=1, description="completions per scored node, each checked by the task's verifier")
    prover: str | None = Field(None, description="a second policy (a `sharpen train` output dir or a model) whose "
                               "completions value the steps (PAV's prover); default: the searching policy's")


class SelfOptions(Options):
    question: str = Field(SELF_QUESTION, description="the yes/no question put to the policy")


Aggregation = Literal["last", "min", "prod", "mean"]


class PRMOptions(Options):
    positional: ClassVar[tuple[str, ...]] = ("path",)
    path: str = Field(description="a PRM directory from `sharpen train prm`")
    batch: int = Field(16, ge=1, description="nodes per PRM forward pass")
    agg: Aggregation = Field("last", description="a path's value from its step scores: last, min, prod or mean")


class ProgressOptions(Options):
    positional: ClassVar[tuple[str, ...]] = ("path",)
    path: str = Field(description="the prover: a PRM directory from `sharpen train prm`")
    alpha: float = Field(1.0, ge=0, description="weight of the advantage V(after) - V(before) beside V(after)")
    batch: int = Field(16, ge=1, description="nodes per PRM forward pass")


class ImplicitOptions(Options):
    positional: ClassVar[tuple[str, ...]] = ("path",)
    path: str = Field(description="a policy trained by `sharpen train dpo|sft` (its out dir or merged/)")
    ref: str | None = Field(None, description="the reference policy (default: the policy's base, from its sharpen_train.json)")
    beta: float = Field(0.1, gt=0, description="beta of the implicit reward beta * log(pi / pi_ref)")
    agg: Aggregation = Field("last", description="a path's value from its step scores: last, min, prod or mean")
    batch: int = Field(8, ge=1, description="paths per forward pass")


class DistanceOptions(Options):
    noise: float = Field(0.1, ge=0, description="std of the deterministic noise on the toy heuristic")


@register_scorer("rollout", RolloutOptions)
def _rollout(process: Process, o: RolloutOptions, collect: bool) -> Scorer:
    """Agreement of k Monte Carlo completions (self-consistency as a value; no ground truth)."""
    return RolloutScorer(process, o.k, o.pool)


@register_scorer("oracle", OracleOptions, collect_only=True)
def _oracle(process: Process, o: OracleOptions, collect: bool) -> Scorer:
    """The task's verifier on k completions (training-data collection only); prover=<policy>: its completions."""
    if not collect:  # refused before a prover is loaded
        return OracleScorer(process, o.k, collect=collect)
    prover = None
    if o.prover:
        if not isinstance(process, LMProcess):
            raise ConfigError("oracle:...:prover needs a language-model process (fix: drop prover=)")
        prover = ProverRollouts(_policy_and_base(Path(o.prover))[0].as_posix() if Path(o.prover).exists() else o.prover,
                                max_batch=getattr(process.backend, "max_batch", 32))
    return OracleScorer(process, o.k, collect=collect, prover=prover)


@register_scorer("self", SelfOptions)
def _self(process: Process, o: SelfOptions, collect: bool) -> Scorer:
    """The policy's P(Yes) that its latest step is correct (MCTS-DPO self-evaluation)."""
    return SelfScorer(process, question=o.question)  # type: ignore[arg-type]


@register_scorer("prm", PRMOptions)
def _prm(process: Process, o: PRMOptions, collect: bool) -> Scorer:
    """A learned process reward model (`sharpen train prm`)."""
    return PRMScorer(o.path, process, batch=o.batch, agg=o.agg)


@register_scorer("pav", ProgressOptions)
def _pav(process: Process, o: ProgressOptions, collect: bool) -> Scorer:
    """Progress under a PRM prover: V(after) + alpha x (V(after) - V(before)) (PAV, arXiv 2410.08146)."""
    return ProgressScorer(o.path, process, alpha=o.alpha, batch=o.batch)


@register_scorer("implicit", ImplicitOptions)
def _implicit(process: Process, o: ImplicitOptions, collect: bool) -> Scorer:
    """An implicit PRM: beta x log(pi/pi_ref) of a trained policy, summed over steps (arXiv 2412.01981)."""
    return ImplicitPRMScorer(process, o.path, ref=o.ref, beta=o.beta, agg=o.agg, batch=o.batch)


@register_scorer("distance", DistanceOptions)
def _distance(process: Process, o: DistanceOptions, collect: bool) -> Scorer:
    """The toy random walk's heuristic (tests and examples only)."""
    from sharpen.search.toy import DistanceScorer, RandomWalkProcess

    if not isinstance(process, RandomWalkProcess):
        raise ConfigError("the distance scorer works only on the toy random walk (fix: choose another --scorer)")
    return DistanceScorer(process, noise=o.noise)


def make_scorer(spec: str | None, process: Process, collect: bool = False) -> Scorer | None:
    """A scorer from its spec (`sharpen.search.registry.parse_scorer`: `self`, `rollout[:k][:pool]`,
    `oracle[:k]`, `prm:<path>`, `distance`, or any registered one), or None for `none`/None.
    `collect` allows the scorers that read reference answers (training-data collection)."""
    if spec is None or spec == "none":
        return None
    parsed = parse_scorer(spec)
    return parsed.entry.factory(process, parsed.options, collect)
