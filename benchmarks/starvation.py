"""Why step pairs dry up from round to round: the expansions of each round's collection trees, read
from a run directory (no model run).

    .venv/bin/python benchmarks/starvation.py runs/demo [--margin 0.25]

Per round: expansions (nodes with children), candidate steps sampled per expansion (merged duplicates
counted by their `count`), distinct steps among them, the share of sampled candidates that duplicated
a sibling, the share of expansions with at least two distinct children, the share whose children's
values differ by at least the pair margin (what a step pair needs), how those splits fall (every child
right, every child wrong, mixed), and the pairs the round's build stage wrote.

A round collected with `collect.screen` also gets a second table: the problems it searched by how many
of the screen's samples were right, and the step pairs each group gave per problem.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from sharpen.core.io import read_jsonl
from sharpen.core.tree import Tree
from sharpen.search.credit import q_values


def round_stats(trees: Path, margin: float) -> dict:
    exp = sampled = distinct = two = spread = all_right = all_wrong = 0
    for t in map(Tree.from_dict, read_jsonl(trees)):
        q = q_values(t)  # MCTS Q of each visited node
        for n in t.nodes:
            kids = [t.nodes[c] for c in n.children]
            if not kids:
                continue
            exp += 1
            sampled += sum(k.meta.get("count", 1) for k in kids)
            steps = {k.step for k in kids}  # without merge_duplicates, equal steps are separate nodes
            distinct += len(steps)
            two += len(steps) >= 2
            vals = [q[k.id] for k in kids if k.id in q]
            if len(vals) >= 2 and max(vals) - min(vals) >= margin:
                spread += 1
            elif vals and min(vals) >= 1 - margin:
                all_right += 1
            elif vals and max(vals) <= margin:
                all_wrong += 1
    return {"expansions": exp, "sampled": sampled, "distinct": distinct, "two": two, "spread": spread,
            "all_right": all_right, "all_wrong": all_wrong}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--margin", type=float, default=0.25)
    args = ap.parse_args()
    rows = []
    for rd in sorted(args.run.glob("round-*"), key=lambda p: int(p.name.split("-")[1])):
        trees = rd / "collect" / "trees.jsonl"
        if not trees.exists():
            continue
        s = round_stats(trees, args.margin)
        summary = rd / "data" / "summary.json"
        pairs = json.loads(summary.read_text()).get("rows", {}).get("pairs") if summary.exists() else None
        e = max(s["expansions"], 1)
        rows.append([rd.name, s["expansions"], f"{s['sampled'] / e:.1f}", f"{s['distinct'] / e:.1f}",
                     f"{1 - s['distinct'] / max(s['sampled'], 1):.0%}", f"{s['two'] / e:.0%}",
                     f"{s['spread'] / e:.0%}", f"{s['all_right'] / e:.0%}", f"{s['all_wrong'] / e:.0%}",
                     pairs if pairs is not None else "-"])
    head = ["round", "expansions", "sampled/exp", "distinct/exp", "duplicates", ">=2 distinct",
            f"spread>={args.margin:g}", "all right", "all wrong", "pairs"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")
    screened = [rd for rd in sorted(args.run.glob("round-*")) if (rd / "collect" / "screen.jsonl").exists()]
    if screened:
        print("\n| round | screen samples right | problems searched | step pairs | pairs per problem |\n|---|---|---|---|---|")
    for rd in screened:
        print_screen(rd)


def print_screen(rd: Path) -> None:
    """The searched problems of a `collect.screen` round by their screen result, and the pairs of each group."""
    import datasets

    right = {r["id"]: r["right"] for r in read_jsonl(rd / "collect" / "screen.jsonl") if "id" in r}
    searched = [t["problem_id"] for t in read_jsonl(rd / "collect" / "trees.jsonl")]
    pairs = Counter(datasets.load_from_disk(str(rd / "data" / "pairs"))["problem_id"])
    groups: dict[int, list[int]] = {}
    for pid in searched:
        groups.setdefault(right[pid], []).append(pairs.get(pid, 0))
    for k, got in sorted(groups.items()):
        print(f"| {rd.name} | {k} | {len(got)} | {sum(got)} | {sum(got) / len(got):.2f} |")


if __name__ == "__main__":
    main()
