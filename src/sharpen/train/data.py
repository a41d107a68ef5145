"""Dataset builders: pure functions from search trees to HF `datasets`, saved atomically.

- `step_pairs`: step-level preference pairs from siblings (MCTS-DPO, Xie et al. 2024, arXiv 2405.00451):
  same prefix, chosen = the child step with the higher value, rejected = a sibling with a lower value,
  margin >= `min_margin`.
- `step_dpo_pairs`: the Step-DPO recipe (Lai et al. 2024, arXiv 2406.18629): the first wrong step of
  a failed solution against a correct continuation from the same prefix.
- `trace_pairs`: outcome pairs of whole solutions, a verified correct one against a wrong one of the
  same problem (Iterative RPO, Pang et al. 2024, arXiv 2404.19733), to mix with step pairs.
- `step_labels`: each step with its value and a binary label at a threshold, for a PRM
  (Math-Shepherd, arXiv 2312.08935).
- `verified_traces`: correct full solutions, deduplicated, for rejection-sampling fine-tuning.

Pairs are in TRL's DPO format (prompt, chosen, rejected) and traces in TRL's prompt-completion SFT
format. The prompt of a step is the rendered prompt of the tree followed by the steps so far, each
followed by the tree's step delimiter (`tree.meta["delimiter"]`, "\\n" when a tree does not record
one); a step completion is the step text followed by the delimiter. Step labels keep the steps
unrendered and carry the delimiter in a `delimiter` column, so a PRM renders them the same way.
Every row keeps its provenance: problem id, node ids, values, round and recipe.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from datasets import Dataset, Features, Value, load_from_disk
from datasets import Sequence as HFSequence

from sharpen.core.answer import extract_answer
from sharpen.core.errors import ConfigError, TaskError
from sharpen.core.io import atomic_dir, read_records
from sharpen.core.tree import Tree
from sharpen.search.credit import LABEL_THRESHOLD, ValueSource, values

DELIMITER = "\n"
"""The step delimiter of a tree that does not record one in `tree.meta["delimiter"]`."""

PAIR_FEATURES = Features(
    {
        "prompt": Value("string"),
        "chosen": Value("string"),
        "rejected": Value("string"),
        "problem_id": Value("string"),
        "prefix_node_id": Value("int64"),
        "chosen_node_id": Value("int64"),
        "rejected_node_id": Value("int64"),
        "chosen_value": Value("float64"),
        "rejected_value": Value("float64"),
        "margin": Value("float64"),
        "round": Value("int64"),
        "recipe": Value("string"),
    }
)

LABEL_FEATURES = Features(
    {
        "prompt": Value("string"),
        "question": Value("string"),
        "prefix_steps": HFSequence(Value("string")),
        "step": Value("string"),
        "value": Value("float64"),
        "label": Value("int64"),
        "path_values": HFSequence(Value("float64")),
        "path_labels": HFSequence(Value("int64")),
        "leaf": Value("bool"),
        "terminal": Value("bool"),
        "problem_id": Value("string"),
        "node_id": Value("int64"),
        "parent_id": Value("int64"),
        "depth": Value("int64"),
        "round": Value("int64"),
        "recipe": Value("string"),
        "delimiter": Value("string"),
    }
)

TRACE_FEATURES = Features(
    {
        "prompt": Value("string"),
        "completion": Value("string"),
        "answer": Value("string"),
        "problem_id": Value("string"),
        "node_id": Value("int64"),
        "num_steps": Value("int64"),
        "round": Value("int64"),
        "recipe": Value("string"),
    }
)


def base_prompt(tree: Tree) -> str:
    """The rendered prompt the steps continue (the question when a tree has no rendered prompt)."""
    return tree.prompt or tree.question


def tree_delimiter(tree: Tree) -> str:
    """The tree's step delimiter: the one its process split steps on (`DELIMITER` if unrecorded)."""
    return tree.meta.get("delimiter") or DELIMITER


def render_prefix(tree: Tree, prefix_steps: Sequence[str]) -> str:
    """The prompt followed by the steps so far, each followed by the tree's delimiter."""
    d = tree_delimiter(tree)
    return base_prompt(tree) + "".join(s + d for s in prefix_steps)


