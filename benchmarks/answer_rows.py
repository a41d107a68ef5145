"""Step labels plus final-answer rows from other search trees: one PRM training set.

    .venv/bin/python benchmarks/answer_rows.py LABELS_DIR --trees TREES.jsonl [--trees ...] \
        --exclude HELDOUT_DIR [--exclude ...] --out OUT_DIR

A final answer's label needs no rollouts: under an oracle scorer it is the answer's truth. Any search
of training problems (a loop run's round-N/collect/trees.jsonl, a sweep's trees) holds many of them.
This adds, to the step labels in LABELS_DIR (`sharpen build labels`), one row per distinct final-answer
path of the given trees (problem, steps before it, the answer step), labelled with its truth alone: the
path's earlier steps are unlabelled (-1), so a PRM trained on OUT_DIR (`sharpen train prm --data
OUT_DIR`) learns from these rows only whether the answer is right, and its inner steps only from
LABELS_DIR's Monte Carlo labels. Rows of problems in an --exclude dataset (the held-out labels) are
left out, so the held-out evaluation stays by problem. The result is shuffled (seed 0) and written
atomically; printed: rows taken from each trees file, the totals, and the positives.
"""

from __future__ import annotations

import argparse


def main() -> None:
    import datasets

    datasets.disable_progress_bars()

    from sharpen.train.data import load_dataset_dir, load_trees, save_dataset, step_labels
    from sharpen.train.prm import LABEL_COLUMNS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("labels")
    ap.add_argument("--trees", action="append", required=True, help="trees.jsonl (repeat; taken in this order)")
    ap.add_argument("--exclude", action="append", default=[], help="a labels dataset whose problems to leave out")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    base = load_dataset_dir(args.labels, LABEL_COLUMNS)
    excluded = {p for d in args.exclude for p in load_dataset_dir(d)["problem_id"]}
    seen: set[tuple] = set()
    extra: list[dict] = []
    for path in args.trees:
        taken = 0
        for r in step_labels(load_trees(path), threshold=0.5):
            if not r["terminal"] or r["problem_id"] in excluded or r["value"] not in (0.0, 1.0):
                continue
            key = (r["problem_id"], tuple(r["prefix_steps"]), r["step"])
            if key in seen:
                continue
            seen.add(key)
            n = len(r["path_labels"])
            r.update(path_labels=[-1] * (n - 1) + [int(r["value"])], path_values=[-1.0] * (n - 1) + [r["value"]],
                     label=int(r["value"]), leaf=True, recipe="answer-truth")
            extra.append(r)
            taken += 1
        print(f"{path}: {taken} final-answer rows")
    rows = datasets.Dataset.from_list(extra, features=base.features)
    mixed = datasets.concatenate_datasets([base, rows]).shuffle(seed=0)  # save_dataset writes it in this order
    save_dataset(mixed, args.out)
    print(f"{len(base)} step-label rows + {len(rows)} final-answer rows ({sum(rows['label'])} right, of "
          f"{len(set(rows['problem_id']))} problems) = {len(mixed)} rows -> {args.out}")


if __name__ == "__main__":
    main()
