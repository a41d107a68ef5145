"""`sharpen sweep`: every algorithm at every budget on the same problems, and the plot of accuracy
against generated tokens and against forward tokens (policy + verifier); for a denoising process
(`sharpen.search.denoise_task`), of accuracy and of the mean reward of the chosen x_0 against the
denoiser forwards spent (NFE), the budget's unit there.

A sweep directory grows: sweeping again into it with the same problems and search settings (its
`sweep.json` header) keeps the cells already there, reuses a cell's finished trees when it is asked
for again (a killed sweep resumes), and adds the new ones, so one table and one plot hold e.g.
every algorithm at 4x and 8x and the best few also at 2x and 16x."""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path
from typing import Any

from sharpen.core.errors import ConfigError
from sharpen.core.io import atomic_write_bytes, atomic_write_json, refuse_changed_config
from sharpen.core.stats import paired_bootstrap


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


_PLAIN = re.compile(r"[A-Za-z0-9.=,+:]*")


def cell_name(algo: str, scorer: str | None) -> str:
    """The directory of the row `algo@scorer` in a sweep dir, one per distinct spec. A scorer spec of
    letters, digits and `.=,+:` only is written as it is with ':' as '-' (`vote@none`, `bon@prm-M`,
    `pf@rollout-1`): reading '-' back as ':' gives the spec. Any other spec (a path, a '-' or '_' in
    it) is a readable slug (':' as '-', other characters outside `A-Za-z0-9.=,+-` as '_', at most 80
    of them) then '~' and 8 hex digits of the exact spec's hash (`bon@prm-runs_x~71b4f984`), so
    `prm:runs/x` and `prm:runs_x` get two directories."""
    spec = scorer or "none"
    if _PLAIN.fullmatch(spec):
        return f"{algo}@{spec.replace(':', '-')}"
    slug = re.sub(r"[^A-Za-z0-9.=,+-]", "_", spec.replace(":", "-"))[:80]
    return f"{algo}@{slug}~{hashlib.blake2b(spec.encode(), digest_size=4).hexdigest()}"


def _cell_key(r: dict[str, Any]) -> tuple[str, str | None, int]:
    return r["algo"], r["scorer"], r["budget"]


def prior_cells(out_dir: str | Path, header: dict[str, Any], pairs: list[tuple[str, str | None]],
                budgets: list[int], options: dict[str, dict[str, Any]]
                ) -> tuple[list[dict[str, Any]], list[tuple[str, str | None]]]:
    """The cells of an earlier sweep in `out_dir` that this one does not ask for again, and that sweep's
    rows (algorithm, scorer) in order (both empty when there is no `sweep.json`); a cell asked for again
    resumes from its trees instead. Refused with a one-line
    error, before any work, when that sweep searched other problems or with other search settings (its
    header differs), or when a row asked for (an algorithm@scorer, at any budget) was searched with other
    options: one row, one line of the plot, is one configuration."""
    import json

    path = Path(out_dir) / "sweep.json"
    if not path.is_file():
        return [], []
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = None
    cells = old.get("results") if isinstance(old, dict) else None
    if not isinstance(cells, list) or not all(isinstance(c, dict) and {"algo", "scorer", "budget"} <= c.keys()
                                              for c in cells):
        raise ConfigError(f"{path} is not a sweep.json (fix: another --out)")
    refuse_changed_config(f"the sweep in {out_dir}", old, header, fix="the same settings to extend it, or another --out")
    asked = {(a, sc, b) for a, sc in pairs for b in budgets}
    for c in cells:
        if (c["algo"], c["scorer"]) in pairs and c.get("options") not in (None, algo_options(c["algo"], options)):
            raise ConfigError(f"{out_dir}: {c['algo']} at {c['budget']} was swept with other options {c['options']} "
                              f"(fix: the same --arg to extend its row, or another --out)")
    rows = list(dict.fromkeys((c["algo"], c["scorer"]) for c in cells))
    return [c for c in cells if _cell_key(c) not in asked], rows


