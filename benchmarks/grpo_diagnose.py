"""What a GRPO user watches, read from finished or running `sharpen run` grpo run dirs: per round and
per span of training steps, the reward and its spread within groups, the share of groups whose
advantage is zero (every completion right or every one wrong: no gradient from that prompt),
completion length, entropy, gradient norm and, with a KL term, KL; beside each round's held-out
greedy accuracy and generated tokens. Runs side by side show where a flat run parts from the others.

    .venv/bin/python benchmarks/grpo_diagnose.py runs/grpo-s0 runs/grpo-s1 [--span 20]

Reads TRL's per-step log (`log_history` in the last checkpoint's trainer_state.json of each round's
train dir; `train.logging_steps: 1` logs every step), `round-N/eval/metrics.json` and
`round-N/train/summary.json`.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from sharpen.report.training import step_log

# TRL GRPOTrainer's log keys, and the short names printed
KEYS = {"reward": "reward", "reward_std": "std", "frac_reward_zero_std": "zero-adv", "completions/mean_length": "len",
        "entropy": "entropy", "grad_norm": "gnorm", "kl": "kl", "clip_ratio/region_mean": "clip",
        "step_credit/disagree": "disagree", "step_credit/valued": "valued",
        "step_credit/shared": "shared"}


def mean(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return sum(xs) / len(xs) if xs else float("nan")


def rounds(run: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in run.glob("round-*") if p.name.split("-")[1].isdigit())


def describe(run: Path, span: int) -> None:
    print(f"== {run}")
    for r in rounds(run):
        metrics = run / f"round-{r}" / "eval" / "metrics.json"
        greedy = json.loads(metrics.read_text()).get("greedy") if metrics.exists() else None
        summary = run / f"round-{r}" / "train" / "summary.json"
        tokens = json.loads(summary.read_text()).get("generated_tokens") if summary.exists() else None
        log = step_log(run / f"round-{r}" / "train")
        head = f"round {r}: greedy {greedy if greedy is not None else '-'}"
        if tokens is not None:
            head += f", generated tokens {tokens}"
        print(head + (f", {len(log)} logged steps" if log else ""))
        if not log:
            continue
        present = [k for k in KEYS if any(k in e for e in log)]
        print("  steps    " + " ".join(f"{KEYS[k]:>9s}" for k in present))
        for lo in range(0, len(log), span):
            part = log[lo : lo + span]
            cells = " ".join(f"{mean([e.get(k) for e in part]):9.3f}" for k in present)
            print(f"  {part[0]['step']:>3d}-{part[-1]['step']:<4d} {cells}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--span", type=int, default=20, help="training steps averaged per printed row")
    args = ap.parse_args()
    for run in args.runs:
        if not (run / "config.yaml").is_file():
            raise SystemExit(f"{run}: not a sharpen run dir, no config.yaml (fix: pass the --out of `sharpen run`)")
        describe(run, args.span)


if __name__ == "__main__":
    main()
