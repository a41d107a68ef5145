"""The process protocol: the bridge between search algorithms and whatever generates steps.

A process answers, per problem and batched over nodes: "propose k next steps for each of these
nodes" (`expand`), "complete these nodes to the end, as tree nodes" (`complete`) or "as throwaway
samples" (`rollout`), and "what is this node's answer" (`answer`). Algorithms talk only to this
protocol and to a scorer, so a non-language process (`sharpen.search.toy.RandomWalkProcess`) is searched by
the same code as the language model (`LMProcess`).

Randomness: `new_tree(problem, seed)` stores the seed in `tree.meta`; every generating call derives
its own seed from it and a per-tree call counter, and every row of the call its own random stream
from that and the row's index (`sharpen.backends.base.row_seed`), so the same seed gives the
identical tree, whichever other rows or problems share the backend's batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import Field

from sharpen.backends.base import Backend, Completion, SamplingParams, mix_seed
from sharpen.core.answer import extract_answer
from sharpen.core.budget import Budget, allot, allowed_rows
from sharpen.core.errors import ConfigError
from sharpen.core.lru import LRUDict
from sharpen.core.meter import UsageMeter
from sharpen.core.tasks import Problem, Task
from sharpen.core.tree import Tree
from sharpen.search.registry import Options

# problems a process remembers (`problem(tree)`): far more than the searches ever in flight at once
PROBLEMS_KEPT = 4096


@dataclass
class Rollout:
    """One completion from a node to the end, not added to the tree."""

    text: str  # the whole solution: the node's steps and the completion
    answer: str | None
    num_tokens: int
    logprob: float = 0.0
    finish_reason: str | None = None


class Process(Protocol):
    meter: UsageMeter
    step_tokens: int  # the most tokens one `expand` row can generate
    rollout_tokens: int  # the most tokens one `complete`/`rollout` row can generate

    def new_tree(self, problem: Problem, seed: int = 0) -> Tree:
        """A tree holding only the root (the empty solution) for `problem`."""

    def expand(self, tree: Tree, node_ids: list[int], k: int, budget: Budget | None = None) -> list[list[int]]:
        """For each node, add up to k child steps (text, tokens, logprob, prior, terminal, answer);
        the ids of the new children per node. Terminal nodes, and rows the budget does not allow,
        get none. A node id may appear more than once (each occurrence is extended independently)."""

    def complete(self, tree: Tree, node_ids: list[int], k: int, budget: Budget | None = None) -> list[list[int]]:
        """Like `expand`, but each child is a whole completion to the end: a terminal node."""

    def rollout(self, tree: Tree, node_ids: list[int], k: int, budget: Budget | None = None) -> list[list[Rollout]]:
        """For each non-terminal node, up to k completions to the end, not added to the tree."""

    def answer(self, tree: Tree, node_id: int) -> str | None:
        """The node's answer: the extracted one when terminal, else a best guess from the partial solution."""

    def vote_key(self, answer: str | None) -> str | None:
        """Canonical form of an answer for voting."""

    def verify(self, tree: Tree, answer: str | None) -> bool:
        """Ground truth. Only the oracle scorer and evaluation may call this, never an algorithm."""


def next_seed(tree: Tree) -> int:
    """The seed for the tree's next generating call: the search seed and a per-tree call counter."""
    calls = tree.meta.get("calls", 0)
    tree.meta["calls"] = calls + 1
    return mix_seed(int(tree.meta.get("seed", 0)), calls)


def require_logprobs(process: Any, feature: str) -> None:
    """A one-line `BackendError` when `process`'s backend cannot give token log-probabilities
    (a server that returns none) and `feature` needs them."""
    check = getattr(getattr(process, "backend", None), "require_logprobs", None)
    if check is not None:
        check(feature)


def set_priors(tree: Tree, child_ids: list[int]) -> None:
    """prior = softmax over siblings of the length-normalised step log-probability (PUCT prior)."""
    if not child_ids:
        return
    xs = [tree.nodes[c].logprob / max(1, tree.nodes[c].num_tokens) for c in child_ids]
    if any(math.isnan(x) for x in xs):  # a backend without log-probabilities: uniform
        xs = [0.0] * len(xs)
    m = max(xs)
    ws = [math.exp(x - m) for x in xs]
    z = sum(ws)
    for c, w in zip(child_ids, ws, strict=True):
        tree.nodes[c].prior = w / z


