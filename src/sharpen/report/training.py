"""What an online-RL user watches, per round and per training step, from TRL's own log: the reward
and its spread within groups, the share of groups whose advantage is zero (every completion right or
every one wrong: no gradient from that prompt), KL (with a KL term), completion length, entropy,
gradient norm, and with step credit the share of steps whose advantage disagrees in sign with their
completion's outcome. Read from `log_history` in the newest checkpoint's trainer_state.json of each
round's train dir (`train.logging_steps: 1` logs every step)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

# TRL GRPOTrainer's log keys (and sharpen's step-credit ones), with the names a table prints
KEYS = {"reward": "reward", "reward_std": "reward std", "frac_reward_zero_std": "zero-advantage groups",
        "kl": "KL", "completions/mean_length": "completion length", "entropy": "entropy", "grad_norm": "grad norm",
        "step_credit/disagree": "step/outcome sign disagreement", "step_credit/valued": "boundaries valued",
        "step_credit/shared": "boundaries shared"}


WINDOW = 10  # training steps in the plotted running mean


def step_log(train_dir: Path) -> list[dict[str, Any]]:
    """The per-step log entries (those with a reward) of the newest checkpoint under `train_dir`."""
    states = sorted(Path(train_dir).rglob("checkpoint-*/trainer_state.json"),
                    key=lambda p: int(p.parent.name.split("-")[1]) if p.parent.name.split("-")[1].isdigit() else -1)
    if not states:
        return []
    try:
        history = json.loads(states[-1].read_text()).get("log_history", [])
    except (OSError, ValueError):
        return []
    return [e for e in history if "step" in e and "reward" in e]


def mean(xs: list[Any]) -> float | None:
    xs = [x for x in xs if isinstance(x, (int, float)) and not math.isnan(x)]
    return sum(xs) / len(xs) if xs else None


def round_logs(run: Path, rounds: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Each round's training log, for the rounds that have one."""
    logs = {r: step_log(Path(run) / f"round-{r}" / "train") for r in rounds}
    return {r: log for r, log in logs.items() if log}


def training_table(logs: dict[int, list[dict[str, Any]]]) -> list[list[str]]:
    """Header and one row per round: each logged quantity's mean over the round's steps; columns no
    round logged are left out."""
    present = [k for k in KEYS if any(k in e for log in logs.values() for e in log)]
    rows = [["round", "steps", *(KEYS[k] for k in present)]]
    for r, log in sorted(logs.items()):
        cells = [mean([e.get(k) for e in log]) for k in present]
        rows.append([str(r), str(len(log)), *("" if c is None else f"{c:.3f}" for c in cells)])
    return rows


def draw_training(logs: dict[int, list[dict[str, Any]]]):
    """A `plot_png` drawer: each logged quantity against training steps counted across rounds (a
    dotted line where a round starts), one panel per quantity: every step faint, the running mean
    over `WINDOW` steps bold."""

    def draw(ax: Any) -> None:
        fig = ax.figure
        present = [k for k in KEYS if any(k in e for log in logs.values() for e in log)]
        fig.clear()
        fig.set_size_inches(8, 1.6 * len(present) + 0.6)
        axes = fig.subplots(len(present), 1, sharex=True, squeeze=False)[:, 0]
        offset, starts = 0, []
        xs_by_round = {}
        for r, log in sorted(logs.items()):
            starts.append((offset, r))
            xs_by_round[r] = [offset + e["step"] for e in log]
            offset += max(e["step"] for e in log)
        for a, key in zip(axes, present, strict=True):
            for r, log in sorted(logs.items()):
                pts = [(x, e[key]) for x, e in zip(xs_by_round[r], log, strict=True) if key in e]
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    a.plot(xs, ys, lw=0.7, color="C0", alpha=0.35)
                    w = max(1, min(WINDOW, len(ys)))  # the running mean over the last `w` steps of the round
                    a.plot(xs[w - 1:], [sum(ys[i - w + 1:i + 1]) / w for i in range(w - 1, len(ys))], lw=1.6, color="C0")
            for x, _ in starts[1:]:
                a.axvline(x, ls=":", color="grey")
            a.set_ylabel(KEYS[key], fontsize=7, rotation=0, ha="right")
            a.grid(alpha=0.3)
        axes[-1].set_xlabel("training step (all rounds; dotted: a new round)")

    return draw
