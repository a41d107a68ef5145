"""`sharpen report RUN`: report.md, report.html and plots, rebuilt from the run directory alone.

A run that trained the `digits-ddpm` denoiser (its eval metrics hold `mean_reward`: the recipes
`diffusion-spo` / `diffusion-rwr`) is reported by what its rounds measured: the unguided sampler's
mean reward with its interval, the share of samples of the target class and their diversity, the
paired change in mean reward, and a grid of the samples (`sharpen.report.images.write_sample_grid`):
a row per evaluated round, the same held-out problems (the same noise) in every row, each image
captioned with its class and reward, so the before / after is seen as well as measured."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

from sharpen.core.errors import ConfigError
from sharpen.core.io import atomic_write_bytes, atomic_write_text, read_jsonl
from sharpen.report.training import draw_training, round_logs, training_table
from sharpen.search.credit import is_verifier_spec

GRID_COLUMNS = 12  # held-out problems shown per round in a denoising run's sample grid
GRID_CELL = 64  # pixels per sample (an 8x8 image at 8x): 12 of them and the row labels fit the page


def _rounds(run: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in run.glob("round-*") if (m := re.fullmatch(r"round-(\d+)", p.name)))


def _json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except ValueError as e:  # not UTF-8, or not JSON
        why = " ".join(str(e).split())
        raise ConfigError(f"{path}: not valid JSON ({why}) (fix: restore the file, or rerun the run into a new --out)") from None


def collect_facts(run: Path, unused: tuple[str, ...] = ()) -> dict[str, Any]:
    """What the report shows, read from the run dir; `unused`: dotted config fields the recipe never
    reads (left out of the config shown)."""
    run = Path(run)
    if not (run / "manifest.json").exists():
        raise ConfigError(f"{run} is not a run directory: no manifest.json (fix: pass runs/<name>)")
    facts: dict[str, Any] = {"run": str(run), "rounds": []}
    cfg = run / "config.yaml"
    facts["config"] = without_fields(cfg.read_text(), unused) if cfg.exists() else ""
    facts["unused"] = list(unused)
    for r in _rounds(run):
        rd = run / f"round-{r}"
        entry: dict[str, Any] = {"round": r, "eval": _json(rd / "eval" / "metrics.json")}
        entry["collect"] = _collect_monitors(_json(rd / "collect" / "metrics.json"))
        entry["data"] = _json(rd / "data" / "summary.json")
        entry["train"] = _json(rd / "train" / "summary.json")
        facts["rounds"].append(entry)
    facts["training_logs"] = round_logs(run, _rounds(run))  # TRL's per-step log of each round that trained online
    facts["training"] = training_table(facts["training_logs"])
    facts["paired"] = _json(run / "paired.json")
    stages = (_json(run / "manifest.json") or {}).get("stages", {})
    facts["stage_seconds"] = {name: st["finished"] - st["started"] for name, st in stages.items()
                              if st.get("finished") and st.get("started")}
    return facts


def generated_per_round(entry: dict[str, Any]) -> float | None:
    """The tokens the policy generated to make a round's training data, from a round of
    `collect_facts`: what an online recipe's trainer sampled (`train.generated_tokens`: samples,
    credit rollouts and replaced groups), else the offline search's mean generated tokens x problems."""
    train, collect = entry.get("train") or {}, entry.get("collect") or {}
    if train.get("generated_tokens") is not None:
        return float(train["generated_tokens"])
    if collect.get("mean_generated_tokens") is not None:
        return float(collect["mean_generated_tokens"]) * int(collect.get("n", 0))
    return None


def left_out(unused: list[str] | tuple[str, ...]) -> str:
    """The line a report shows above a config whose unused fields it left out."""
    return f"Left out (the recipe does not use them): {', '.join(unused)}."


def without_fields(config_text: str, fields: tuple[str, ...]) -> str:
    """The YAML config without the dotted `fields` (a whole section when every key is dropped)."""
    if not fields:
        return config_text
    import yaml

    try:
        data = yaml.safe_load(config_text)
    except yaml.YAMLError:
        return config_text
    if not isinstance(data, dict):
        return config_text
    for name in fields:
        *path, last = name.split(".")
        node = data
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return yaml.safe_dump({k: v for k, v in data.items() if v != {}}, sort_keys=False)


