"""Does bfloat16 change the answers? Greedy and sampled accuracy of the HF backend in float32 and in
bfloat16 on the same held-out chain_sum problems (the same seeds), with paired bootstrap intervals
for bfloat16 - float32, the share of greedy answers that are equal, each run's wall time, and whether a
row's tokens depend on its batch-mates (8 prompts x 8 samples drawn alone and inside one call of all the
problems' rows, the same row seeds):

    .venv/bin/python benchmarks/dtype.py [--model smollm2-135m] [--n 200] [--samples 4]
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from sharpen.backends.base import SamplingParams
from sharpen.backends.hf import HFBackend
from sharpen.backends.models import resolve_model
from sharpen.core.console import quiet_libraries
from sharpen.core.stats import paired_bootstrap
from sharpen.core.tasks import load_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    quiet_libraries()
    task = load_task("gym:chain_sum", {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1})
    problems = task.problems("test", args.n)
    runs = {}
    for dtype in ("float32", "bfloat16"):
        backend = HFBackend(resolve_model(args.model), max_batch=args.batch, dtype=dtype)
        prompts = [backend.chat_prompt(task.messages(p)) for p in problems]
        t0 = time.perf_counter()
        greedy = backend.generate(prompts, SamplingParams(n=1, temperature=0.0, max_tokens=64, stop_at="answer"))
        sampled = backend.generate(prompts, SamplingParams(n=args.samples, temperature=0.7, max_tokens=64,
                                                           stop_at="answer", seed=0))
        answers = [task.extract(o[0].text) for o in greedy]
        seconds = time.perf_counter() - t0
        rows = SamplingParams(n=8, temperature=0.7, max_tokens=64, stop_at="answer")
        seeds = list(range(100, 100 + args.n))
        together = backend.generate(prompts, rows, seeds=seeds)
        differ = sum(a.token_ids != b.token_ids for i in range(8)
                     for a, b in zip(backend.generate(prompts[i:i + 1], rows, seeds=seeds[i:i + 1])[0], together[i],
                                     strict=True))
        runs[dtype] = {
            "answers": answers,
            "greedy": [float(task.verify(p, a)) for p, a in zip(problems, answers, strict=True)],
            "pass@1": [sum(task.verify(p, task.extract(c.text)) for c in o) / args.samples
                       for p, o in zip(problems, sampled, strict=True)],
            "seconds": seconds,
            "differ": differ,
        }
    table = Table(title=f"{args.model}, {args.n} held-out chain_sum problems, greedy + {args.samples} samples at T=0.7")
    for col in ("dtype", "greedy", "pass@1", "wall s", "rows alone != in the batch"):
        table.add_column(col, justify="right")
    for dtype, r in runs.items():
        table.add_row(dtype, f"{sum(r['greedy']) / args.n:.3f}", f"{sum(r['pass@1']) / args.n:.3f}",
                      f"{r['seconds']:.0f}", f"{r['differ']} / 64")
    for metric in ("greedy", "pass@1"):
        d, (lo, hi) = paired_bootstrap(runs["float32"][metric], runs["bfloat16"][metric])
        table.add_row(f"bf16 - fp32 {metric}", f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]", "", "", "")
    Console().print(table)
    same = sum(a == b for a, b in zip(runs["float32"]["answers"], runs["bfloat16"]["answers"], strict=True))
    print(f"greedy answers equal in both: {same}/{args.n}")


if __name__ == "__main__":
    main()