def algo_options(algo: str, options: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """Every option of `algo` as it searches (its defaults filled in), from a sweep's `--arg`s."""
    from sharpen.search.registry import get_algorithm

    return get_algorithm(algo).parse((options or {}).get(algo, {})).model_dump()


def run_sweep(process: Any, scorers: dict[str | None, Any], pairs: list[tuple[str, str | None]], budgets: list[int],
              problems: list, out_dir: Path, seed: int = 0, options: dict[str, dict[str, Any]] | None = None,
              parallel: int = 16, progress: Any = None, header: dict[str, Any] | None = None,
              title: str = "", split: str = "test", prior: list[dict[str, Any]] | None = None,
              prior_rows: list[tuple[str, str | None]] | None = None) -> list[dict[str, Any]]:
    """Search `problems` with each (algorithm, scorer) in `pairs` at each budget; every cell's trees
    and metrics under `out_dir/<cell_name(algo, scorer)>/budget-<b>/`, all of them in `out_dir/sweep.json`
    (rewritten after each cell), then `accuracy_vs_tokens.png`. Every cell after the first of a
    budget carries `vs_first`: its accuracy minus the first pair's on the same problems (on a denoising
    process, the chosen x_0's mean reward, by which it selects), with a paired bootstrap 95% interval
    (the first pair is the baseline, e.g. `vote` or `bon`). `prior`: the cells of
    an earlier sweep into `out_dir` that are not asked for again (`prior_cells`), kept in the results;
    `prior_rows`, that sweep's rows in order, come first, so its first row stays the baseline.
    Returns every cell, ordered by budget."""
    from contextlib import nullcontext

    from sharpen.core.meter import UsageMeter
    from sharpen.search.collect import search_metrics
    from sharpen.search.denoise_task import chosen_reward, denoise_metrics, is_denoise_process
    from sharpen.search.spec import SearchSpec, execute

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kept = list(prior or [])
    # the earlier sweep's rows first: its first row stays every budget's baseline as the dir grows
    order = list(dict.fromkeys([*(tuple(r) for r in prior_rows or []), *((c["algo"], c["scorer"]) for c in kept),
                                *pairs]))
    right: dict[tuple[str, str | None, int], list[float]] = {}

    def merged(new: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted([*kept, *new], key=lambda c: (c["budget"], order.index((c["algo"], c["scorer"]))))

    def compare(cells: list[dict[str, Any]], budget: int) -> None:
        """`vs_first` on every cell at `budget` against the first of them in `order` (the baseline)."""
        at = [c for c in merged(cells) if c["budget"] == budget]
        if not at:
            return
        base, label = _correct(at[0], right), _label(at[0])
        for i, c in enumerate(at):
            before = c.pop("vs_first", None)
            mine = _correct(c, right) if i else None
            if base is not None and mine is not None and len(mine) == len(base):  # (a kept cell's trees may be gone)
                delta, (lo, hi) = paired_bootstrap(base, mine, seed=seed)
                c["vs_first"] = {"baseline": label, "of": "mean_reward" if "mean_reward" in c else "accuracy",
                                 "delta": delta, "ci95": [lo, hi]}
            metrics = Path(c["trees"]).parent / "metrics.json"
            if c.get("vs_first") != before and metrics.is_file():
                atomic_write_json(metrics, c)  # a cell's own record follows its baseline (searched later)

    results: list[dict[str, Any]] = []
    unit = "NFE" if is_denoise_process(process) else "tok"
    for budget in budgets:
        for algo, sc in pairs:
            d = out_dir / cell_name(algo, sc) / f"budget-{budget}"
            bar = progress(f"{algo}@{sc} {budget} {unit}" if sc else f"{algo} {budget} {unit}", len(problems)) if progress else nullcontext(None)
            batches = UsageMeter()  # the lockstep batches' own usage: what shared prefills saved
            with bar as advance:
                spec = SearchSpec(algorithm=algo, scorer=sc, budget=budget, options=(options or {}).get(algo, {}))
                trees = execute(spec, process, problems, scorers.get(sc), seed=seed, out_jsonl=d / "trees.jsonl",
                                on_progress=advance, split=split, batch_meter=batches, parallel=parallel)
            m = search_metrics(trees, budget, batches.total) | {"algo": algo, "scorer": sc, "trees": str(d / "trees.jsonl"),
                                                 "options": algo_options(algo, options)}
            if is_denoise_process(process):  # the reward of the chosen x_0 and the NFE spent
                m |= denoise_metrics(trees)
                right[_cell_key(m)] = [chosen_reward(t) for t in trees]
            else:
                right[_cell_key(m)] = [1.0 if t.correct else 0.0 for t in trees]
            results.append(m)
            compare(results, budget)
            atomic_write_json(d / "metrics.json", m)
            atomic_write_json(out_dir / "sweep.json", {**(header or {}), "results": merged(results)})
    results = merged(results)
    plot_sweep(results, out_dir / "accuracy_vs_tokens.png", title=title)
    return results


def _label(cell: dict[str, Any]) -> str:
    return f"{cell['algo']}@{cell['scorer']}" if cell["scorer"] else cell["algo"]


def _correct(cell: dict[str, Any], cache: dict[tuple[str, str | None, int], list[float]]) -> list[float] | None:
    """A cell's per-problem outcome, correctness (1/0) or, on a denoising process, the chosen x_0's
    reward, from its trees.jsonl for a cell of an earlier sweep; None when those trees are gone."""
    import json

    from sharpen.core.tree import Tree
    from sharpen.search.denoise_task import chosen_reward

    key = _cell_key(cell)
    if key not in cache:
        try:
            with open(cell["trees"]) as f:
                rows = [json.loads(line) for line in f if line.strip()]
            cache[key] = ([chosen_reward(Tree.from_dict(r)) for r in rows] if "mean_reward" in cell
                          else [1.0 if r.get("correct") else 0.0 for r in rows])
        except (OSError, KeyError, ValueError, TypeError):
            return None
    return cache[key]


def sweep_title(results: list[dict[str, Any]], split: str, n: int) -> str:
    """The title of `sweep_rows`' table: what each cell shows."""
    spend = ("mean reward of the chosen x_0, NFE per problem" if any("mean_nfe" in r for r in results) else
             "generated / forward tokens per problem: policy + verifier")
    change = "mean reward" if any("mean_nfe" in r for r in results) else "accuracy"
    return f"accuracy ({spend}; paired change of the {change} vs the first row, 95% CI), {split} split, n={n}"


def sweep_rows(results: list[dict[str, Any]], budgets: list[int] | None = None) -> list[list[str]]:
    """The sweep as a header and one row per algorithm@scorer: each budget's accuracy (every budget
    of `results` by default), generated / forward (policy + verifier) tokens per problem (for a
    denoising process: the mean reward of the chosen x_0 and the NFE per problem), and the paired
    change vs the first row."""
    budgets = sorted({r["budget"] for r in results}) if budgets is None else budgets
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
            if "mean_nfe" in c:
                div = "-" if c.get("diversity") is None else f"{c['diversity']:.2f}"
                row.append(f"{c['accuracy']:.2f} ({c['mean_reward']:.3f}, div {div}, {c['mean_nfe']:.0f}){vs}")
            else:
                row.append(f"{c['accuracy']:.2f} ({c['mean_generated_tokens']:.0f} / "
                           f"{c['mean_forward_tokens'] + c['mean_verifier_tokens']:.0f}){vs}")
        rows.append(row)
    return rows


def plot_sweep(results: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """One line per algorithm@scorer with 95% bootstrap intervals; for a language model y = accuracy,
    on the left against the mean generated tokens actually spent per problem, on the right against
    the forward tokens the models processed per problem (policy + verifier: a FLOP proxy); for a
    denoising process (cells with `mean_nfe`) against the mean NFE per problem, y = accuracy on the
    left and the mean reward of the chosen x_0 on the right. x is log2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys((r["algo"], r["scorer"]) for r in results))
    legend_in = 0.24 * -(-len(keys) // 3)  # inches below the panels: 3 legend entries a row
    height = 4.4 + legend_in
    if results and all("mean_nfe" in r for r in results):  # a denoising process: both against NFE
        panels = [(lambda r: r["mean_nfe"], "accuracy"), (lambda r: r["mean_nfe"], "mean_reward")]
        xlabels = ("denoiser forwards (NFE) per problem",) * 2
        ylabels = ("accuracy (target class)", "mean reward of the chosen x_0")
    else:
        panels = [(lambda r: r["mean_generated_tokens"], "accuracy"),
                  (lambda r: r["mean_forward_tokens"] + r["mean_verifier_tokens"], "accuracy")]
        xlabels = ("generated tokens per problem (actually spent)", "forward tokens per problem (policy + verifier)")
        ylabels = ("accuracy", "")
    fig, axes = plt.subplots(1, 2, figsize=(11, height), dpi=120, sharey=len(set(y for _, y in panels)) == 1)
    colors = plt.get_cmap("tab10").colors
    for i, (algo, scorer) in enumerate(keys):
        # a style no other line has: ten colours, then other markers and dashes
        style = {"color": colors[i % 10], "marker": "osD^v"[i // 10 % 5], "linestyle": ("-", "--", ":")[i // 10 % 3]}
        rs = sorted((r for r in results if r["algo"] == algo and r["scorer"] == scorer), key=lambda r: r["budget"])
        label = algo if scorer in (None, "none") else f"{algo} ({scorer})"
        for ax, (x, y) in zip(axes, panels, strict=True):
            ys = [r[y] for r in rs]
            lo = [r[y] - r[f"{y}_ci95"][0] for r in rs]
            hi = [r[f"{y}_ci95"][1] - r[y] for r in rs]
            ax.errorbar([max(1.0, x(r)) for r in rs], ys, yerr=[lo, hi], capsize=3, label=label, **style)
    for ax, what, ylabel in zip(axes, xlabels, ylabels, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel(what)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    # below both panels, where it hides no point
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(keys)), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, legend_in / height, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