class SearchSettings(Options):
    """How a language-model process samples steps: shared by `sharpen search`/`sweep` and a run
    config's `collect` section (one set of defaults)."""

    temperature: float = Field(0.7, ge=0.0, description="sampling temperature of steps and completions")
    step_tokens: int = Field(32, ge=1, description="max tokens of one step")
    rollout_tokens: int = Field(64, ge=1, description="max tokens of one completion or rollout")
    max_depth: int = Field(6, ge=1, description="steps after which a solution is cut off")
    batch: int = Field(32, ge=1, description="rows per forward pass of the backend (speed only)")
    parallel: int = Field(16, ge=1, description="problems searched at once (lockstep batching; speed only)")
    merge_duplicates: bool = Field(False, description="a sampled step equal to a sibling adds no node (the "
                                   "sibling's meta.count counts it), so the budget goes to distinct steps")


class Forkable:
    """What the lockstep batcher (`sharpen.search.batching`) asks of a process: `fork` gives one
    search's view on a proxy backend (counting on the proxy's meter), and `batched` merges a call
    with the other searches' calls of the same key. A process sets `backend` and `meter`."""

    backend: Any
    meter: UsageMeter

    def fork(self, backend: Any) -> Any:
        """The same process on another backend (and that backend's meter)."""
        import copy

        p = copy.copy(self)
        p.backend, p.meter = backend, backend.meter
        return p

    def batched(self, key: Any, fn: Any, items: list) -> list:
        """`fn(items)`; under lockstep batching, merged with the other searches' calls under the same
        `key` into one call of `fn` (a verifier or a denoiser runs many problems' rows in one pass)."""
        if hasattr(self.backend, "batched"):
            return self.backend.batched(key, fn, items)
        return fn(items)


