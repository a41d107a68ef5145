"""Tasks: problems with prompts, reference answers and a verifier.

- `gym:<name>`: any reasoning-gym dataset, scored by the dataset's own `score_answer`.
- `gsm8k:<file.jsonl>`: rows with `question` and `answer` ending `#### N`, verified with math-verify.
- `math:<file.jsonl>`: rows with `problem` and `solution` containing `\\boxed{}`, verified with math-verify.

Train and test problems are disjoint by question text: a problem belongs to the test split when
the hash of its normalised question falls in the test fraction, whatever `n` or seed is asked for.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sharpen.core.answer import extract_answer, vote_key
from sharpen.core.errors import ConfigError, TaskError
from sharpen.core.io import jsonl_objects

Split = Literal["train", "test"]
TEST_FRACTION = 0.2
DEFAULT_TASK = "gym:chain_sum"  # every command's and config's default task

SYSTEM_PROMPT = "Solve step by step, one short step per line. The last line is 'Answer: <number>'."
# worked examples in the format we parse: a 135M model follows a shown format far better than a described one
EXAMPLES = [("What is 2 + 5 - 3?", "2 + 5 = 7\n7 - 3 = 4\nAnswer: 4"), ("What is 6 - 9?", "6 - 9 = -3\nAnswer: -3")]


@dataclass
class Problem:
    id: str
    question: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"id": self.id, "question": self.question, "answer": self.answer, "meta": self.meta}


def _qhash(question: str) -> str:
    return hashlib.sha1(" ".join(question.split()).encode()).hexdigest()


def split_of(question: str) -> Split:
    return "test" if int(_qhash(question)[:8], 16) / 0xFFFFFFFF < TEST_FRACTION else "train"


def heldout(problem_id: str, share: float) -> bool:
    """Whether a problem falls in a held-out share of built data (a hash of its id), e.g. the
    by-problem split of `sharpen build --holdout`: no problem's rows are on both sides."""
    return int(hashlib.sha1(problem_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share


class Task:
    """Base class: a source of problems, a prompt, and a verifier."""

    name: str = "task"

    def problems(self, split: Split, n: int, seed: int = 0) -> list[Problem]:
        raise NotImplementedError

    def messages(self, problem: Problem) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": SYSTEM_PROMPT}]
        for q, a in EXAMPLES:
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        return msgs + [{"role": "user", "content": problem.question}]

    def extract(self, text: str, strict: bool = False) -> str | None:
        """The solution's answer; `strict`: only from an `Answer:` line (no fallback to "the answer
        is" or the last number), so a solution in another format has no answer."""
        return extract_answer(text, fallback=not strict)

    def vote_key(self, answer: str | None) -> str | None:
        return vote_key(answer)

    def verify(self, problem: Problem, answer: str | None) -> bool:
        raise NotImplementedError


class GymTask(Task):
    def __init__(self, dataset: str, args: dict[str, Any]):
        import reasoning_gym

        self.name = f"gym:{dataset}"
        self.dataset = dataset
        self.args = dict(args)
        try:
            self._scorer = reasoning_gym.create_dataset(dataset, seed=0, size=1, **self.args)
        except ValueError as e:
            if "not registered" in str(e):
                raise TaskError(
                    f"unknown reasoning-gym dataset {dataset!r} (fix: a name from reasoning_gym.factory.DATASETS, e.g. gym:chain_sum)"
                ) from None
            raise ConfigError(f"bad --task-arg for {dataset}: {e} (fix: check the dataset's config fields)") from None
        except TypeError as e:
            raise ConfigError(f"bad --task-arg for {dataset}: {e} (fix: use a field of its config class)") from None

    def problems(self, split: Split, n: int, seed: int = 0) -> list[Problem]:
        import reasoning_gym

        seen: set[str] = set()
        out: list[Problem] = []
        size = max(4 * n, 64)
        while True:
            ds = reasoning_gym.create_dataset(self.dataset, seed=seed, size=size, **self.args)
            for entry in ds:
                q = entry["question"]
                h = _qhash(q)
                if h in seen or split_of(q) != split:
                    continue
                seen.add(h)
                out.append(Problem(f"{self.dataset}-{h[:12]}", q, str(entry["answer"]), {"entry": _jsonable(entry)}))
                if len(out) == n:
                    return out
            if size >= 64 * max(n, 64):
                raise TaskError(
                    f"{self.name} has only {len(out)} distinct {split} problems with these settings, {n} asked "
                    "(fix: lower --n or widen the --task-arg ranges)"
                )
            size *= 4
            seen.clear()
            out.clear()

    def verify(self, problem: Problem, answer: str | None) -> bool:
        if answer is None:
            return False
        try:
            return float(self._scorer.score_answer(answer, problem.meta["entry"])) >= 1.0
        except Exception:
            return False


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


class JsonlMathTask(Task):
    """GSM8K-style or MATH-style JSONL, verified with math-verify."""

    def __init__(self, kind: Literal["gsm8k", "math"], path: str):
        self.name = f"{kind}:{path}"
        self.kind = kind
        self.path = Path(path)
        self.rows = self._load()

    def _load(self) -> list[Problem]:
        if not self.path.is_file():
            raise TaskError(f"data file not found: {self.path} (fix: pass {self.kind}:<path to a .jsonl file>)")
        qkey, akey = ("question", "answer") if self.kind == "gsm8k" else ("problem", "solution")
        rows = []
        fix_rows = f"one JSON object per line with {qkey!r} and {akey!r}, UTF-8 text"
        for lineno, row in jsonl_objects(self.path, fix=fix_rows, torn_tail=False):
            where = f"{self.path}:{lineno}"
            for key in (qkey, akey):
                if key not in row:
                    raise TaskError(f"{where}: missing {key!r} field (fix: {self.kind} rows need {qkey!r} and {akey!r})")
                if not isinstance(row[key], str):
                    raise TaskError(f"{where}: field {key!r} is not a string (fix: {self.kind} rows need text "
                                    f"in {qkey!r} and {akey!r})")
            ref = self._reference(row[akey])
            if ref is None:
                fix = "end the answer with '#### N'" if self.kind == "gsm8k" else "put the final answer in \\boxed{}"
                raise TaskError(f"{where}: no final answer in {akey!r} (fix: {fix})")
            rows.append(Problem(f"{self.kind}-{_qhash(row[qkey])[:12]}", row[qkey], ref, {"line": lineno}))
        if not rows:
            raise TaskError(f"{self.path} has no rows (fix: one JSON object per line)")
        return rows

    def _reference(self, text: str) -> str | None:
        if self.kind == "gsm8k":
            if "####" not in text:
                return None
            ref = text.rsplit("####", 1)[1].strip().replace(",", "")
            return ref or None
        return last_boxed(text)

    def problems(self, split: Split, n: int, seed: int = 0) -> list[Problem]:
        import random

        seen, pool = set(), []
        for p in self.rows:
            if split_of(p.question) == split and p.id not in seen:
                seen.add(p.id)
                pool.append(p)
        random.Random(seed).shuffle(pool)
        if n > len(pool):
            raise TaskError(f"{self.path} has {len(pool)} {split} problems, {n} asked (fix: lower --n)")
        return pool[:n]

    def verify(self, problem: Problem, answer: str | None) -> bool:
        if answer is None:
            return False
        from math_verify import parse, verify

        gold = parse(f"${problem.answer}$") or parse(problem.answer)
        pred = parse(f"${answer}$") or parse(answer)
        try:
            return bool(gold) and bool(pred) and bool(verify(gold, pred))
        except Exception:
            return False


def last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip() or None
    return None


def parse_task_args(items: list[str] | None, flag: str = "--task-arg", example: str = "min_terms=2") -> dict[str, Any]:
    """`key=value` items (values read as YAML: numbers, booleans, lists) into a dict."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"bad {flag} {item!r} (fix: write key=value, e.g. {flag} {example})")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def load_task(spec: str, args: dict[str, Any] | None = None) -> Task:
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise TaskError(f"bad task {spec!r} (fix: gym:<dataset>, gsm8k:<file.jsonl> or math:<file.jsonl>)")
    if kind == "gym":
        return GymTask(rest, args or {})
    if args:
        raise ConfigError(f"--task-arg applies only to gym: tasks, not {kind}: (fix: drop --task-arg)")
    if kind in ("gsm8k", "math"):
        return JsonlMathTask(kind, rest)
    raise TaskError(f"unknown task kind {kind!r} (fix: gym:<dataset>, gsm8k:<file.jsonl> or math:<file.jsonl>)")