def to_dataset(rows: list[dict], features: Features) -> Dataset:
    # column-wise, so an empty dataset still has its schema
    return Dataset.from_dict({k: [r[k] for r in rows] for k in features}, features=features)


def _norm(text: str) -> str:
    return " ".join(text.split())


def _prefix_steps(tree: Tree, node_id: int) -> list[str]:
    return [n.step for n in tree.path(node_id)]


def step_completion(tree: Tree, node_id: int, rejected: bool = False) -> str:
    """A step as a DPO completion. The solution format ends with an `Answer:` line, so:
    - an answer line ends with the end-of-solution token the tree recorded (`tree.meta["eos"]`);
    - any other step ends with the tree's delimiter: the solution goes on;
    - except a *rejected* step after which the model stopped without an answer line: it keeps its
      end token, so a pair can prefer going on ("7 + 4 = 11\\n") over stopping there ("7 + 4 = 11<eos>").
    Without a recorded end token every step ends with the delimiter."""
    n = tree.nodes[node_id]
    eos = tree.meta.get("eos") or ""
    if eos and n.terminal:
        if extract_answer(n.step, fallback=False) is not None or (rejected and n.finish_reason == "eos"):
            return n.step + eos
    return n.step + tree_delimiter(tree)


def _pair_row(
    tree: Tree, parent: int, c: int, r: int, vals: dict[int, float], round: int, recipe: str
) -> dict:
    return {
        "prompt": render_prefix(tree, _prefix_steps(tree, parent)),
        "chosen": step_completion(tree, c),
        "rejected": step_completion(tree, r, rejected=True),
        "problem_id": tree.problem_id,
        "prefix_node_id": parent,
        "chosen_node_id": c,
        "rejected_node_id": r,
        "chosen_value": vals[c],
        "rejected_value": vals[r],
        "margin": vals[c] - vals[r],
        "round": round,
        "recipe": recipe,
    }


def _pair_key(tree: Tree, c: int, r: int) -> tuple[str, str]:
    """The pair's (chosen, rejected) completions, whitespace-normalised: equal texts never pair."""
    return _norm(step_completion(tree, c)), _norm(step_completion(tree, r, rejected=True))


def _pairable(tree: Tree, vals: dict[int, float], c: int, r: int, min_margin: float,
              key: tuple[str, str] | None = None) -> bool:
    m = vals[c] - vals[r]
    if not (m > 0 and m >= min_margin):
        return False
    chosen, rejected = key or _pair_key(tree, c, r)
    return chosen != rejected


def step_pairs(
    trees: Iterable[Tree],
    min_margin: float = 0.1,
    round: int = 0,
    source: ValueSource = "mc",
    pairing: Literal["best_worst", "all"] = "best_worst",
) -> Dataset:
    """Step preference pairs among siblings (MCTS-DPO): for every node with two or more valued
    children, chosen = a child step with a higher value, rejected = a sibling with a lower value.

    Args:
        trees: search trees.
        min_margin: smallest value gap chosen - rejected kept; equal values never pair, even at 0.
        round: the loop round, stored as provenance.
        source: where step values come from (see `sharpen.search.credit.values`).
        pairing: "best_worst" (the paper: the highest- against the lowest-valued sibling, one pair
            per prefix) or "all" (every sibling pair that clears the margin).
    """
    if pairing not in ("best_worst", "all"):
        raise ConfigError(f"unknown pairing {pairing!r} (fix: best_worst or all)")
    if min_margin < 0:
        raise ConfigError(f"min_margin must be >= 0, got {min_margin}")
    recipe = f"mcts-dpo/{pairing}"
    rows: list[dict] = []
    for tree in trees:
        vals = values(tree, source)
        for parent in tree.nodes:
            kids = [c for c in parent.children if c in vals]
            if len(kids) < 2:
                continue
            kids.sort(key=lambda c: (-vals[c], c))

            if pairing == "best_worst":
                best = kids[0]
                for r in reversed(kids[1:]):
                    if _pairable(tree, vals, best, r, min_margin):
                        rows.append(_pair_row(tree, parent.id, best, r, vals, round, recipe))
                        break
            else:
                seen: set[tuple[str, str]] = set()
                for i, c in enumerate(kids):
                    for r in kids[i + 1 :]:
                        key = _pair_key(tree, c, r)
                        if key not in seen and _pairable(tree, vals, c, r, min_margin, key):
                            seen.add(key)
                            rows.append(_pair_row(tree, parent.id, c, r, vals, round, recipe))
    return to_dataset(rows, PAIR_FEATURES)


