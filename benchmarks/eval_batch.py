"""Wall time of a held-out evaluation at several batch sizes (`eval.batch` in a loop config:
problems per generate call and rows per forward pass) and with either decoder (sharpen's loop, in
which finished rows leave the batch, or HF `generate`), and whether the rows are the same.

    .venv/bin/python benchmarks/eval_batch.py [--model smollm2-135m] [--n 800] [--batches 32 64 128]
        [--samples 0] [--max-tokens 40] [--decoders loop generate]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sharpen.backends import load_backend
from sharpen.core.console import quiet_libraries
from sharpen.core.io import read_jsonl
from sharpen.core.tasks import load_task
from sharpen.search.evaluate import EvalConfig, evaluate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=800)
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--samples", type=int, default=0, help="sampled solutions per problem besides the greedy one")
    ap.add_argument("--decoders", nargs="+", choices=["loop", "generate"], default=["loop"])
    args = ap.parse_args()
    quiet_libraries()
    task = load_task("gym:chain_sum", {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1})
    problems = task.problems("test", args.n, seed=0)
    table = Table(title=f"eval of {args.n} chain_sum problems (greedy + {args.samples} samples), {args.model}")
    for col in ("batch", "decoder", "seconds", "greedy", "greedy rows same as first", "sampled rows same"):
        table.add_column(col)
    first = None
    with tempfile.TemporaryDirectory() as tmp:
        for batch in args.batches:
            for decoder in args.decoders:
                backend = load_backend(args.model, seed=0, max_batch=batch, drop_finished=decoder == "loop")
                cfg = EvalConfig(samples=args.samples, max_tokens=args.max_tokens, seed=0, problems_per_call=batch)
                out = Path(tmp) / f"b{batch}-{decoder}.jsonl"
                t0 = time.perf_counter()
                m = evaluate(backend, task, problems, cfg, out_jsonl=out)
                secs = time.perf_counter() - t0
                rows = [(r["greedy"], r.get("samples", [])) for r in read_jsonl(out)]
                first = rows if first is None else first
                same_greedy = sum(a[0] == b[0] for a, b in zip(rows, first, strict=True))
                same_samples = sum(x == y for a, b in zip(rows, first, strict=True) for x, y in zip(a[1], b[1], strict=True))
                table.add_row(str(batch), decoder, f"{secs:.1f}", f"{m['greedy']:.3f}", f"{same_greedy}/{len(rows)}",
                              f"{same_samples}/{len(rows) * args.samples}")
    Console().print(table)


if __name__ == "__main__":
    main()
