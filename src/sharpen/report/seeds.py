"""The combined report of a seeds experiment (`sharpen run CONFIG --seeds 0,1,2`, run by
`sharpen.loop.seeds.run_seeds`), rebuilt from its directory alone, like `sharpen report`.

Layout: `<parent>/seed-<s>/` holds seed s's run (an ordinary run dir: `sharpen report` and
`--tracker` work on it), and `<parent>/` the combined `report.html`, `report.md`, `seeds.json` (the
facts, as the report shows them) and `plots/greedy_by_seed.png`. Every `seed-<s>/` found is in the
report.

What the seed changes: the sampling (the search seed per problem, the backends, training's data
order and init, the bootstrap) and which problems are drawn: held-out problems are
`task.problems("test", eval.n, seed)` and training problems `task.problems("train", ..., seed)`.
For `gym:` tasks reasoning-gym builds item i from `Random(seed + i)`, so seed s's problem stream is
seed 0's shifted by s: nearby seeds share almost all their problems (`collect.pool` then samples
training problems by the seed). JSONL tasks shuffle their split by the seed. The report measures
the overlap from the run dirs and says it in a line.
"""

from __future__ import annotations

import base64
import html
import re
import statistics
from pathlib import Path
from typing import Any

from sharpen.core.errors import ConfigError
from sharpen.core.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_jsonl
from sharpen.report.run import collect_facts, fmt, html_table, left_out, md_table, plot_png


def seed_dir(parent: str | Path, seed: int) -> Path:
    return Path(parent) / f"seed-{seed}"


def seed_dirs(parent: str | Path) -> dict[int, Path]:
    """seed -> run dir, for every `seed-<s>/` under `parent` that holds a run (its config.yaml)."""
    found = {int(m.group(1)): p for p in Path(parent).glob("seed-*")
             if (m := re.fullmatch(r"seed-(\d+)", p.name)) and (p / "config.yaml").exists()}
    return dict(sorted(found.items()))


def is_seeds_dir(path: str | Path) -> bool:
    """A parent of per-seed runs (and not itself a run)."""
    path = Path(path)
    return path.is_dir() and not (path / "manifest.json").exists() and bool(seed_dirs(path))

def _median(xs: list[float]) -> float | None:
    return float(statistics.median(xs)) if xs else None


def _spread(xs: list[float]) -> dict[str, float | None]:
    return {"median": _median(xs), "min": min(xs) if xs else None, "max": max(xs) if xs else None}


def _ids(path: Path, key: str) -> set[str]:
    return {row[key] for row in read_jsonl(path)} if path.exists() else set()


def _problems_line(per_seed: list[dict[str, Any]], task: str) -> tuple[str, dict[str, Any]]:
    """What the seed changes, in one line, with the held-out and training problem overlap measured
    from the run dirs (round-0 eval rows, every round's collected trees)."""
    held = [s["_heldout"] for s in per_seed if s["_heldout"]]
    train = [s["_train"] for s in per_seed if s["_train"]]
    counts = {
        "heldout_shared": len(set.intersection(*held)) if held else 0,
        "heldout_n": max(map(len, held), default=0),
        "train_shared": len(set.intersection(*train)) if train else 0,
        "train_n": max(map(len, train), default=0),
    }
    kind = task.partition(":")[0]
    how = ("reasoning-gym builds problem i from seed + i, so seed s draws seed 0's problem stream shifted by s"
           if kind == "gym" else "the task shuffles its split by the seed" if kind in ("gsm8k", "math")
           else "the task draws its problems with the seed")
    line = f"The seed sets the sampling (search, evaluation samples, training) and which problems are drawn ({how})"
    if len(per_seed) > 1:
        line += (f": these {len(per_seed)} seeds share {counts['heldout_shared']} of {counts['heldout_n']} held-out "
                 f"problems and {counts['train_shared']} of {counts['train_n']} training problems.")
    else:
        line += "."
    return line, counts


def _round_rows(summary: dict[str, Any]) -> dict[str, int]:
    """A build stage's rows by kind; when its pairs are of two kinds or more (build.trace_pairs), each
    kind of pair also on its own, as `pairs: <kind>`."""
    kinds = summary.get("pair_kinds", {})
    return {**summary["rows"], **({f"pairs: {k}": n for k, n in kinds.items()} if len(kinds) > 1 else {})}


