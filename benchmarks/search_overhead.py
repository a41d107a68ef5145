"""How much of a search's wall time is spent outside the model, and how its tokens/s compare with
generating the same number of tokens in plain batches. The target (issue 3): time outside the
model <= 15%.

For each algorithm, N chain_sum problems are searched at a fixed budget with the real
smollm2-135m and a cheap scorer (`self`: one forward pass per node; `vote` needs none). The model
time is the backend meter's own seconds (time inside `generate` / `next_token_logprobs`, including
tokenisation and decoding), so "outside" is the search, process and scorer bookkeeping.
The baseline ("plain batches") generates whole solutions for the same prompts with
`backend.generate` in batches of `--batch`, until as many tokens as the largest search spent.

    .venv/bin/python benchmarks/search_overhead.py [--problems 4] [--budget 256] [--algos bon,vote,...]

On a shared CPU pass `--threads 1`: with other model jobs on the same cores, torch's spinning
intra-op threads made generation ~30x slower here (0.5 instead of 16 tokens/s).
"ratio" is the search's tokens/s over plain batches' (searches issue small batches, so it is < 1
even when the time outside the model is ~0).
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from sharpen.backends import load_backend
from sharpen.backends.base import SamplingParams
from sharpen.core.console import quiet_libraries
from sharpen.core.tasks import load_task
from sharpen.search.algorithms import ALGORITHMS, NEEDS_SCORER
from sharpen.search.process import LMProcess
from sharpen.search.scorers import make_scorer

TASK_ARGS = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1}


def run_search(process, scorer, algo: str, problems, budget: int) -> dict:
    meter = process.meter
    start = meter.snapshot()
    t0 = time.perf_counter()
    for i, p in enumerate(problems):
        ALGORITHMS[algo](process, scorer if algo in NEEDS_SCORER else None, p, budget, seed=i)
    wall = time.perf_counter() - t0
    used = meter.snapshot() - start
    return {"wall": wall, "model_s": used.seconds, "tokens": used.generated_tokens, "calls": used.calls}


def plain_batches(backend, prompts: list[str], tokens: int, batch: int, max_tokens: int) -> tuple[int, float]:
    """Generate whole solutions for `prompts` (cycled) in batches of `batch` until `tokens` are made."""
    made, t0, call = 0, time.perf_counter(), 0
    while made < tokens:
        chunk = [prompts[(call * batch + j) % len(prompts)] for j in range(batch)]
        params = SamplingParams(n=1, temperature=0.7, max_tokens=max_tokens, stop_at="answer", seed=1000 + call)
        made += sum(c[0].num_tokens for c in backend.generate(chunk, params))
        call += 1
    return made, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--problems", type=int, default=4)
    ap.add_argument("--budget", type=int, default=256, help="generated tokens per problem")
    ap.add_argument("--algos", default=",".join(ALGORITHMS))
    ap.add_argument("--scorer", default="self", help="scorer for the algorithms that need one")
    ap.add_argument("--batch", type=int, default=16, help="plain-batch size (8-32)")
    ap.add_argument("--step-tokens", type=int, default=64)
    ap.add_argument("--rollout-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads; 1 avoids spinning threads when other jobs share the cores")
    args = ap.parse_args()
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    unknown = [a for a in algos if a not in ALGORITHMS]
    if unknown:
        ap.error(f"unknown algorithms {unknown} (choose from {', '.join(ALGORITHMS)})")

    quiet_libraries()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    err = Console(stderr=True)
    t0 = time.perf_counter()
    backend = load_backend(args.model)
    task = load_task("gym:chain_sum", TASK_ARGS)
    problems = task.problems("test", args.problems)
    process = LMProcess(backend, task, step_tokens=args.step_tokens, rollout_tokens=args.rollout_tokens)
    scorer = make_scorer(args.scorer, process)
    prompts = [backend.chat_prompt(task.messages(p)) for p in problems]
    backend.generate(prompts[:2], SamplingParams(n=1, max_tokens=8, seed=0))  # warm-up
    err.print(f"model loaded and warmed up in {time.perf_counter() - t0:.1f}s")

    rows = {}
    for a in algos:
        rows[a] = r = run_search(process, scorer, a, problems, args.budget)
        err.print(f"{a}: wall {r['wall']:.2f}s, model {r['model_s']:.2f}s, {r['tokens']} tokens")
    target = max(r["tokens"] for r in rows.values())
    base_tokens, base_wall = plain_batches(backend, prompts, target, args.batch, args.rollout_tokens)
    base_tps = base_tokens / base_wall

    table = Table(title=(
        f"search overhead: {args.model}, chain_sum 2-3 terms 1 digit, {args.problems} problems x "
        f"{args.budget} tokens, scorer {args.scorer}; plain batches of {args.batch}: {base_tps:.1f} tok/s"
    ))
    for col in ("algo", "wall s", "model s", "outside", "tokens", "calls", "search tok/s", "plain tok/s",
                "ratio"):
        table.add_column(col, justify="right")
    for a, r in rows.items():
        outside = 1.0 - r["model_s"] / r["wall"] if r["wall"] > 0 else 0.0
        tps = r["tokens"] / r["wall"] if r["wall"] > 0 else 0.0
        mark = "green" if outside <= 0.15 else "red"
        table.add_row(
            a, f"{r['wall']:.2f}", f"{r['model_s']:.2f}", f"[{mark}]{outside:.1%}[/{mark}]", str(r["tokens"]),
            str(r["calls"]), f"{tps:.1f}", f"{base_tps:.1f}", f"{tps / base_tps:.2f}x",
        )
    Console(width=max(120, Console().width)).print(table)


if __name__ == "__main__":
    main()