def _correct_below(tree: Tree) -> tuple[dict[int, int], dict[int, int]]:
    """Per node: number of correct and of verified terminals in its subtree."""
    good = {n.id: 0 for n in tree.nodes}
    verified = {n.id: 0 for n in tree.nodes}
    for n in tree.nodes:
        if n.terminal and n.correct is not None:
            m = n
            while True:
                verified[m.id] += 1
                good[m.id] += int(bool(n.correct))
                if m.parent is None:
                    break
                m = tree.nodes[m.parent]
    return good, verified


def step_dpo_pairs(
    trees: Iterable[Tree],
    threshold: float = 0.0,
    round: int = 0,
    source: ValueSource = "mc",
) -> Dataset:
    """Step-DPO pairs: for each failed solution (a verified terminal with correct=False), its first
    wrong step (the first step whose value is <= `threshold` and that has no verified correct
    terminal below it: a Monte Carlo value is a sample, a verified terminal is proof) is rejected
    against a correct continuation from the same prefix: the highest-valued sibling with value >
    `threshold` that has a correct terminal below it (or, in a tree without verified terminals
    below it, just value > `threshold`). One pair per (prefix, wrong step), however many failed
    solutions share it.

    Args:
        trees: search trees.
        threshold: a step with value <= threshold is wrong (0.0: the Monte Carlo value is zero).
        round: the loop round, stored as provenance.
        source: where step values come from (see `sharpen.search.credit.values`).
    """
    rows: list[dict] = []
    for tree in trees:
        vals = values(tree, source)
        good, verified = _correct_below(tree)
        done: set[int] = set()
        for t in tree.nodes:
            if not (t.terminal and t.correct is False):
                continue
            # a step with a verified correct terminal below it is not wrong, whatever its value: with
            # `oracle:k` a value is k Bernoulli draws, so a good step can score 0
            wrong = next(
                (n for n in tree.path(t.id) if n.id in vals and vals[n.id] <= threshold and good[n.id] == 0),
                None,
            )
            if wrong is None or wrong.id in done or wrong.parent is None:
                continue
            done.add(wrong.id)
            cands = [
                s
                for s in tree.nodes[wrong.parent].children
                if s != wrong.id
                and s in vals
                and vals[s] > threshold
                and (good[s] > 0 or verified[s] == 0)
                and len(set(_pair_key(tree, s, wrong.id))) == 2
            ]
            if not cands:
                continue
            best = min(cands, key=lambda s: (-vals[s], -good[s], s))
            rows.append(_pair_row(tree, wrong.parent, best, wrong.id, vals, round, "step-dpo"))
    return to_dataset(rows, PAIR_FEATURES)


def trace_completion(tree: Tree, node_id: int, rejected: bool = False) -> str:
    """A whole solution, root to `node_id`, as a DPO completion: every step but the last followed by
    the delimiter, the last rendered by `step_completion` (an answer line ends with the end token)."""
    path = tree.path(node_id)
    d = tree_delimiter(tree)
    return "".join(n.step + d for n in path[:-1]) + step_completion(tree, node_id, rejected=rejected)