def seeds_facts(parent: str | Path, unused: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every seed's held-out greedy accuracy by round, its paired change round 0 -> last (the run's
    own `paired.json`), its new training rows per round (the build stage's summary.json), and
    across the finished seeds the median and min..max of the final accuracy and of the change;
    `unused`: config fields the recipe never reads, left out of the config shown."""
    parent = Path(parent)
    dirs = seed_dirs(parent)
    if not dirs:
        raise ConfigError(f"{parent} holds no seed-<s>/ runs (fix: pass the directory `sharpen run --seeds` wrote)")
    per_seed, task, config = [], "", ""
    for s, d in dirs.items():
        f = collect_facts(d, unused)
        rounds = [{"round": e["round"], "greedy": e["eval"]["greedy"]} for e in f["rounds"]
                  if e["eval"] and "greedy" in e["eval"]]
        rows = {e["round"]: _round_rows(e["data"]) for e in f["rounds"] if e["data"]}
        cfg = config_dict(f["config"])
        task, config = task or cfg.get("task", ""), config or f["config"]
        train_ids: set[str] = set()
        for e in f["rounds"]:
            train_ids |= _ids(d / f"round-{e['round']}" / "collect" / "trees.jsonl", "problem_id")
        per_seed.append({
            "seed": s, "run": d.name, "finished": f["paired"] is not None,
            "rounds": rounds, "rows": [{"round": r, **v} for r, v in sorted(rows.items())],
            "final": rounds[-1]["greedy"] if rounds else None, "paired": f["paired"],
            "trains": next((e["train"]["kind"] for e in f["rounds"] if (e["train"] or {}).get("kind")), None),
            "_heldout": _ids(d / "round-0" / "eval" / "problems.jsonl", "id"), "_train": train_ids,
        })
    line, counts = _problems_line(per_seed, task)
    for s in per_seed:
        del s["_heldout"], s["_train"]
    done = [s for s in per_seed if s["finished"]]
    all_rounds = sorted({e["round"] for s in per_seed for e in s["rounds"]})
    median = [{"round": r, "greedy": _median([e["greedy"] for s in per_seed for e in s["rounds"] if e["round"] == r])}
              for r in all_rounds]
    deltas = [s["paired"]["delta"] for s in done]
    trains = [s["trains"] for s in per_seed if s["trains"]]
    return {
        "parent": str(parent), "task": task, "problems": line, "overlap": counts, "seeds": per_seed,
        "trains": max(trains, key=trains.count) if trains else None,
        "median_by_round": median, "finished": len(done),
        "final": _spread([s["paired"]["after"] for s in done]),
        "change": _spread(deltas) | {"ci_above_zero": sum(s["paired"]["ci95"][0] > 0 for s in done),
                                     "ci_below_zero": sum(s["paired"]["ci95"][1] < 0 for s in done)},
        "config": config, "unused": list(unused),
    }


def config_dict(text: str) -> dict[str, Any]:
    """A run's config.yaml text as a dict; {} when it is empty, not YAML or not a mapping."""
    import yaml

    try:
        data = yaml.safe_load(text) if text else {}
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def fmt_change(p: dict[str, Any] | None) -> str:
    """A run's paired change (its paired.json) as `+0.050 [+0.010, +0.090]`; "unfinished" without one."""
    return f"{p['delta']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]" if p else "unfinished"


def _kinds(facts: dict[str, Any]) -> list[str]:
    """The kinds of rows built, the one the recipe trains on first."""
    kinds = {k for s in facts["seeds"] for e in s["rows"] for k in e if k != "round"}
    trains = facts.get("trains") or ""
    return sorted(kinds, key=lambda k: (k.split(":")[0] != trains, k))  # "pairs: <kind>" right after "pairs"


def _per_round(s: dict[str, Any], kind: str) -> str:
    return ", ".join(str(e.get(kind, 0)) for e in s["rows"])


def seeds_table(facts: dict[str, Any], every_round: bool = False) -> list[list[str]]:
    """Header, one row per seed, then `median`, `min` and `max` over the finished seeds: held-out
    greedy accuracy at round 0 and the last round, the paired change with its 95% CI, and the new
    rows the recipe trains on per round (round 1, 2, ...: starvation shows as small numbers).
    `every_round`: every round's accuracy and every kind of row built."""
    rounds = [e["round"] for e in facts["median_by_round"]]
    shown = rounds if every_round else sorted({rounds[0], rounds[-1]}) if rounds else []
    kinds = _kinds(facts) if every_round else _kinds(facts)[:1]
    rows = [["seed", *[f"round {r}" for r in shown], "change [95% CI]", *[f"new {k}/round" for k in kinds]]]
    for s in facts["seeds"]:
        acc = {e["round"]: e["greedy"] for e in s["rounds"]}
        rows.append([str(s["seed"]), *[fmt(acc.get(r)) for r in shown], fmt_change(s["paired"]),
                     *[_per_round(s, k) for k in kinds]])
    done = [s for s in facts["seeds"] if s["finished"]]
    if done:
        by = {r: [e["greedy"] for s in done for e in s["rounds"] if e["round"] == r] for r in shown}
        c = facts["change"]
        rows.append(["median", *[fmt(_median(by[r])) for r in shown], f"{c['median']:+.3f}", *[""] * len(kinds)])
        for name, fn in (("min", min), ("max", max)):  # the spread, one row each: narrow enough for 80 columns
            rows.append([name, *[fmt(fn(by[r])) if by[r] else "" for r in shown], f"{c[name]:+.3f}", *[""] * len(kinds)])
    return rows


def _summary(facts: dict[str, Any]) -> str:
    n, fin, c = facts["finished"], facts["final"], facts["change"]
    if not n:
        return "No seed has finished yet."
    return (f"Over {n} finished seed{'s' if n != 1 else ''}: final greedy accuracy median {fin['median']:.3f} "
            f"(min {fin['min']:.3f}, max {fin['max']:.3f}); paired change median {c['median']:+.3f} "
            f"(min {c['min']:+.3f}, max {c['max']:+.3f}); the 95% CI lies above zero for {c['ci_above_zero']} "
            f"of {n} seeds and below zero for {c['ci_below_zero']}.")


def _plot(facts: dict[str, Any]) -> bytes | None:
    if not facts["median_by_round"]:
        return None

    def draw(ax):
        for s in facts["seeds"]:
            if s["rounds"]:
                ax.plot([e["round"] for e in s["rounds"]], [e["greedy"] for e in s["rounds"]], marker="o",
                        alpha=0.6, label=f"seed {s['seed']}")
        med = facts["median_by_round"]
        ax.plot([e["round"] for e in med], [e["greedy"] for e in med], color="black", linewidth=2.5,
                linestyle="--", label="median")
        ax.set_xlabel("round")
        ax.set_ylabel("held-out greedy accuracy")
        ax.set_xticks([e["round"] for e in med])
        ax.legend(fontsize="small")

    return plot_png(draw)


def _rows_table(facts: dict[str, Any]) -> list[list[str]]:
    """New training rows per round (the build stage's summary.json), one row per seed and kind."""
    rounds = sorted({e["round"] for s in facts["seeds"] for e in s["rows"]})
    out = [["seed", "kind", *[f"round {r}" for r in rounds]]]
    for s in facts["seeds"]:
        by = {e["round"]: e for e in s["rows"]}
        for k in _kinds(facts):
            out.append([str(s["seed"]), k, *[str(by[r].get(k, 0)) if r in by else "" for r in rounds]])
    return out


def write_seeds_report(parent: str | Path, unused: tuple[str, ...] = ()) -> Path:
    """`parent/report.html` (and report.md, seeds.json, plots/greedy_by_seed.png) from the seed runs alone;
    `unused`: config fields the recipe never reads (the recipe's `unused`), left out of the config shown."""
    parent = Path(parent)
    facts = seeds_facts(parent, unused)
    png = _plot(facts)
    if png is not None:
        atomic_write_bytes(parent / "plots" / "greedy_by_seed.png", png)
    atomic_write_json(parent / "seeds.json", facts)
    acc, rows = seeds_table(facts, every_round=True), _rows_table(facts)
    first = facts["seeds"][0]
    md = [f"# sharpen seeds: {facts['parent']}", "", facts["problems"], "", "## Held-out greedy accuracy by seed", "",
          *md_table(acc), "", _summary(facts), "", "## New training rows per round (build stage)", "", *md_table(rows)]
    md += ["", "![greedy_by_seed.png](plots/greedy_by_seed.png)"] if png else []
    md += ["", "## Runs", "", *[f"- seed {s['seed']}: [{s['run']}/report.html]({s['run']}/report.html)"
                                + ("" if s["finished"] else " (unfinished)") for s in facts["seeds"]]]
    note = left_out(unused) if unused else ""
    md += ["", f"## Config (seed {first['seed']}; the others differ only in `seed`)", "",
           *([note, ""] if note else []), "```yaml", facts["config"].rstrip(), "```", ""]
    atomic_write_text(parent / "report.md", "\n".join(md))
    img = (f'<figure><img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="greedy_by_seed.png">'
           "<figcaption>held-out greedy accuracy by round: one line per seed, the median dashed</figcaption></figure>"
           if png else "")
    links = "".join(f'<li>seed {s["seed"]}: <a href="{html.escape(s["run"])}/report.html">{html.escape(s["run"])}</a>'
                    + ("" if s["finished"] else " (unfinished)") + "</li>" for s in facts["seeds"])
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>sharpen seeds</title>"
        "<style>body{font-family:sans-serif;max-width:900px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}figure{display:inline-block;margin:8px}"
        "pre{background:#f6f6f6;padding:8px}</style></head><body>"
        f"<h1>sharpen seeds</h1><p>{html.escape(facts['parent'])}</p><p>{html.escape(facts['problems'])}</p>"
        f"<h2>Held-out greedy accuracy by seed</h2>{html_table(acc)}<p>{html.escape(_summary(facts))}</p>"
        f"<h2>New training rows per round (build stage)</h2>{html_table(rows)}"
        f"<h2>Plots</h2>{img}<h2>Runs</h2><ul>{links}</ul>"
        f"<h2>Config (seed {first['seed']}; the others differ only in <code>seed</code>)</h2>"
        + (f"<p>{html.escape(note)}</p>" if note else "") +
        f"<pre>{html.escape(facts['config'])}</pre></body></html>"
    )
    atomic_write_text(parent / "report.html", page)
    return parent / "report.html"