def _collect_monitors(m: dict[str, Any] | None) -> dict[str, Any] | None:
    """A round's collect metrics, keeping `exploitation_auroc` only where it measured something:
    with the oracle scorer the scorer is the verifier (AUROC 1.0 by construction), and without a
    recorded scorer nothing says it was not the oracle."""
    if m is None:
        return None
    m = dict(m)
    scorer = m.get("scorer")
    if m.get("exploitation_auroc") is None or not isinstance(scorer, str) or is_verifier_spec(scorer):
        m.pop("exploitation_auroc", None)
    return m


def plot_png(draw) -> bytes:
    """One matplotlib figure as PNG bytes: `draw(ax)` fills its axes."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    draw(ax)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _accuracy_vs_tokens(run: Path, r: int) -> tuple[list[float], list[float]] | None:
    """Accuracy against generated tokens per problem, from the round's eval: the greedy solution
    (one sample's tokens), then pass@k at k x mean tokens per sampled solution."""
    m = _json(run / f"round-{r}" / "eval" / "metrics.json")
    if not m or "greedy" not in m:
        return None
    xs, ys = [], []
    gt = m.get("greedy_tokens") or (m.get("usage", {}).get("generated_tokens", 0) / m["n"] if not m.get("samples") else None)
    if gt:
        xs.append(gt)
        ys.append(m["greedy"])
    if "mean_tokens" in m:
        ks = sorted(int(k.split("@")[1]) for k in m if k.startswith("pass@"))
        xs += [k * m["mean_tokens"] for k in ks]
        ys += [m[f"pass@{k}"] for k in ks]
    return (xs, ys) if xs else None


def is_denoising(facts: dict[str, Any]) -> bool:
    """Whether the run's rounds evaluated a denoiser's unguided sampler (by mean reward)."""
    return any(e["eval"] and "mean_reward" in e["eval"] for e in facts["rounds"])


def write_sample_grid_of(run: Path, facts: dict[str, Any]) -> dict[str, Any] | None:
    """A denoising run's sample grid, `plots/samples.png`: a row per evaluated round, its unguided
    samples of the first `GRID_COLUMNS` held-out problems (the same problems and noise in every row),
    each captioned with its class and reward. Returns the file, its PNG and a caption (None when no
    round holds samples)."""
    from sharpen.report.images import write_sample_grid

    images, captions, labels, target = [], [], [], None
    for e in facts["rounds"]:
        path = run / f"round-{e['round']}" / "eval" / "problems.jsonl"
        if not (e["eval"] and "mean_reward" in e["eval"] and path.exists()):
            continue
        rows = sorted((row for row in read_jsonl(path) if "x" in row), key=lambda row: row.get("index", 0))
        if not rows:
            continue
        rows = rows[:GRID_COLUMNS]
        images.append([row["x"] for row in rows])
        captions.append([f"class {row['class']}\nr {float(row['reward']):.2f}" for row in rows])
        labels.append(f"round {e['round']}")
        target = e["eval"].get("target", target)
    if not images:
        return None
    last = max(len(r) for r in images)
    title = f"unguided samples, target {target}" if target is not None else "unguided samples"
    path = write_sample_grid(images, run / "plots" / "samples.png", captions, labels, title, cell=GRID_CELL)
    caption = (f"One unguided sample per held-out problem (the first {last}), a row per evaluated round: the same "
               f"problems and the same noise in every row, so a column shows what training changed. Round "
               f"{labels[0].split()[-1]} is the starting model. Each caption: the classifier's class of the sample "
               f"and its reward (the classifier's probability of {'the target' if target is None else f'class {target}'}).")
    return {"file": "plots/samples.png", "png": path.read_bytes(), "caption": caption}


def _reward_plot(rounds: list[dict[str, Any]]):
    """A `plot_png` drawer: the unguided sampler's mean reward per round with its 95% interval, and the
    share of samples of the target class."""

    def draw(ax):
        xs = [e["round"] for e in rounds]
        ys = [e["eval"]["mean_reward"] for e in rounds]
        ci = [e["eval"].get("mean_reward_ci95") or [y, y] for e, y in zip(rounds, ys, strict=True)]
        err = [[y - c[0] for y, c in zip(ys, ci, strict=True)], [c[1] - y for y, c in zip(ys, ci, strict=True)]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=4, label="mean reward (95% CI)")
        share = [e["eval"].get("target_share") for e in rounds]
        if all(v is not None for v in share):
            ax.plot(xs, share, marker="s", linestyle="--", label="target share")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("round")
        ax.set_ylabel("held-out, unguided sampler")
        ax.set_xticks(xs)
        ax.legend()

    return draw


def write_report(run: str | Path, unused: tuple[str, ...] = ()) -> Path:
    """report.md, report.html and plots/ of a run dir; `unused`: config fields its recipe never reads
    (the recipe's `unused`), left out of the config shown."""
    run = Path(run)
    facts = collect_facts(run, unused)
    rounds = [e for e in facts["rounds"] if e["eval"]]
    plots: dict[str, bytes] = {}
    grid = None
    if rounds and is_denoising(facts):
        plots["reward_per_round.png"] = plot_png(_reward_plot([e for e in rounds if "mean_reward" in e["eval"]]))
        grid = write_sample_grid_of(run, facts)
        if grid is not None:
            facts["samples"] = {"file": grid["file"], "caption": grid["caption"]}
    elif rounds:
        xs = [e["round"] for e in rounds]

        def acc(ax):
            for key, label in (("greedy", "greedy"), ("pass@1", "pass@1 (sampled)")):
                ys = [e["eval"].get(key) for e in rounds]
                if all(y is not None for y in ys):
                    ax.plot(xs, ys, marker="o", label=label)
            maj = [k for k in rounds[0]["eval"] if k.startswith("majority@")]
            if maj:
                ax.plot(xs, [e["eval"].get(maj[0]) for e in rounds], marker="s", label=maj[0])
            ax.set_xlabel("round")
            split = rounds[0]["eval"].get("split", "test")
            ax.set_ylabel("validation accuracy" if split == "validation" else "held-out accuracy")
            ax.set_xticks(xs)
            ax.legend()

        plots["accuracy_per_round.png"] = plot_png(acc)
        first, last = rounds[0]["round"], rounds[-1]["round"]
        before, after = _accuracy_vs_tokens(run, first), _accuracy_vs_tokens(run, last)
        # a curve needs sampled points (pass@k): greedy alone is one dot per round, no trade-off
        if first != last and before and after and len(before[0]) > 1 and len(after[0]) > 1:

            def avt(ax):
                ax.plot(*before, marker="o", label=f"round {first} (before)")
                ax.plot(*after, marker="o", label=f"round {last} (after)")
                ax.set_xscale("log", base=2)
                ax.set_xlabel("generated tokens per problem (greedy, then k samples)")
                ax.set_ylabel("accuracy (greedy, then pass@k)")
                ax.legend()

            plots["accuracy_vs_tokens.png"] = plot_png(avt)
    data_rounds = [e for e in facts["rounds"] if e["data"]]
    if data_rounds:

        def counts(ax):
            kinds = sorted({k for e in data_rounds for k in e["data"].get("rows", {})})
            width = 0.8 / max(1, len(kinds))
            for i, kind in enumerate(kinds):
                ax.bar([e["round"] + i * width for e in data_rounds],
                       [e["data"]["rows"].get(kind, 0) for e in data_rounds], width=width, label=kind)
            ax.set_xlabel("round")
            ax.set_ylabel("rows")
            if is_denoising(facts):  # whole rounds under the bars
                ax.set_xticks([e["round"] + (len(kinds) - 1) * width / 2 for e in data_rounds],
                              [str(e["round"]) for e in data_rounds])
            ax.legend()

        plots["data_counts.png"] = plot_png(counts)
    if facts["training_logs"]:
        plots["training_per_step.png"] = plot_png(draw_training(facts["training_logs"]))
    for name, png in plots.items():
        atomic_write_bytes(run / "plots" / name, png)
    md = render_markdown(facts, list(plots))
    atomic_write_text(run / "report.md", md)
    atomic_write_text(run / "report.html", render_html(facts, plots, grid["png"] if grid else None))
    return run / "report.html"


def denoise_summary_table(facts: dict[str, Any]) -> list[list[str]]:
    """A denoising run's header and one row per round: the unguided sampler's mean reward, its
    interval, the target share and diversity, the data the round trained on and the training loss
    (first and last step); columns no round filled are left out."""
    kinds = [k for k in ("pairs", "samples") if any(k in ((e["data"] or {}).get("rows") or {}) for e in facts["rounds"])]
    rows = [["round", "mean reward", "95% CI", "target share", "diversity", *kinds, "train loss (first -> last)"]]
    for e in facts["rounds"]:
        ev, data = e["eval"] or {}, (e["data"] or {}).get("rows", {})
        ci = ev.get("mean_reward_ci95")
        loss = ((e["train"] or {}).get("metrics") or {})
        rows.append([
            str(e["round"]),
            fmt(ev.get("mean_reward")),
            f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "",
            fmt(ev.get("target_share")),
            fmt(ev.get("diversity"), 2),
            *(str(data.get(k, "")) for k in kinds),
            f"{loss['loss_first']:.3f} -> {loss['loss_last']:.3f}" if "loss_last" in loss else "",
        ])
    keep = [i for i, name in enumerate(rows[0]) if name in ("round", "mean reward") or any(r[i] for r in rows[1:])]
    return [[r[i] for i in keep] for r in rows]


def denoise_collect_table(facts: dict[str, Any]) -> list[list[str]]:
    """A denoising run's collection per round: problems, the mean reward of what it collected (each
    search's chosen x_0, or the unguided samples) and the NFE spent per problem."""
    mon = [e for e in facts["rounds"] if e["collect"]]
    sampled = any("samples" in e["collect"] for e in mon)
    rows = [["round", "problems", "mean reward of the " + ("samples" if sampled else "chosen x_0"), "NFE / problem"]]
    for e in mon:
        c = e["collect"]
        rows.append([str(e["round"]), str(c.get("n", "")), fmt(c.get("mean_reward")), fmt(c.get("mean_nfe"), 0)])
    return rows


def paired_text(p: dict[str, Any], arrow: str = "->") -> str:
    """The paired change's sentence: mean reward for a denoising run, greedy accuracy otherwise."""
    what = "Mean reward change of the unguided sampler" if p.get("metric") == "mean_reward" else "Greedy accuracy change"
    return (f"{what}, round {p['from_round']} {arrow} {p['to_round']}: ")


def summary_table(facts: dict[str, Any]) -> list[list[str]]:
    """Header and one row per round. Columns no round measured (pass@1, majority and tokens per
    sampled solution with `eval.samples: 0`; a kind of data no round built) are left out. A
    denoising run's table is `denoise_summary_table`."""
    if is_denoising(facts):
        return denoise_summary_table(facts)
    rows = [["round", "greedy", "pass@1", "majority", "tokens/sol", "pairs", "labels", "traces"]]
    for e in facts["rounds"]:
        ev, data = e["eval"] or {}, (e["data"] or {}).get("rows", {})
        maj = next((v for k, v in ev.items() if k.startswith("majority@")), None)
        rows.append([
            str(e["round"]),
            fmt(ev.get("greedy")),
            fmt(ev.get("pass@1")),
            fmt(maj),
            fmt(ev.get("mean_tokens"), 1),
            str(data.get("pairs", "")),
            str(data.get("labels", "")),
            str(data.get("traces", "")),
        ])
    keep = [i for i, name in enumerate(rows[0]) if name in ("round", "greedy") or any(r[i] for r in rows[1:])]
    return [[r[i] for i in keep] for r in rows]


def fmt(x: Any, digits: int = 3) -> str:
    """A number with `digits` decimals; "" for None (a round not reached)."""
    return "" if x is None else f"{x:.{digits}f}"


def md_table(rows: list[list[str]]) -> list[str]:
    """A header and data rows as the lines of a Markdown table."""
    return ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0]), *["| " + " | ".join(r) + " |" for r in rows[1:]]]


