"""Generated tokens/s of sharpen's HF backend against a bare `model.generate` loop on the same
prompts, at batch 1, 8 and 32 (or --batches: past 32 rows the 32 problems repeat). The overhead
target is <= 10%. The rows column also shows how far batching alone can raise tokens/s on this
machine, the ceiling for `sharpen serve`'s many-clients speed-up:

    .venv/bin/python benchmarks/generate.py [--model smollm2-135m] [--max-tokens 64] [--rounds 2]
    .venv/bin/python benchmarks/generate.py --batches 8,16,32,64,128 --rounds 1
    .venv/bin/python benchmarks/generate.py --batches 8,32,64,128,256 --per-prompt 8 --rounds 1   # serve's shape
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from sharpen.backends import load_backend
from sharpen.backends.base import SamplingParams
from sharpen.core.console import quiet_libraries
from sharpen.core.tasks import load_task


def bare_generate(backend, prompts, max_tokens, temperature, seed) -> tuple[int, float]:
    tok, model = backend.tokenizer, backend.model
    t0 = time.perf_counter()
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(seed)
    with torch.inference_mode():
        seqs = model.generate(**enc, max_new_tokens=max_tokens, do_sample=True, temperature=temperature,
                              top_k=0, top_p=1.0, pad_token_id=tok.pad_token_id)
    gen = seqs[:, enc["input_ids"].shape[1]:]
    eos = tok.eos_token_id
    n = 0
    for row in gen.tolist():
        n += next((j + 1 for j, t in enumerate(row) if t == eos), len(row))
    return n, time.perf_counter() - t0


def ours(backend, prompts, max_tokens, temperature, seed) -> tuple[int, float]:
    t0 = time.perf_counter()
    outs = backend.generate(prompts, SamplingParams(n=1, temperature=temperature, max_tokens=max_tokens,
                                                    stop_at="answer", seed=seed))
    return sum(c[0].num_tokens for c in outs), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--per-prompt", type=int, default=1,
                    help="rows per distinct prompt: 8 gives a batch of b/8 prompts x 8 samples, the shape of "
                         "`sharpen serve` merging b/8 vote requests (each prompt prefilled once)")
    args = ap.parse_args()
    quiet_libraries()
    batches = [int(x) for x in args.batches.split(",")]
    backend = load_backend(args.model, max_batch=max(64, *batches))  # every row of a batch in one forward
    task = load_task("gym:chain_sum", {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1})
    problems = task.problems("test", 32)
    prompts = [backend.chat_prompt(task.messages(p)) for p in problems]
    ours(backend, prompts[:2], 8, 0.7, 0)  # warm-up
    table = Table(title=f"generated tokens/s, {args.model}, T=0.7, max {args.max_tokens} tokens")
    for col in ("batch", "bare generate", "sharpen backend", "overhead"):
        table.add_column(col, justify="right")
    for b in batches:
        tot = {"bare": [0, 0.0], "ours": [0, 0.0]}
        for r in range(args.rounds):
            # past 32 rows the problems repeat, as a vote request's samples repeat its prompt
            batch = [prompts[(i // args.per_prompt) % len(prompts)] for i in range(b)] if b > 1 else prompts[r : r + 1]
            for name, fn in (("bare", bare_generate), ("ours", ours)):
                n, s = fn(backend, batch, args.max_tokens, 0.7, 100 + r)
                tot[name][0] += n
                tot[name][1] += s
        bare_tps = tot["bare"][0] / tot["bare"][1]
        our_tps = tot["ours"][0] / tot["ours"][1]
        table.add_row(str(b), f"{bare_tps:.1f}", f"{our_tps:.1f}", f"{(bare_tps / our_tps - 1) * 100:+.1f}%")
    Console().print(table)


if __name__ == "__main__":
    main()
