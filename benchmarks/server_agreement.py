"""Do the server backends give the HF backend's answers? `sharpen eval` on the same held-out chain_sum
problems through the in-process HF backend, `transformers serve` and llama.cpp's server (both started
here on the embedded model): greedy answers compared problem by problem, and sampled accuracy
(pass@1 over --samples samples a problem) beside the HF backend's with a 95% bootstrap interval.

    .venv/bin/python benchmarks/server_agreement.py --n 100 --samples 4

llama.cpp's server serves the GGUF (Q4_1) the embedded model is converted from, so its floats differ
from the converted weights'; `transformers serve` serves the converted dir itself. Through `transformers
serve` 8 requests are in flight: it seeds one process-global generator, so its sampled rows are a valid
sample but not reproducible at that setting (they are at `;in_flight=1`, about 8x slower here).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

TASK_ARGS = ["--task-arg", "min_terms=2", "--task-arg", "max_terms=3", "--task-arg", "min_digits=1",
             "--task-arg", "max_digits=1"]


def run_eval(model: str, n: int, samples: int, out: Path) -> tuple[dict, list[dict]]:
    cmd = [sys.executable, "-m", "sharpen", "eval", "--model", model, "--n", str(n), "--samples", str(samples),
           "--max-tokens", "64", *TASK_ARGS, "--out", str(out), "--json"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    m = json.loads(r.stdout.strip().splitlines()[-1]) | {"wall": time.perf_counter() - t0}
    rows = [json.loads(line) for line in (out / "problems.jsonl").read_text().splitlines()]
    return m, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp server threads")
    ap.add_argument("--servers", default="transformers,llamacpp", help="which servers: transformers, llamacpp or both")
    args = ap.parse_args()

    from servers import LlamaCppServer, TransformersServer, builtin_gguf

    from sharpen.backends.models import resolve_model
    from sharpen.core.stats import bootstrap_ci, paired_bootstrap

    work = Path(tempfile.mkdtemp(prefix="agreement-"))
    model_dir = str(resolve_model("smollm2-135m"))
    results = {"HF (in process)": run_eval("smollm2-135m", args.n, args.samples, work / "hf")}
    servers = [("transformers serve", TransformersServer(model_dir, work / "ts.log"), ";tokenizer=smollm2-135m;in_flight=8"),
               ("llama.cpp server", LlamaCppServer(builtin_gguf(), work / "llama.log", threads=args.threads), ";logprobs=off")]
    keep = {{"transformers": "transformers serve", "llamacpp": "llama.cpp server"}.get(x.strip(), x) for x in args.servers.split(",")}
    servers = [s for s in servers if s[0] in keep]
    for name, server, extra in servers:
        server.start()
        try:
            spec = server.spec.split(";")[0] + extra if name == "transformers serve" else server.spec + extra
            results[name] = run_eval(spec, args.n, args.samples, work / name.split()[0])
        finally:
            server.stop()

    _, hf_rows = results["HF (in process)"]
    hf_pass = [sum(s["correct"] for s in r["samples"]) / max(1, len(r["samples"])) for r in hf_rows]
    print(f"\n{args.n} held-out chain_sum problems, greedy and {args.samples} samples each (T=0.7)")
    print("| backend | greedy answers equal to HF's | greedy acc | pass@1 [95% CI] | vs HF pass@1 (paired) | wall s |")
    print("|---|---|---|---|---|---|")
    for name, (m, rows) in results.items():
        same = sum(a["greedy"]["answer"] == b["greedy"]["answer"] for a, b in zip(rows, hf_rows, strict=True))
        p = [sum(s["correct"] for s in r["samples"]) / max(1, len(r["samples"])) for r in rows]
        lo, hi = bootstrap_ci(p)
        d, (dlo, dhi) = paired_bootstrap(hf_pass, p)
        print(f"| {name} | {same}/{len(rows)} | {m['greedy']:.3f} | {sum(p) / len(p):.3f} [{lo:.3f}, {hi:.3f}] | "
              f"{d:+.3f} [{dlo:+.3f}, {dhi:+.3f}] | {m['wall']:.0f} |")
    print(f"(runs under {work})")


if __name__ == "__main__":
    main()
