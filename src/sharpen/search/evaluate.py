"""Held-out evaluation: greedy accuracy, pass@k (unbiased estimator, Chen et al. 2021,
arXiv 2107.03374), majority@K, tokens per solution and throughput."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field

from sharpen.backends.base import Backend, SamplingParams
from sharpen.core.errors import ConfigError
from sharpen.core.io import JsonlAppender, atomic_write_json, read_jsonl
from sharpen.core.meter import Usage
from sharpen.core.tasks import Problem, Task
from sharpen.search.collect import problem_seed
from sharpen.search.registry import Options


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 - C(n-c, k) / C(n, k) for n samples of which c are correct."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def ks_up_to(samples: int) -> list[int]:
    ks, k = [], 1
    while k <= samples:
        ks.append(k)
        k *= 2
    if ks[-1] != samples:
        ks.append(samples)
    return ks


def majority_answer(task: Task, answers: list[str | None]) -> str | None:
    """The most common answer by the task's vote key (ties: first seen); None if none extracted."""
    keyed = [(task.vote_key(a), a) for a in answers if a is not None]
    if not keyed:
        return None
    counts = Counter(k for k, _ in keyed)
    best = max(counts.values())
    return next(a for k, a in keyed if counts[k] == best)


def check_language_model(model: str, task: str) -> None:
    """Refuse, before anything is loaded, an evaluation of a denoising model or the digits task: it
    measures a language model's sampled solutions; a denoising process is measured by search."""
    from sharpen.backends.models import is_diffusion
    from sharpen.search.denoise_task import is_digits_task

    if is_diffusion(model) or is_digits_task(task):
        raise ConfigError("eval measures a language model on a text task; a denoising model is measured by search "
                          "(fix: sharpen search --model digits-ddpm --task digits, e.g. --algo vote)")


class EvalConfig(Options):
    """How `evaluate` runs; `sharpen eval` and a run config's `eval` section are built from these fields."""

    samples: int = Field(8, ge=0, description="sampled solutions per problem (pass@k, majority@k); 0 = greedy only")
    temperature: float = Field(0.7, ge=0.0, description="sampling temperature of the sampled solutions")
    max_tokens: int = Field(128, ge=1, description="max generated tokens per solution")
    seed: int = 0
    greedy: bool = True
    problems_per_call: int = Field(64, ge=1, description="problems per generate call (speed only: every "
                                   "sampled row draws from its own random stream, so no row depends on it)")


class EvalRequest(EvalConfig):
    """`sharpen eval`'s options: how to evaluate (`EvalConfig`), on how many problems, in rows of
    how many per generate call. `config()` is the `EvalConfig` part, which a run directory records."""

    n: int = Field(50, ge=1, description="held-out problems")
    batch: int = Field(32, ge=1, description="max rows per generate call")
    problems_per_call: int = Field(16, ge=1)

    def config(self) -> EvalConfig:
        return EvalConfig(**self.model_dump(include=set(EvalConfig.model_fields)))


