"""Generated tokens/s of the backends on the same prompts: the in-process HF backend, and the OpenAI
backend against `transformers serve` (started here), against llama-cpp-python's server on the
embedded model's GGUF (started here with --llamacpp) and against any other server you name.

    .venv/bin/python benchmarks/backends.py                        # HF + transformers serve
    .venv/bin/python benchmarks/backends.py --llamacpp             # + llama.cpp, without and with its KV cache
    .venv/bin/python benchmarks/backends.py --server "openai:http://127.0.0.1:8080/v1#smollm2;tokenizer=smollm2-135m"

llama-cpp-python always reuses the prompt prefix it shares with the previous request (one KV state,
one request at a time); `--cache true` also keeps earlier states (a RAM cache of up to 2 GiB), so
the llama.cpp rows come as "prefix of the last request" and "+ --cache". The server reports no
cached prompt tokens, so that column stays 0 for it (and rows sampled after a state restored from
that cache can differ from those without it, so its token counts differ a little too). A third llama.cpp row asks for no log-probs
(`;logprobs=off`): llama-cpp-python ranks the whole vocabulary in Python for each token it returns
them for.

Two workloads: 32 held-out chain_sum problems x 8 samples (T=0.7, answer mode), and one MCTS collection
(4 problems, budget 256, rollout scorer, uniform priors so servers without log-probs can run it).
Prints one table row per backend and workload: generated tokens, wall seconds, tokens/s, and the
prompt tokens the server said it served from its cache (where it says so).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def workloads(backend, label: str, problems: int, samples: int) -> list[dict]:
    from sharpen.api import make_process
    from sharpen.backends.base import SamplingParams
    from sharpen.core.tasks import load_task
    from sharpen.search.collect import search_problems
    from sharpen.search.process import SearchSettings
    from sharpen.search.scorers import make_scorer

    task = load_task("gym:chain_sum", {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1})
    probs = task.problems("test", problems)
    prompts = [backend.chat_prompt(task.messages(p)) for p in probs]
    rows = []
    before = backend.meter.snapshot()
    t0 = time.perf_counter()
    backend.generate(prompts, SamplingParams(n=samples, temperature=0.7, max_tokens=48, stop_at="answer", seed=0))
    used = backend.meter.snapshot() - before
    wall = time.perf_counter() - t0
    rows.append({"backend": label, "workload": f"{problems} problems x {samples} samples",
                 "tokens": used.generated_tokens, "wall": wall, "cached": used.cached_tokens})
    settings = SearchSettings(temperature=0.7, step_tokens=24, rollout_tokens=32, max_depth=5, parallel=4)
    process = make_process(backend, task, settings)
    scorer = make_scorer("rollout", process)
    before = backend.meter.snapshot()
    t0 = time.perf_counter()
    search_problems(process, scorer, "mcts", probs[:4], 256, seed=0, algo_args={"priors": "uniform"}, parallel=4)
    used = backend.meter.snapshot() - before
    rows.append({"backend": label, "workload": "mcts collection, 4 problems x 256 tokens",
                 "tokens": used.generated_tokens, "wall": time.perf_counter() - t0, "cached": used.cached_tokens})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--server", action="append", default=[], help="another openai: spec to measure (repeatable)")
    ap.add_argument("--no-transformers-serve", action="store_true")
    ap.add_argument("--in-flight", type=int, default=8)
    ap.add_argument("--no-hf", action="store_true", help="skip the in-process HF backend")
    ap.add_argument("--llamacpp", action="store_true", help="start llama-cpp-python's server on the embedded GGUF "
                    "and measure it without and with its KV-state cache (needs `pip install 'sharpen[llamacpp]'`)")
    ap.add_argument("--llamacpp-threads", type=int, default=None, help="its --n_threads (default: the server's, half the cores)")
    args = ap.parse_args()

    from sharpen.backends.hf import HFBackend
    from sharpen.backends.models import resolve_model
    from sharpen.backends.openai import OpenAIBackend

    path = str(resolve_model("smollm2-135m"))
    rows = [] if args.no_hf else workloads(HFBackend(path, seed=0, max_batch=64), "HF in-process", args.problems,
                                           args.samples)
    def served(server, options: str, label: str) -> list[dict]:
        """The workloads through `server`, started here and stopped after."""
        s = server.start()
        try:
            return measured(f"{s.spec};in_flight={args.in_flight}{options}", label)
        finally:
            s.stop()

    def measured(spec: str, label: str) -> list[dict]:
        b = OpenAIBackend(spec)
        try:
            return workloads(b, label, args.problems, args.samples)
        finally:
            b.close()

    if not args.no_transformers_serve:
        from servers import TransformersServer

        rows += served(TransformersServer(path, Path("/tmp/sharpen-bench-serve.log")), "",
                       f"openai: transformers serve ({args.in_flight} in flight)")
    if args.llamacpp:
        from servers import LlamaCppServer, builtin_gguf

        for label, extra, opts in (("prefix of the last request", [], ""), ("+ --cache", ["--cache", "true"], ""),
                                   ("prefix of the last request, ;logprobs=off", [], ";logprobs=off")):
            server = LlamaCppServer(builtin_gguf(), Path("/tmp/sharpen-bench-llamacpp.log"),
                                    threads=args.llamacpp_threads, extra=extra)
            rows += served(server, opts, f"openai: llama.cpp server, {label}")
    for spec in args.server:
        rows += measured(spec, f"openai: {spec.split('#')[0]}")
    print("| backend | workload | generated tokens | wall s | tokens/s | cached prompt tokens |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['workload']} | {r['tokens']} | {r['wall']:.1f} | {r['tokens'] / r['wall']:.1f} | "
              f"{r['cached']} |")


if __name__ == "__main__":
    main()