def trace_pairs(trees: Iterable[Tree], per_problem: int = 1, round: int = 0) -> Dataset:
    """Outcome pairs of whole solutions (Iterative RPO, Pang et al. 2024, arXiv 2404.19733): in each
    tree with both verified correct and verified wrong terminals, chosen = a correct solution and
    rejected = a wrong one, prompt = the tree's prompt. Solutions are deduplicated by
    whitespace-normalised text; up to `per_problem` pairs per tree, the i-th pairing the i-th
    distinct correct solution with the i-th distinct wrong one (each list reused cyclically when the
    other is longer), in the order the search found them. Values are the outcomes (1 and 0), the
    prefix node is the root. With the DPO trainer's `sft_weight`, the correct solutions also get the
    NLL term: the rft signal inside a DPO round.

    Args:
        trees: search trees.
        per_problem: most pairs per tree (>= 1).
        round: the loop round, stored as provenance.
    """
    if per_problem < 1:
        raise ConfigError(f"per_problem must be >= 1, got {per_problem} (fix: e.g. 1 or 2)")
    rows: list[dict] = []
    for tree in trees:
        # per outcome: normalised text -> (node id, completion), the first found of each text kept
        sides: dict[bool, dict[str, tuple[int, str]]] = {True: {}, False: {}}
        for n in tree.terminals():
            if n.correct is None or n.parent is None:
                continue
            text = trace_completion(tree, n.id, rejected=not n.correct)
            sides[bool(n.correct)].setdefault(_norm(text), (n.id, text))
        good, bad = list(sides[True].values()), list(sides[False].values())
        if not good or not bad:
            continue
        for i in range(min(per_problem, max(len(good), len(bad)))):
            (c, chosen), (r, rejected) = good[i % len(good)], bad[i % len(bad)]
            rows.append({
                "prompt": base_prompt(tree),
                "chosen": chosen,
                "rejected": rejected,
                "problem_id": tree.problem_id,
                "prefix_node_id": tree.root.id,
                "chosen_node_id": c,
                "rejected_node_id": r,
                "chosen_value": 1.0,
                "rejected_value": 0.0,
                "margin": 1.0,
                "round": round,
                "recipe": "trace-pairs",
            })
    return to_dataset(rows, PAIR_FEATURES)


def with_trace_pairs(pairs: Dataset, trees: Sequence[Tree], per_problem: int, round: int = 0) -> Dataset:
    """`pairs` followed by `trace_pairs(trees, per_problem)`; `pairs` itself when `per_problem` is 0."""
    if not per_problem:
        return pairs
    from datasets import concatenate_datasets

    return concatenate_datasets([pairs, trace_pairs(trees, per_problem, round=round)])


def step_labels(
    trees: Iterable[Tree],
    threshold: float = LABEL_THRESHOLD,
    round: int = 0,
    source: ValueSource = "mc",
    outcome_steps: bool = False,
) -> Dataset:
    """One row per valued step: its prompt, the steps before it, the step, its value and the label
    `value >= threshold` (Math-Shepherd's hard label at threshold > 0). `path_values` / `path_labels`
    cover the whole path up to and including the step (-1.0 / -1 where a step has no value), and
    `leaf` marks steps with no valued child: a PRM trains on leaf rows, one sequence per path.
    `delimiter` is the tree's step delimiter: the PRM input is prompt + every step followed by it
    (or, for a PRM trained with `context="question"`, `question` and a newline in place of the prompt).

    `outcome_steps`: a terminal node that holds a whole multi-step solution (vote and best-of-N
    sample one node per solution) is split at the delimiter into its steps, and every step takes the
    solution's value: outcome supervision at each step, which trains a value model of P(right | prefix)
    (OVM, Yu et al. 2023, arXiv 2311.09724), so the PRM learns to score the partial paths that beam
    search and particle filtering ask it about. The split steps' rows have `node_id` -1 but the last.
    """
    rows: list[dict] = []
    for tree in trees:
        vals = values(tree, source)
        delim = tree_delimiter(tree)
        for n in tree.nodes:
            if n.parent is None or n.id not in vals:
                continue
            before = tree.path(n.id)[:-1]
            leaf = not any(c in vals for c in n.children)
            parts = [n.step]
            if outcome_steps and n.terminal and leaf:
                parts = [p for p in n.step.split(delim) if p.strip()] or [n.step]
            split = len(parts) > 1  # a whole solution's steps, each labelled with its outcome
            base = len(before)
            steps = [m.step for m in before] + parts
            pv = [vals.get(m.id, -1.0) for m in before] + [vals[n.id]] * len(parts)
            pl = [int(v >= threshold) if v >= 0 else -1 for v in pv]
            for k in range(len(parts)):
                last = k == len(parts) - 1
                rows.append(
                    {
                        "prompt": base_prompt(tree),
                        "question": tree.question,
                        "prefix_steps": steps[: base + k],
                        "step": parts[k],
                        "value": vals[n.id],
                        "label": int(vals[n.id] >= threshold),
                        "path_values": pv[: base + k + 1],
                        "path_labels": pl[: base + k + 1],
                        "leaf": last and leaf,
                        "terminal": n.terminal and last,
                        "problem_id": tree.problem_id,
                        "node_id": n.id if last else -1,
                        "parent_id": n.parent,
                        "depth": n.depth + k,
                        "round": round,
                        "recipe": f"{'outcome' if split else 'mc'}-labels@{threshold:g}",
                        "delimiter": delim,
                    }
                )
    return to_dataset(rows, LABEL_FEATURES)