class LMProcess(Forkable):
    """Steps are lines of text generated by a backend; a solution ends with an `Answer:` line.

    A node is terminal when its generation ended with EOS or a complete answer line, when its step
    is an `Answer:` line, or when it is at `max_depth`. Its answer is `task.extract` of the whole
    solution text; with `strict_answers`, only an `Answer:` line counts, so search credits only
    solutions in the format the prompt asks for (a format reward, as in rule-based RL rewards)."""

    def __init__(
        self,
        backend: Backend,
        task: Task,
        *,
        temperature: float = 0.7,
        top_p: float = 1.0,
        step_tokens: int = 64,
        rollout_tokens: int = 256,
        max_depth: int = 12,
        delimiter: str = "\n",
        answer_prefix: str = "Answer:",
        strict_answers: bool = False,
        merge_duplicates: bool = False,
    ):
        if step_tokens <= 0 or rollout_tokens <= 0 or max_depth <= 0:
            raise ConfigError("step_tokens, rollout_tokens and max_depth must be positive")
        self.backend = backend
        self.task = task
        self.meter = backend.meter
        self.temperature = temperature
        self.top_p = top_p
        self.step_tokens = step_tokens
        self.rollout_tokens = rollout_tokens
        self.max_depth = max_depth
        self.delimiter = delimiter
        self.answer_prefix = answer_prefix
        self.strict_answers = strict_answers
        self.merge_duplicates = merge_duplicates
        # on a `MixtureBackend`: its `to_other`, whether the row of a seed is the second model's; each
        # tree then counts its step rows by model in meta["step_rows"] (`_count_split`)
        self.row_split: Any = None
        # bounded: a long-lived process (`sharpen serve`) sees a new problem with every request
        self._problems: LRUDict = LRUDict(PROBLEMS_KEPT)
        self._priors: LRUDict = LRUDict(64)

    # -- protocol ---------------------------------------------------------------------------
    def new_tree(self, problem: Problem, seed: int = 0) -> Tree:
        self._problems[problem.id] = problem
        messages = self.task.messages(problem)
        prompt = self.backend.chat_prompt(messages)
        meta = {"seed": seed, "calls": 0, "eos": getattr(self.backend, "eos_text", ""), "delimiter": self.delimiter,
                "row_prior": self._row_prior(messages)}
        return Tree(problem.id, problem.question, prompt=prompt, reference=problem.answer, meta=meta)

    def expand(self, tree: Tree, node_ids: list[int], k: int, budget: Budget | None = None) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in node_ids]
        for i, comps in self._generate(tree, node_ids, k, budget, "step"):
            parent = node_ids[i]
            if self.merge_duplicates:
                kids = self._add_distinct(tree, parent, comps)
                set_priors(tree, [c for c in tree.nodes[parent].children if not tree.nodes[c].meta.get("rollout")])
            else:
                kids = [self._add_step(tree, parent, c) for c in comps]
                set_priors(tree, kids)
            out[i] = kids
        return out

    def _add_distinct(self, tree: Tree, parent: int, comps: list[Completion]) -> list[int]:
        """search-and-learn's `filter_duplicates`: a sampled step whose text (whitespace-normalised)
        and ending equal a sibling's adds no node; the sibling's `meta["count"]` counts the samples
        that landed on it. Returns the node each sample landed on, each at most once, new or not."""
        def key(step: str, terminal: bool) -> tuple[str, bool]:
            return " ".join(step.split()), terminal

        siblings = {key(tree.nodes[c].step, tree.nodes[c].terminal): c for c in tree.nodes[parent].children
                    if not tree.nodes[c].meta.get("complete") and not tree.nodes[c].meta.get("rollout")}
        landed: list[int] = []
        for c in comps:
            k = key(*self._step_of(tree, parent, c))
            if k in siblings:
                node = tree.nodes[siblings[k]]
                node.meta["count"] = node.meta.get("count", 1) + 1
            else:
                siblings[k] = self._add_step(tree, parent, c)
            if siblings[k] not in landed:
                landed.append(siblings[k])
        return landed

    def complete(self, tree: Tree, node_ids: list[int], k: int, budget: Budget | None = None) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in node_ids]
        for i, comps in self._generate(tree, node_ids, k, budget, "answer"):
            parent = node_ids[i]
            kids = []
            for c in comps:
                step = _strip_delimiter(c.text, self.delimiter)
                node = tree.add(
                    parent, step=step, token_ids=list(c.token_ids), num_tokens=c.num_tokens, logprob=c.logprob,
                    terminal=True, finish_reason=c.finish_reason, meta={"complete": True},
                )
                node.answer = self._extract(tree.text(node.id, self.delimiter))
                kids.append(node.id)
            set_priors(tree, kids)
            out[i] = kids
        return out

    def rollout(self, tree: Tree, node_ids: list[int], k: int, budget: Budget | None = None) -> list[list[Rollout]]:
        out: list[list[Rollout]] = [[] for _ in node_ids]
        for i, comps in self._generate(tree, node_ids, k, budget, "answer"):
            head = self._solution_prefix(tree, node_ids[i])
            for c in comps:
                text = head + c.text
                out[i].append(Rollout(text, self._extract(text), c.num_tokens, c.logprob, c.finish_reason))
        return out

    def answer(self, tree: Tree, node_id: int) -> str | None:
        node = tree.nodes[node_id]
        if node.terminal:
            return node.answer
        return self._extract(tree.text(node_id, self.delimiter))

    def vote_key(self, answer: str | None) -> str | None:
        return self.task.vote_key(answer)

    def verify(self, tree: Tree, answer: str | None) -> bool:
        return self.task.verify(self.problem(tree), answer)

    def _row_prior(self, messages: list[dict[str, str]]) -> dict[str, float]:
        """What a row is expected to cost before any is measured (`Budget.expected`): the mean
        tokens of a step ("step") and of a whole solution ("answer") in the prompt's worked examples
        (the assistant turns), capped at `step_tokens` / `rollout_tokens`; empty without examples."""
        shots = tuple(m["content"] for m in messages if m.get("role") == "assistant" and m.get("content"))
        if shots not in self._priors:  # the same worked examples for every problem of a task: counted once
            lines = [ln for s in shots for ln in s.split(self.delimiter) if ln.strip()]
            prior: dict[str, float] = {}
            if lines:
                count = self.backend.count_tokens
                step = sum(count(ln + self.delimiter) for ln in lines) / len(lines)
                answer = sum(count(s) + 1 for s in shots) / len(shots)  # + the end-of-solution token
                prior = {"step": min(step, self.step_tokens), "answer": min(answer, self.rollout_tokens)}
            self._priors[shots] = prior
        return dict(self._priors[shots])

    # -- what scorers and the batcher may ask of a language-model process -------------------
    def judge_prompt(self, tree: Tree, node_id: int, question: str) -> str:
        """The problem, the solution so far as the assistant's turn, and `question` as a user turn
        (the `self` scorer's yes/no judgement of the latest step)."""
        msgs = self.task.messages(self.problem(tree)) + [
            {"role": "assistant", "content": tree.text(node_id, self.delimiter)},
            {"role": "user", "content": question},
        ]
        return self.backend.chat_prompt(msgs)

    def next_token_logprobs(self, prompts: list[str], candidates: list[str]) -> list[dict[str, float]]:
        """The backend's log-probability of each candidate's first token after each prompt."""
        return self.backend.next_token_logprobs(prompts, candidates)

    # -- helpers ----------------------------------------------------------------------------
    def _extract(self, text: str) -> str | None:
        return self.task.extract(text, strict=self.strict_answers)

    def problem(self, tree: Tree) -> Problem:
        if tree.problem_id not in self._problems:
            raise ConfigError(f"tree {tree.problem_id!r} was not made by this process (fix: use process.new_tree)")
        return self._problems[tree.problem_id]

    def _solution_prefix(self, tree: Tree, node_id: int) -> str:
        return "".join(n.step + self.delimiter for n in tree.path(node_id))

    def prefix(self, tree: Tree, node_id: int) -> str:
        """The text a continuation of `node_id` extends: the prompt and the steps so far."""
        return tree.prompt + self._solution_prefix(tree, node_id)

    def _generate(self, tree: Tree, node_ids: list[int], k: int, budget: Budget | None, stop_at: str):
        live = [i for i, nid in enumerate(node_ids) if not tree.nodes[nid].terminal]
        row_tokens = self.step_tokens if stop_at == "step" else self.rollout_tokens
        live, k = allot(live, k, allowed_rows(budget, len(live) * k, row_tokens, stop_at))
        if not live or k <= 0:
            return []
        params = SamplingParams(
            n=k, temperature=self.temperature, top_p=self.top_p, max_tokens=row_tokens, stop_at=stop_at,
            delimiter=self.delimiter, answer_prefix=self.answer_prefix, seed=next_seed(tree),
        )
        if stop_at == "step" and self.row_split is not None and not params.greedy:
            self._count_split(tree, params, len(live))
        results = self.backend.generate([self.prefix(tree, node_ids[i]) for i in live], params)
        return list(zip(live, results, strict=True))

    def _count_split(self, tree: Tree, params: SamplingParams, prompts: int) -> None:
        """Add a step call's rows to tree.meta["step_rows"] by the model that samples each: the
        mixture's split is a function of the row's own seed, so the tree's counts do not depend on
        which other problems shared the call, and a resumed collection reads them from its trees."""
        from sharpen.backends.base import prompt_seeds, row_seed

        other = sum(bool(self.row_split(row_seed(s, j))) for s in prompt_seeds(params, prompts, None)
                    for j in range(params.n))
        rows = tree.meta.setdefault("step_rows", {"policy": 0, "reference": 0})
        rows["policy"] += prompts * params.n - other
        rows["reference"] += other

    def _step_of(self, tree: Tree, parent: int, c: Completion) -> tuple[str, bool]:
        """The step text of a completion under `parent`, and whether it ends the solution."""
        step = _strip_delimiter(c.text, self.delimiter)
        depth = tree.nodes[parent].depth + 1
        is_answer_line = extract_answer(step, prefix=self.answer_prefix, fallback=False) is not None
        return step, c.finish_reason in ("eos", "answer") or is_answer_line or depth >= self.max_depth

    def _add_step(self, tree: Tree, parent: int, c: Completion) -> int:
        step, terminal = self._step_of(tree, parent, c)
        node = tree.add(
            parent, step=step, token_ids=list(c.token_ids), num_tokens=c.num_tokens, logprob=c.logprob,
            terminal=terminal, finish_reason=c.finish_reason,
        )
        if terminal:
            node.answer = self._extract(tree.text(node.id, self.delimiter))
        return node.id


def _strip_delimiter(text: str, delimiter: str) -> str:
    return text[: -len(delimiter)] if delimiter and text.endswith(delimiter) else text
