"""Wall time of a greedy held-out evaluation at several batch sizes (`eval.batch` in a loop config:
problems per generate call and rows per forward pass), and whether the greedy rows are the same.

    .venv/bin/python benchmarks/eval_batch.py [--model smollm2-135m] [--n 800] [--batches 32 64 128]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sharpen.backends import load_backend
from sharpen.console import quiet_libraries
from sharpen.evaluate import EvalConfig, evaluate
from sharpen.io import read_jsonl
from sharpen.tasks import load_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=800)
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128])
    args = ap.parse_args()
    quiet_libraries()
    task = load_task("gym:chain_sum", {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1})
    problems = task.problems("test", args.n, seed=0)
    table = Table(title=f"greedy eval of {args.n} chain_sum problems, {args.model}")
    for col in ("batch", "seconds", "greedy", "rows same as first"):
        table.add_column(col)
    first = None
    with tempfile.TemporaryDirectory() as tmp:
        for batch in args.batches:
            backend = load_backend(args.model, seed=0, max_batch=batch)
            cfg = EvalConfig(samples=0, max_tokens=args.max_tokens, seed=0, problems_per_call=batch)
            out = Path(tmp) / f"b{batch}.jsonl"
            t0 = time.perf_counter()
            m = evaluate(backend, task, problems, cfg, out_jsonl=out)
            secs = time.perf_counter() - t0
            rows = [r["greedy"] for r in read_jsonl(out)]
            first = rows if first is None else first
            table.add_row(str(batch), f"{secs:.1f}", f"{m['greedy']:.3f}", str(rows == first))
    Console().print(table)


if __name__ == "__main__":
    main()