def html_table(rows: list[list[str]]) -> str:
    """A header and data rows as an HTML table (cells escaped)."""
    t = "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in rows[0]) + "</tr>"
    for r in rows[1:]:
        t += "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
    return t + "</table>"


def render_markdown(facts: dict[str, Any], plot_names: list[str]) -> str:
    lines = [f"# sharpen run: {facts['run']}", "", "## Held-out results per round", "", *md_table(summary_table(facts))]
    p = facts.get("paired")
    if p:
        lines += ["", paired_text(p) +
                  f"{p['delta']:+.3f} (paired bootstrap 95% CI [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}], n={p['n']})"]
    mon = [e for e in facts["rounds"] if e["collect"]]
    if facts.get("samples"):
        lines += ["", "## Unguided samples", "", f"![samples]({facts['samples']['file']})", "",
                  facts["samples"]["caption"]]
    if mon and is_denoising(facts):
        lines += ["", "## Collection (NFE: denoiser forwards)", "", *md_table(denoise_collect_table(facts))]
    elif mon:
        # exploitation only where a round measured it: not with the oracle scorer (see _collect_monitors)
        auroc = any(e["collect"].get("exploitation_auroc") is not None for e in mon)
        head = ["round", "search accuracy", "tokens/problem", "exploration (distinct correct / problem)"]
        head += ["exploitation (scorer AUROC)"] if auroc else []
        lines += ["", "## Collection (B-STaR monitors)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for e in mon:
            c = e["collect"]
            cells = [str(e["round"]), fmt(c.get("accuracy")), fmt(c.get("mean_generated_tokens"), 0), fmt(c.get("exploration"), 2)]
            if auroc:
                cells.append(fmt(c.get("exploitation_auroc")) or "n/a")
            lines.append("| " + " | ".join(cells) + " |")
    if len(facts.get("training") or []) > 1:
        lines += ["", "## Training (TRL's log, mean over each round's steps)", "", *md_table(facts["training"])]
    times = facts.get("stage_seconds") or {}
    if times:
        lines += ["", "## Stage times (wall seconds of the attempt that finished each stage)", "",
                  "| stage | seconds |", "|---|---|"]
        lines += [f"| {name} | {sec:.0f} |" for name, sec in times.items()]
        lines.append(f"| all stages | {sum(times.values()):.0f} |")
    for name in plot_names:
        lines += ["", f"![{name}](plots/{name})"]
    lines += ["", "## Config", ""]
    if facts.get("unused"):
        lines += [left_out(facts["unused"]), ""]
    lines += ["```yaml", facts["config"].rstrip(), "```", ""]
    return "\n".join(lines)


def render_html(facts: dict[str, Any], plots: dict[str, bytes], grid: bytes | None = None) -> str:
    """The report page; `grid`: a denoising run's sample grid (PNG), shown under the results."""
    table = html_table(summary_table(facts))
    imgs = "".join(
        f'<figure><img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="{html.escape(n)}">'
        f"<figcaption>{html.escape(n)}</figcaption></figure>"
        for n, png in plots.items()
    )
    training = (f"<h2>Training (TRL's log, mean over each round's steps)</h2>{html_table(facts['training'])}"
                if len(facts.get("training") or []) > 1 else "")
    left_out = (f"<p>Left out (the recipe does not use them): {html.escape(', '.join(facts['unused']))}.</p>"
                if facts.get("unused") else "")
    p = facts.get("paired")
    paired = (
        f"<p>{paired_text(p, '&rarr;')}<b>{p['delta']:+.3f}</b> "
        f"(paired bootstrap 95% CI [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}], n={p['n']})</p>"
        if p else ""
    )
    if is_denoising(facts):  # the sample grid and the collection's NFE
        if grid is not None and facts.get("samples"):
            training += (f"<h2>Unguided samples</h2><figure style='display:block;margin:8px 0'>"
                         f"<img src=\"data:image/png;base64,{base64.b64encode(grid).decode()}\" alt=\"samples\" "
                         f"style='max-width:100%'><figcaption>{html.escape(facts['samples']['caption'])}</figcaption>"
                         "</figure>")
        if any(e["collect"] for e in facts["rounds"]):
            training += f"<h2>Collection (NFE: denoiser forwards)</h2>{html_table(denoise_collect_table(facts))}"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>sharpen report</title>"
        "<style>body{font-family:sans-serif;max-width:900px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}figure{display:inline-block;margin:8px}"
        "pre{background:#f6f6f6;padding:8px}</style></head><body>"
        f"<h1>sharpen run</h1><p>{html.escape(facts['run'])}</p><h2>Held-out results per round</h2>{table}{paired}"
        f"{training}<h2>Plots</h2>{imgs}<h2>Config</h2>{left_out}<pre>{html.escape(facts['config'])}</pre></body></html>"
    )


def distinct_correct(eval_jsonl: Path) -> float:
    """B-STaR exploration: distinct correct sampled solutions per problem."""
    rows = list(read_jsonl(eval_jsonl)) if eval_jsonl.exists() else []
    if not rows:
        return 0.0
    return sum(len({" ".join(s["text"].split()) for s in r["samples"] if s["correct"]}) for r in rows) / len(rows)
