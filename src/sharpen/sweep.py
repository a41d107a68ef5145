"""`sharpen sweep`: every algorithm at every budget on the same problems, and the plot of accuracy
against generated tokens."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from sharpen.errors import ConfigError
from sharpen.io import atomic_write_bytes, atomic_write_json
from sharpen.stats import paired_bootstrap


def parse_budgets(text: str) -> list[int]:
    """`--budgets 256,512,1024` as integers (one-line error otherwise)."""
    try:
        return [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise ConfigError(f"bad --budgets {text!r} (fix: comma-separated integers, e.g. 256,512,1024)") from None


def parse_algo_options(kv: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A sweep's `--arg algo.key=value` items as {algo: {key: value}}."""
    options: dict[str, dict[str, Any]] = {}
    for key, value in kv.items():
        algo, dot, opt = key.partition(".")
        if not dot:
            raise ConfigError(f"bad --arg {key!r} for a sweep (fix: name the algorithm, e.g. --arg mcts.c_puct=1.5)")
        options.setdefault(algo, {})[opt] = value
    return options


def run_sweep(process: Any, scorers: dict[str | None, Any], pairs: list[tuple[str, str | None]], budgets: list[int],
              problems: list, out_dir: Path, seed: int = 0, options: dict[str, dict[str, Any]] | None = None,
              parallel: int = 16, progress: Any = None, header: dict[str, Any] | None = None,
              title: str = "", split: str = "test") -> list[dict[str, Any]]:
    """Search `problems` with each (algorithm, scorer) in `pairs` at each budget; every cell's trees
    and metrics under `out_dir/<algo>@<scorer>/budget-<b>/`, all of them in `out_dir/sweep.json`
    (rewritten after each cell), then `accuracy_vs_tokens.png`. Every cell after the first of a
    budget carries `vs_first`: its accuracy minus the first pair's on the same problems, with a
    paired bootstrap 95% interval (the first pair is the baseline, e.g. `vote`)."""
    from contextlib import nullcontext

    from sharpen.collect import search_metrics, search_problems

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    for budget in budgets:
        base: list[float] | None = None
        for algo, sc in pairs:
            d = out_dir / f"{algo}@{(sc or 'none').replace(':', '-').replace('/', '_')}" / f"budget-{budget}"
            bar = progress(f"{algo}@{sc} {budget} tok" if sc else f"{algo} {budget} tok", len(problems)) if progress else nullcontext(None)
            with bar as advance:
                trees = search_problems(process, scorers.get(sc), algo, problems, budget, seed=seed,
                                        out_jsonl=d / "trees.jsonl", algo_args=(options or {}).get(algo, {}),
                                        on_progress=advance, parallel=parallel, split=split, scorer_spec=sc)
            m = search_metrics(trees, budget) | {"algo": algo, "scorer": sc, "trees": str(d / "trees.jsonl")}
            right = [1.0 if t.correct else 0.0 for t in trees]
            if base is None:
                base = right
            else:
                delta, (lo, hi) = paired_bootstrap(base, right, seed=seed)
                m["vs_first"] = {"baseline": f"{pairs[0][0]}@{pairs[0][1]}" if pairs[0][1] else pairs[0][0],
                                 "delta": delta, "ci95": [lo, hi]}
            atomic_write_json(d / "metrics.json", m)
            results.append(m)
            atomic_write_json(out_dir / "sweep.json", {**(header or {}), "results": results})
    plot_sweep(results, out_dir / "accuracy_vs_tokens.png", title=title)
    return results


def sweep_rows(results: list[dict[str, Any]], budgets: list[int]) -> list[list[str]]:
    """The sweep as a header and one row per algorithm@scorer: each budget's accuracy, generated /
    forward (policy + verifier) tokens per problem, and the paired change vs the first row."""
    rows = [["algorithm", *[str(b) for b in budgets]]]
    for key in dict.fromkeys((r["algo"], r["scorer"]) for r in results):
        cells = {r["budget"]: r for r in results if (r["algo"], r["scorer"]) == key}
        row = [f"{key[0]}@{key[1]}" if key[1] else key[0]]
        for b in budgets:
            c = cells.get(b)
            if c is None:
                row.append("")
                continue
            v = c.get("vs_first")
            vs = f" {v['delta']:+.3f} [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]" if v else ""
            row.append(f"{c['accuracy']:.2f} ({c['mean_generated_tokens']:.0f} / "
                       f"{c['mean_forward_tokens'] + c['mean_verifier_tokens']:.0f}){vs}")
        rows.append(row)
    return rows


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
        label = algo if scorer in (None, "none") else f"{algo} ({scorer})"
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
