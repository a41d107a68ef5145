"""Wall time of the loop's collection stage (MCTS, oracle scorer, lockstep batching) at several
backend batch sizes (`collect.batch` in a loop config: rows per forward pass), with the tokens
spent and what the trees found. The batch regroups the sampled rows, so the trees differ.

    .venv/bin/python benchmarks/collect_batch.py [--model smollm2-135m] [--n 40] [--batches 32 64 128]
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from sharpen.backends import load_backend
from sharpen.core.console import quiet_libraries
from sharpen.core.tasks import load_task
from sharpen.search.collect import search_metrics, search_problems
from sharpen.search.process import LMProcess
from sharpen.search.scorers import make_scorer
from sharpen.train.data import step_pairs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=40, help="training problems, all searched at once")
    ap.add_argument("--budget", type=int, default=200)
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128])
    args = ap.parse_args()
    quiet_libraries()
    task = load_task("gym:chain_sum", {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1})
    problems = task.problems("train", args.n, seed=0)
    table = Table(title=f"MCTS collection of {args.n} chain_sum problems (k=8, oracle:1, budget {args.budget}), {args.model}")
    for col in ("batch", "seconds", "generated tokens", "tokens/s", "search acc.", "step pairs"):
        table.add_column(col)
    for batch in args.batches:
        backend = load_backend(args.model, seed=0, max_batch=batch)
        process = LMProcess(backend, task, temperature=0.8, step_tokens=24, rollout_tokens=32, max_depth=5,
                            strict_answers=True)
        scorer = make_scorer("oracle:1", process, collect=True)
        t0 = time.perf_counter()
        trees = search_problems(process, scorer, "mcts", problems, args.budget, seed=1, algo_args={"k": 8},
                                parallel=args.n)
        secs = time.perf_counter() - t0
        m = search_metrics(trees, args.budget)
        tokens = sum(t.usage.get("generated_tokens", 0) for t in trees)
        pairs = len(step_pairs(trees, min_margin=0.25, pairing="all"))
        table.add_row(str(batch), f"{secs:.1f}", str(tokens), f"{tokens / secs:.1f}", f"{m['accuracy']:.3f}", str(pairs))
    Console().print(table)


if __name__ == "__main__":
    main()