def verified_traces(trees: Iterable[Tree], round: int = 0) -> Dataset:
    """Correct full solutions (terminals with correct=True) in prompt-completion format, the steps
    joined by the tree's delimiter, deduplicated per problem by whitespace-normalised text (the first kept)."""
    rows: list[dict] = []
    for tree in trees:
        seen: set[str] = set()
        for n in tree.terminals():
            if n.correct is not True:
                continue
            completion = tree.text(n.id, tree_delimiter(tree))
            key = _norm(completion)
            if not key or key in seen:
                continue
            seen.add(key)
            rows.append(
                {
                    "prompt": base_prompt(tree),
                    "completion": completion,
                    "answer": n.answer or "",
                    "problem_id": tree.problem_id,
                    "node_id": n.id,
                    "num_steps": n.depth,
                    "round": round,
                    "recipe": "verified-traces",
                }
            )
    return to_dataset(rows, TRACE_FEATURES)


def load_trees(path: str | os.PathLike) -> list[Tree]:
    """Trees from a JSONL file (one `Tree.to_dict()` per line) or every *.jsonl in a directory."""
    p = Path(path)
    files = sorted(p.rglob("*.jsonl")) if p.is_dir() else [p]
    fix = "pass a trees.jsonl written by `sharpen search`"
    if not p.exists() or not files:
        raise TaskError(f"no trees at {path} (fix: {fix})")
    trees = [t for f in files for t in read_records(f, Tree.from_dict, "a search tree", fix)]
    if not trees:
        raise TaskError(f"{path} holds no trees (fix: {fix})")
    return trees


def save_dataset(ds: Dataset, path: str | os.PathLike) -> Path:
    """`save_to_disk`, atomically (an existing directory is replaced)."""
    # an empty dataset must still be written as one (empty) shard, or it cannot be loaded back
    return atomic_dir(path, lambda tmp: ds.save_to_disk(str(tmp), num_shards=1 if len(ds) == 0 else None))


def load_dataset_dir(path: str | os.PathLike, columns: Sequence[str] = ()) -> Dataset:
    """A dataset saved by `save_dataset`, checked for the columns a trainer needs."""
    p = Path(path)
    if not (p / "dataset_info.json").exists() and not (p / "state.json").exists():
        raise TaskError(f"{path} is not a saved dataset (fix: build it with `sharpen build ...`)")
    ds = load_from_disk(str(p))
    if not isinstance(ds, Dataset):
        raise TaskError(f"{path} holds a DatasetDict, expected one Dataset")
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise TaskError(
            f"{path} lacks columns {missing} (fix: build it with the matching `sharpen build` kind)"
        )
    return ds


def summary(ds: Dataset) -> dict[str, Any]:
    """Row count and, for pairs / labels, a couple of numbers worth printing."""
    out: dict[str, Any] = {"rows": len(ds)}
    if len(ds) and "margin" in ds.column_names:
        out["mean_margin"] = float(sum(ds["margin"]) / len(ds))
    if len(ds) and "label" in ds.column_names:
        out["positive_share"] = float(sum(ds["label"]) / len(ds))
    return out
