"""Kill a `sharpen run` with SIGKILL at seeded random moments, resume it after each kill, and check
that it ends exactly where an uninterrupted run of the same config ends.

    .venv/bin/python benchmarks/random_kills.py --config configs/demo.yaml --kills 5 [--seed 0] [--work DIR]

1. `WORK/ref`: an uninterrupted run of CONFIG; its manifest gives each stage's duration.
2. The moments: kill i goes to a stage of kind collect, build, train, eval, collect, ... in turn (a
   round drawn at random; round 0's evaluation is an eval stage too), at a random fraction of that
   stage's reference duration after the stage starts. They are taken in run order.
3. `WORK/killed`: `sharpen run CONFIG --out WORK/killed`, then `--resume` after each kill. Each
   process is watched through its manifest and killed (its whole process group) at its moment: the
   fraction of the stage's reference duration after the stage starts, in the first stage at or after
   the planned one that this process starts; or as soon as that stage ends, when it ends sooner (a
   resumed stage skips work), so a kill lands at most one stage late. A process that ends on its own
   ends the kills; one that fails is a resume bug. A last `--resume` finishes the run.
4. The two runs are compared: every JSON record (paired.json, each stage's metrics.json and
   summary.json, the manifest's stage records) without what measures the process rather than the
   run (wall times, throughput, backend usage, cached prefill tokens), every JSONL file as rows by
   problem id (without `seconds` and `cached_tokens`), every built dataset row by row, and every
   trained model's weights byte for byte.

Prints each kill, the differences (exit status 1 when there are any) and the files a kill left
behind that a finished run does not have (temp files of interrupted atomic writes). The tests call
`random_kills` on a tiny config (tests/test_random_kills.py, marked slow).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

KINDS = ("collect", "build", "train", "eval")
RECORD_VOLATILE = {"seconds", "wall_seconds", "tokens_per_second", "usage", "cached_tokens", "started", "finished",
                   "hashes"}
ROW_VOLATILE = {"seconds", "cached_tokens"}


def _start(config: Path, run: Path, resume: bool, log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-m", "sharpen", "run", str(config), "--out", str(run)] + (["--resume"] if resume else [])
    with open(log, "w") as f:  # the child keeps its own descriptor
        return subprocess.Popen(args, cwd=run.parent, env=env, stdout=f, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)


def _stages(run: Path) -> dict[str, dict]:
    try:
        return json.loads((run / "manifest.json").read_text())["stages"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return {}


def _tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def reference_run(config: Path, run: Path, log: Path, timeout: float) -> list[tuple[str, float]]:
    """Run `config` uninterrupted into `run`; returns its stages in run order with their durations."""
    p = _start(config, run, False, log)
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        raise RuntimeError(f"the reference run took over {timeout:.0f} s") from None
    if rc != 0:
        raise RuntimeError(f"the reference run failed (exit {rc}):\n{_tail(log)}")
    stages = sorted(_stages(run).items(), key=lambda kv: kv[1]["started"])
    return [(name, s["finished"] - s["started"]) for name, s in stages]


def plan_kills(stages: list[tuple[str, float]], kills: int, seed: int) -> list[tuple[str, float]]:
    """`kills` (stage, fraction of its duration) moments, the stage kinds in turn, in run order."""
    rng = random.Random(seed)
    by_kind = {k: [name for name, _ in stages if name.endswith("/" + k)] for k in KINDS}
    kinds = [k for k in KINDS if by_kind[k]]
    plan = [(rng.choice(by_kind[kinds[i % len(kinds)]]), rng.random()) for i in range(kills)]
    order = {name: i for i, (name, _) in enumerate(stages)}
    return sorted(plan, key=lambda m: (order[m[0]], m[1]))


def kill_and_resume(config: Path, run: Path, stages: list[tuple[str, float]], plan: list[tuple[str, float]],
                    logs: Path, timeout: float, say: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Start `config` into `run` and kill it at each moment of `plan`, resuming after each kill, then
    let a last `--resume` finish it. Returns one record per process: what it was planned to be killed
    in, what was running when it was, and how it ended."""
    order = {name: i for i, (name, _) in enumerate(stages)}
    duration = dict(stages)
    events: list[dict[str, Any]] = []
    for i, (planned, frac) in enumerate([*plan, (None, 0.0)]):
        log = logs / f"{i:02d}.log"
        launched = time.time()
        p = _start(config, run, resume=i > 0, log=log)
        event: dict[str, Any] = {"planned": planned, "fraction": round(frac, 3)}
        deadline = launched + timeout
        killed = False
        first = order[planned] if planned is not None else len(order)  # the first stage the kill may land in
        while p.poll() is None and time.time() < deadline and first < len(order):
            mine = [(n, s) for n, s in _stages(run).items() if s.get("started", 0) >= launched and n in order]
            running = [(n, s) for n, s in mine if s["status"] == "running" and order[n] >= first]
            if not running:
                time.sleep(0.005)
                continue
            name, s = min(running, key=lambda ns: order[ns[0]])
            when = s["started"] + frac * duration[name]
            over = False  # a resumed stage skips work and may end before its moment: then kill at once
            while p.poll() is None and time.time() < when and not over:
                time.sleep(0.005)
                over = _stages(run).get(name, {}).get("status") != "running"
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                killed = True
                now = _stages(run)
                event["killed_in"] = [n for n, st in now.items() if st.get("status") == "running"]
                event["after"] = name
                event["after_s"] = round(time.time() - s["started"], 3)
            break
        if not killed:
            try:
                p.wait(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                raise RuntimeError(f"process {i} took over {timeout:.0f} s (log: {log})") from None
            event["exit"] = p.returncode
            if p.returncode != 0:
                event["log"] = _tail(log)
        events.append(event)
        where = f"killed {event['after_s']} s after {event['after']} started, running: {event['killed_in']}" \
            if killed else f"ended with exit {event['exit']}"
        say(f"process {i}: planned {planned} at {frac:.2f}: {where}")
        if not killed:
            break
    return events


def _clean(value: Any, volatile: set[str], run: Path) -> Any:
    """`value` without the `volatile` keys (at any depth), the run's own path written `<run>`."""
    if isinstance(value, dict):
        return {k: _clean(v, volatile, run) for k, v in value.items() if k not in volatile}
    if isinstance(value, list):
        return [_clean(v, volatile, run) for v in value]
    if isinstance(value, str):
        return value.replace(str(run.resolve()), "<run>").replace(str(run), "<run>")
    return value


def _rows_by_id(path: Path, run: Path) -> dict[str, Any]:
    from sharpen.core.io import read_jsonl

    rows: dict[str, Any] = {}
    for i, r in enumerate(read_jsonl(path)):
        key = str(r.get("id", r.get("problem_id", f"row without an id #{i}")))
        while key in rows:  # a row written twice is a difference too
            key += " (again)"
        rows[key] = _clean(r, ROW_VOLATILE, run)
    return rows


def _dataset_rows(path: Path) -> list[dict]:
    from datasets import load_from_disk

    return load_from_disk(str(path)).to_list()


def _skipped(rel: Path) -> bool:
    """Files that belong to training's own checkpoints and caches, compared through the weights instead."""
    return any(part.startswith("checkpoint-") or part.startswith("cache-") for part in rel.parts) or \
        rel.name in ("report.html", "report.md") or rel.parts[0] in ("plots", "tensorboard", "mlruns")


def compare_runs(ref: Path, other: Path) -> tuple[list[str], list[str]]:
    """The differences between two finished runs of one config, and the files `other` has that `ref` lacks."""
    diffs: list[str] = []
    a_files = {p.relative_to(ref) for p in ref.rglob("*") if p.is_file()}
    b_files = {p.relative_to(other) for p in other.rglob("*") if p.is_file()}
    extra = sorted(str(p) for p in b_files - a_files if not _skipped(p))
    for rel in sorted(a_files):
        if _skipped(rel):
            continue
        a, b = ref / rel, other / rel
        if rel.name == "dataset_info.json" or (rel.suffix == ".arrow" and rel.name.startswith("data-")):
            continue  # datasets are compared by their rows below
        if not b.exists():
            diffs.append(f"{rel}: missing")
        elif rel.suffix == ".jsonl":
            ra, rb = _rows_by_id(a, ref), _rows_by_id(b, other)
            if ra != rb:
                ids = sorted(set(ra) ^ set(rb)) or [k for k in ra if ra[k] != rb[k]]
                diffs.append(f"{rel}: {len(ra)} rows vs {len(rb)}; first differing id {ids[0]}")
        elif rel.name == "manifest.json":
            sa, sb = (_clean(json.loads(p.read_text())["stages"], RECORD_VOLATILE, r) for p, r in ((a, ref), (b, other)))
            if sa != sb:
                diffs.append(f"{rel}: stage records differ: {[k for k in sa if sa.get(k) != sb.get(k)]}")
        elif rel.name == "config.yaml":
            if a.read_bytes() != b.read_bytes():
                diffs.append(f"{rel}: differs")
        elif rel.name in ("metrics.json", "summary.json", "paired.json"):
            ja, jb = (_clean(json.loads(p.read_text()), RECORD_VOLATILE, r) for p, r in ((a, ref), (b, other)))
            if ja != jb:
                keys = sorted(k for k in set(ja) | set(jb) if ja.get(k) != jb.get(k)) if isinstance(ja, dict) else []
                diffs.append(f"{rel}: differs in {keys}")
        elif rel.suffix == ".safetensors":
            if a.read_bytes() != b.read_bytes():
                diffs.append(f"{rel}: other weights")
    for info in sorted(ref.rglob("dataset_info.json")):
        d = info.parent.relative_to(ref)
        if not (other / d / "dataset_info.json").exists():
            diffs.append(f"{d}: dataset missing")
            continue
        ra, rb = _dataset_rows(ref / d), _dataset_rows(other / d)
        if ra != rb:
            same_set = sorted(map(json.dumps, ra)) == sorted(map(json.dumps, rb))
            diffs.append(f"{d}: dataset rows differ ({len(ra)} vs {len(rb)}"
                         + (", the same rows in another order)" if same_set else ")"))
    return diffs, extra


def random_kills(config: str | Path, work: str | Path, kills: int = 20, seed: int = 0, timeout: float = 1800,
                 say: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole harness (see the module docstring) in `work`; returns the stages, the plan, one
    event per process, the differences, the extra files and the wall seconds of each part."""
    work = Path(work).resolve()
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    config = Path(config).resolve()
    t0 = time.time()
    stages = reference_run(config, work / "ref", logs / "ref.log", timeout)
    t_ref = time.time() - t0
    say(f"reference run: {t_ref:.0f} s, stages " + ", ".join(f"{n} {d:.1f}s" for n, d in stages))
    plan = plan_kills(stages, kills, seed)
    events = kill_and_resume(config, work / "killed", stages, plan, logs, timeout, say)
    t_kills = time.time() - t0 - t_ref
    failed = [e for e in events if e.get("exit") not in (None, 0)]
    diffs, extra = compare_runs(work / "ref", work / "killed") if not failed else ([], [])
    diffs = [f"process {events.index(e)} failed (exit {e['exit']}):\n{e['log']}" for e in failed] + diffs
    return {"stages": stages, "plan": plan, "events": events, "differences": diffs, "extra_files": extra,
            "kills": sum("killed_in" in e for e in events), "seconds": {"reference": round(t_ref), "killed": round(t_kills)}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="a `sharpen run` config")
    ap.add_argument("--kills", type=int, default=5, help="kills at random moments (default 5)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the moments")
    ap.add_argument("--work", default=None, help="directory for the two runs (default runs/random-kills-<config>)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds any one process may run")
    a = ap.parse_args(argv)
    work = Path(a.work or f"runs/random-kills-{Path(a.config).stem}")
    if work.exists() and any(work.iterdir()):
        print(f"{work} is not empty (pass another --work)", file=sys.stderr)
        return 2
    r = random_kills(a.config, work, a.kills, a.seed, a.timeout)
    print(f"{r['kills']} kills; reference run {r['seconds']['reference']} s, killed and resumed {r['seconds']['killed']} s")
    for f in r["extra_files"]:
        print(f"left behind: {f}")
    for d in r["differences"]:
        print(f"DIFFERENCE: {d}")
    print("same results as the uninterrupted run" if not r["differences"] else f"{len(r['differences'])} differences")
    return 1 if r["differences"] else 0


if __name__ == "__main__":
    sys.exit(main())