def evaluate(
    backend: Backend,
    task: Task,
    problems: list[Problem],
    cfg: EvalConfig,
    out_jsonl: str | Path | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate; per-problem rows are appended to `out_jsonl` as each batch finishes and problems
    already present there are skipped (resume). Returns the metrics dict."""
    from sharpen.backends.diffusion import DigitsDiffusion
    from sharpen.search.denoise_task import DigitsTask

    if isinstance(task, DigitsTask) or isinstance(backend, DigitsDiffusion):
        raise ConfigError("evaluate measures a language model backend on a text task (fix: search a denoising "
                          "model instead: sharpen search --model digits-ddpm --task digits)")
    done: dict[str, dict] = {}
    if out_jsonl is not None and Path(out_jsonl).exists():
        done = {r["id"]: r for r in read_jsonl(out_jsonl)}
    if on_progress and done:
        on_progress(sum(p.id in done for p in problems))
    start_usage = backend.meter.snapshot()
    t0 = time.perf_counter()
    writer = JsonlAppender(out_jsonl) if out_jsonl is not None else None
    try:
        # chunks and seeds are fixed by position in the full problem list, so a resumed run
        # generates exactly what an uninterrupted one would have
        step = max(1, cfg.problems_per_call)
        for i in range(0, len(problems), step):
            chunk = problems[i : i + step]
            if all(p.id in done for p in chunk):
                continue
            fresh = 0
            for row in evaluate_chunk(backend, task, chunk, cfg):
                if row["id"] in done:
                    continue
                done[row["id"]] = row
                fresh += 1
                if writer:
                    writer.write(row)
            if on_progress:
                on_progress(fresh)
    finally:
        if writer:
            writer.close()
    usage = backend.meter.snapshot() - start_usage
    return eval_metrics([done[p.id] for p in problems], cfg, usage, time.perf_counter() - t0)


def evaluate_chunk(backend: Backend, task: Task, chunk: list[Problem], cfg: EvalConfig) -> list[dict]:
    """The rows of one chunk of problems (what `evaluate` writes), from one greedy and one sampled
    generate call; the chunks `evaluate` cuts (`cfg.problems_per_call` problems) are also what
    `sharpen.search.distributed.eval_on_ray` sends to its actors."""
    prompts = [backend.chat_prompt(task.messages(p)) for p in chunk]
    greedy = (
        backend.generate(prompts, SamplingParams(n=1, temperature=0.0, max_tokens=cfg.max_tokens))
        if cfg.greedy
        else [[] for _ in chunk]
    )
    # each problem's samples come from its own streams (the seed and its id): the same
    # whatever other problems share the call
    sampled = (
        backend.generate(
            prompts,
            SamplingParams(n=cfg.samples, temperature=cfg.temperature, max_tokens=cfg.max_tokens),
            seeds=[problem_seed(cfg.seed, p.id) for p in chunk],
        )
        if cfg.samples
        else [[] for _ in chunk]
    )
    return [_problem_row(task, p, g, s) for p, g, s in zip(chunk, greedy, sampled, strict=True)]


def eval_metrics(rows: list[dict], cfg: EvalConfig, usage: Usage, wall_seconds: float) -> dict[str, Any]:
    """The metrics dict of `rows`: `summarize`, the backend usage spent on them and the wall time."""
    metrics = summarize(rows, cfg.samples)
    metrics.update(
        wall_seconds=round(wall_seconds, 2),
        tokens_per_second=round(usage.generated_tokens / usage.seconds, 1) if usage.seconds else None,
        usage=usage.to_dict(),
        temperature=cfg.temperature,
        max_tokens=cfg.max_tokens,
        seed=cfg.seed,
    )
    return metrics


def _problem_row(task: Task, p: Problem, greedy: list, sampled: list) -> dict:
    answers = [task.extract(c.text) for c in sampled]
    correct = [task.verify(p, a) for a in answers]
    maj = majority_answer(task, answers)
    row: dict[str, Any] = {
        "id": p.id,
        "question": p.question,
        "reference": p.answer,
        "samples": [
            {"text": c.text, "answer": a, "correct": ok, "tokens": c.num_tokens, "finish": c.finish_reason}
            for c, a, ok in zip(sampled, answers, correct, strict=True)
        ],
        "majority_answer": maj,
        "majority_correct": task.verify(p, maj) if sampled else None,
    }
    if greedy:
        ga = task.extract(greedy[0].text)
        row["greedy"] = {"text": greedy[0].text, "answer": ga, "correct": task.verify(p, ga), "tokens": greedy[0].num_tokens}
    return row


def summarize(rows: list[dict], samples: int) -> dict[str, Any]:
    n = len(rows)
    m: dict[str, Any] = {"n": n, "samples": samples}
    if n and "greedy" in rows[0]:
        m["greedy"] = sum(r["greedy"]["correct"] for r in rows) / n
        m["greedy_tokens"] = sum(r["greedy"]["tokens"] for r in rows) / n
    if n and samples:
        for k in ks_up_to(samples):
            m[f"pass@{k}"] = sum(pass_at_k(len(r["samples"]), sum(s["correct"] for s in r["samples"]), k) for r in rows) / n
        m[f"majority@{samples}"] = sum(bool(r["majority_correct"]) for r in rows) / n
        toks = [s["tokens"] for r in rows for s in r["samples"]]
        m["mean_tokens"] = sum(toks) / len(toks)
    return m


def summary_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """The metrics as a header and (metric, value) rows: greedy, pass@k, majority@K, tokens, speed."""
    samples = metrics.get("samples", 0)
    rows = [["metric", "value"]] + ([["greedy accuracy", f"{metrics['greedy']:.3f}"]] if "greedy" in metrics else [])
    rows += [[f"pass@{k}", f"{metrics[f'pass@{k}']:.3f}"] for k in (ks_up_to(samples) if samples else [])]
    if samples:
        rows += [[f"majority@{samples}", f"{metrics[f'majority@{samples}']:.3f}"],
                 ["mean tokens / solution", f"{metrics['mean_tokens']:.1f}"]]
    return rows + [["generated tokens / s", f"{metrics['tokens_per_second']}"], ["wall time (s)", f"{metrics['wall_seconds']}"]]


def write_metrics(path: str | Path, metrics: dict) -> None:
    atomic_write_json(path, metrics)
