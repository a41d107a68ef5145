"""Load on `sharpen serve`: N concurrent clients (the official `openai` client, one thread each) for a
fixed time against a server on 127.0.0.1, beside the same requests sent one at a time.

    .venv/bin/python benchmarks/serve_load.py --clients 1,8,32 --seconds 60 --budget 256
    .venv/bin/python benchmarks/serve_load.py --clients 8 --seconds 20 --queue 2    # the 429 path
    .venv/bin/python benchmarks/serve_load.py --clients 1,32 --continuous-batching  # rows join the running decode

Starts `sharpen serve` itself (embedded model unless --model), prints one row per client count:
requests/s, p50/p95 latency, errors, 429s, generated tokens/s; and the speed-up over one client.
Each client loops until the time is up (bounded by --max-requests as well).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

QUESTIONS = [f"What is {a} + {b} - {c}?" for a in range(1, 10) for b in range(1, 10) for c in range(1, 4)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: argparse.Namespace, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "sharpen", "serve", "--model", args.model, "--port", str(port),
           "--budget", str(args.budget), "--queue", str(args.queue), "--algo", args.algo]
    if args.batch:
        cmd += ["--batch", str(args.batch)]
    if args.dtype:
        cmd += ["--dtype", args.dtype]
    if args.continuous_batching:
        cmd += ["--continuous-batching"]
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None:
                sys.exit(f"sharpen serve exited: {log.read_text()[-1500:]}")
            time.sleep(0.5)
    sys.exit("sharpen serve did not start")


def load(base: str, clients: int, seconds: float, max_requests: int, budget: int) -> dict:
    import openai

    lat: list[float] = []
    tokens = [0]
    errors = [0]
    limited = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(i: int) -> None:
        c = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=600)
        n = 0
        while time.monotonic() < stop_at and n < max_requests:
            q = QUESTIONS[(i * 7919 + n) % len(QUESTIONS)]
            t0 = time.monotonic()
            try:
                r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": q}],
                                              extra_body={"search": {"budget": budget, "seed": i * 1000 + n}})
                with lock:
                    lat.append(time.monotonic() - t0)
                    tokens[0] += r.usage.completion_tokens
            except openai.RateLimitError:
                with lock:
                    limited[0] += 1
                time.sleep(1.0)  # Retry-After
            except Exception:  # noqa: BLE001 - counted
                with lock:
                    errors[0] += 1
            n += 1

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    lat.sort()

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")

    return {"clients": clients, "requests": len(lat), "wall": wall, "rps": len(lat) / wall, "p50": pct(0.5),
            "p95": pct(0.95), "errors": errors[0], "429": limited[0], "tok_s": tokens[0] / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--max-requests", type=int, default=10_000, help="per client")
    ap.add_argument("--budget", type=int, default=256)
    ap.add_argument("--algo", default="vote")
    ap.add_argument("--queue", type=int, default=64)
    ap.add_argument("--batch", type=int, default=None, help="the server's rows per forward pass (default: its own)")
    ap.add_argument("--dtype", default=None, help="the server's --dtype (default: its own, auto)")
    ap.add_argument("--continuous-batching", action="store_true",
                    help="the server joins rows into the running decode instead of merging whole calls")
    args = ap.parse_args()
    port = free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"sharpen-serve-{port}.log"
    proc = start(args, port, log)
    rows = []
    try:
        for n in [int(x) for x in args.clients.split(",")]:
            rows.append(load(f"http://127.0.0.1:{port}", n, args.seconds, args.max_requests, args.budget))
            r = rows[-1]
            print(f"clients {r['clients']:>3}: {r['requests']} requests in {r['wall']:.0f} s", flush=True)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
    base = rows[0]["rps"] if rows and rows[0]["clients"] == 1 else None
    print(f"\n{args.model}, algo {args.algo}, budget {args.budget}, queue {args.queue}, "
          f"batch {args.batch or 'default'}, dtype {args.dtype or 'default'}, "
          f"{'continuous batching' if args.continuous_batching else 'merged calls'}, {args.seconds:g} s per row")
    print("| clients | requests | req/s | p50 s | p95 s | errors | 429 | gen tok/s | vs 1 client |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        vs = f"{r['rps'] / base:.1f}x" if base else ""
        print(f"| {r['clients']} | {r['requests']} | {r['rps']:.2f} | {r['p50']:.1f} | {r['p95']:.1f} | "
              f"{r['errors']} | {r['429']} | {r['tok_s']:.0f} | {vs} |")


if __name__ == "__main__":
    main()
