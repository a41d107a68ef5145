"""Accuracy against generated tokens: the plot of a `sharpen sweep`."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from sharpen.io import atomic_write_bytes


def plot_sweep(results: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """One line per algorithm@scorer: x = mean generated tokens actually spent per problem (log2),
    y = accuracy with its 95% bootstrap interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    keys = list(dict.fromkeys((r["algo"], r["scorer"]) for r in results))
    for algo, scorer in keys:
        rs = sorted((r for r in results if r["algo"] == algo and r["scorer"] == scorer), key=lambda r: r["budget"])
        x = [max(1.0, r["mean_generated_tokens"]) for r in rs]
        y = [r["accuracy"] for r in rs]
        lo = [r["accuracy"] - r["accuracy_ci95"][0] for r in rs]
        hi = [r["accuracy_ci95"][1] - r["accuracy"] for r in rs]
        label = algo if algo == "vote" else f"{algo} ({scorer})"
        ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("generated tokens per problem (actually spent)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
