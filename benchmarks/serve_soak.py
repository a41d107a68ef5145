"""Memory of a long-lived `sharpen serve`: a fixed mix of requests against one server on 127.0.0.1,
the server's resident memory (RSS, from /proc) read after request 500 and after the last.

    .venv/bin/python benchmarks/serve_soak.py                    # 2,000 requests, the embedded model
    .venv/bin/python benchmarks/serve_soak.py --requests 400 --checkpoint 100

The mix, in a fixed seeded order, sent by --clients threads:
  honest     a vote search on a new question each time (a new problem id, a new prompt)
  malformed  bodies the server must refuse (not JSON, no messages, a bad option): 400
  over-long  a prompt longer than the model's context: 400, refused before it is searched
  cancelled  a client that hangs up before the answer (its search stops at its next backend call)
Prints RSS after --checkpoint requests and after the last, their growth in percent, and the count of
each reply status. A server whose caches grow with every request shows it here as growth.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import free_port, start  # noqa: E402

MIX = (("honest", 0.5), ("malformed", 0.2), ("over-long", 0.15), ("cancelled", 0.15))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def request(base: str, kind: str, i: int, budget: int) -> str:
    """Send request `i` of kind `kind`; its HTTP status (or `hangup` for a client that left)."""
    rng = random.Random(i)
    question = f"What is {rng.randint(1, 999)} + {rng.randint(1, 999)} - {rng.randint(1, 99)}? (#{i})"
    body: bytes
    timeout = 600.0
    if kind == "honest":
        body = json.dumps({"messages": [{"role": "user", "content": question}], "seed": i,
                           "search": {"algo": "vote", "budget": budget}}).encode()
    elif kind == "malformed":
        body = [b"{not json", json.dumps({"messages": []}).encode(),
                json.dumps({"messages": [{"role": "user", "content": question}],
                            "search": {"algo": "beam", "width": "wide"}}).encode()][i % 3]
    elif kind == "over-long":
        body = json.dumps({"messages": [{"role": "user", "content": question + " 1 +" * 20000}]}).encode()
    else:  # cancelled: the client gives up long before a search of this budget is done
        body = json.dumps({"messages": [{"role": "user", "content": question}], "seed": i,
                           "search": {"algo": "vote", "budget": budget * 8}}).encode()
        timeout = 0.3
    req = urllib.request.Request(f"{base}/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return str(r.status)
    except urllib.error.HTTPError as e:
        return str(e.code)
    except (TimeoutError, urllib.error.URLError, OSError):
        return "hangup"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--checkpoint", type=int, default=500, help="read RSS after this many requests too")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--budget", type=int, default=32, help="an honest request's token budget")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not 0 < args.checkpoint < args.requests:
        sys.exit("--checkpoint must be between 0 and --requests (fix: e.g. --requests 2000 --checkpoint 500)")

    kinds = [k for k, _ in MIX]
    order = random.Random(args.seed).choices(kinds, weights=[w for _, w in MIX], k=args.requests)
    port = free_port()
    log = Path(f"/tmp/serve_soak_{port}.log")
    server_args = argparse.Namespace(model=args.model, budget=args.budget, queue=256, algo="vote", batch=None,
                                     dtype=None, continuous_batching=False)
    proc = start(server_args, port, log)
    base = f"http://127.0.0.1:{port}"
    statuses: collections.Counter = collections.Counter()
    lock = threading.Lock()
    nxt = iter(range(args.requests))
    done = 0
    readings: dict[int, float] = {}
    t0 = time.time()

    def client() -> None:
        nonlocal done
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            status = request(base, order[i], i, args.budget)
            with lock:
                statuses[(order[i], status)] += 1
                done += 1
                if done == args.checkpoint:
                    readings[done] = rss_mb(proc.pid)

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(2)  # cancelled searches stop at their next backend call
        readings[args.requests] = rss_mb(proc.pid)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
    first, last = readings[args.checkpoint], readings[args.requests]
    print(f"requests {args.requests} ({args.clients} clients, honest budget {args.budget}) in {time.time() - t0:.0f} s")
    for (kind, status), n in sorted(statuses.items()):
        print(f"  {kind:10s} {status:7s} {n}")
    print(f"RSS after request {args.checkpoint}: {first:.0f} MB; after request {args.requests}: {last:.0f} MB; "
          f"growth {100 * (last - first) / first:+.1f}%")


if __name__ == "__main__":
    main()
