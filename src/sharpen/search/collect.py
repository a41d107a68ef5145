"""Run a search algorithm over many problems: one tree per problem, appended to a JSONL file and
flushed as each problem finishes; problems already in the file are skipped (resume)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sharpen.core.io import JsonlAppender, read_jsonl
from sharpen.core.seeding import derive_seed
from sharpen.core.stats import bootstrap_ci  # the one bootstrap, also importable from here
from sharpen.core.tasks import Problem
from sharpen.core.tree import Tree


def problem_seed(seed: int, problem_id: str) -> int:
    """A problem's tree seed, `derive_seed(seed, problem_id)` in 31 bits: independent of order and of
    which problems were already done, so a resume gives the same trees."""
    return derive_seed(seed, problem_id, bits=31)


def label_terminals(process: Any, tree: Tree) -> None:
    """Ground truth for evaluation and training data: `correct` on the tree and every terminal.
    Runs after the search, so no algorithm ever sees it."""
    for node in tree.nodes:
        if node.terminal:
            node.correct = bool(process.verify(tree, node.answer))
    tree.correct = bool(process.verify(tree, tree.answer))


def search_tree(entry: Any, options: Any, process: Any, scorer: Any, problem: Problem, budget: int, seed: int,
                scorer_spec: str | None) -> Tree:
    """One problem searched by the algorithm `entry` (a registry `AlgorithmEntry`) with its typed
    `options`; the tree records `scorer_spec` when the algorithm uses a scorer. No ground truth is read."""
    tree = entry.fn(process, scorer, problem, budget, seed=seed, **options.model_dump())
    tree.scorer = scorer_spec if entry.needs_scorer else None
    return tree


def search_problems(
    process: Any,
    scorer: Any,
    algo: str,
    problems: list[Problem],
    budget: int,
    seed: int = 0,
    out_jsonl: str | Path | None = None,
    algo_args: Any = None,
    on_progress: Callable[[int], None] | None = None,
    parallel: int = 1,
    split: str | None = None,
    scorer_spec: str | None = None,
    batch_meter: Any = None,
) -> list[Tree]:
    """Search every problem; each tree records its provenance: `algo`, `scorer` (`scorer_spec`,
    else the scorer's name) and `split` (given, else the task's own split rule on the question).
    `parallel` > 1 searches that many problems at once with lockstep batching (LM processes
    only); a problem's tree does not depend on which problems share its batches. `batch_meter` (a
    `UsageMeter`) gets the batches' own usage: what sharing prefills saved, as `cached_tokens`,
    counted once for a batch rather than in any tree. `algo_args`: the algorithm's options, raw (a
    dict) or typed (its `Options`, as a `SearchSpec` holds them)."""
    from sharpen.core.tasks import split_of
    from sharpen.search.registry import Options, check_counts, get_algorithm

    entry = get_algorithm(algo)
    if isinstance(algo_args, entry.options):
        options: Options = algo_args
        check_counts(options, f"algorithm {algo}", budget)
    else:  # a typo or a count over the budget fails here, before any work
        options = entry.parse(algo_args, budget)
    spec = scorer_spec if scorer_spec is not None else getattr(scorer, "name", None)
    done: dict[str, Tree] = {}
    if out_jsonl is not None and Path(out_jsonl).exists():
        done = {d["problem_id"]: Tree.from_dict(d) for d in read_jsonl(out_jsonl)}
    if on_progress and done:
        on_progress(sum(p.id in done for p in problems))
    writer = JsonlAppender(out_jsonl) if out_jsonl is not None else None
    if parallel > 1 and not hasattr(process, "fork"):
        parallel = 1

    def search_one(p: Problem, proc: Any, sc: Any) -> Tree:
        tree = search_tree(entry, options, proc, sc, p, budget, problem_seed(seed, p.id), spec)
        tree.split = split or split_of(p.question)
        label_terminals(proc, tree)
        return tree

    try:
        for start in range(0, len(problems), max(1, parallel)):
            group = problems[start : start + max(1, parallel)]
            if all(p.id in done for p in group):
                continue
            if parallel > 1:
                from sharpen.search.batching import LockstepBatcher, fork_search

                def job(p: Problem):
                    return lambda proxy: search_one(p, *fork_search(process, scorer, proxy))

                batcher = LockstepBatcher(process.backend)
                trees = batcher.run([job(p) for p in group])
                if batch_meter is not None:
                    batch_meter.total = batch_meter.total + batcher.meter.total
            else:
                trees = [search_one(p, process, scorer) for p in group]
            fresh = 0
            for p, tree in zip(group, trees, strict=True):
                if p.id in done:
                    continue
                done[p.id] = tree
                fresh += 1
                if writer:
                    writer.write(tree.to_dict())
            if on_progress:
                on_progress(fresh)
    finally:
        if writer:
            writer.close()
    return [done[p.id] for p in problems]


def summary_rows(m: dict[str, Any]) -> list[list[str]]:
    """A search's metrics (`search_metrics`) as a header and (metric, value) rows."""
    lo, hi = m["accuracy_ci95"]
    return [["metric", "value"], ["accuracy", f"{m['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]"],
            ["mean generated tokens", f"{m['mean_generated_tokens']:.0f}"],
            ["max generated tokens", f"{m['max_generated_tokens']}"],
            ["mean forward tokens: policy / verifier", f"{m['mean_forward_tokens']:.0f} / {m['mean_verifier_tokens']:.0f}"],
            ["mean nodes / tree", f"{m['mean_nodes']:.1f}"]]


def search_metrics(trees: list[Tree], budget: int, batches: Any = None) -> dict[str, Any]:
    """Accuracy and spend of `trees`. `cached_tokens`: the prompt tokens not computed, of the trees'
    own calls and, with `batches` (the `Usage` of `search_problems`'s `batch_meter`), of the
    lockstep batches' shared prefills, counted once."""
    acc = [1.0 if t.correct else 0.0 for t in trees]
    spent = [t.usage.get("generated_tokens", 0) for t in trees]
    forward = [t.usage.get("prompt_tokens", 0) + t.usage.get("generated_tokens", 0) for t in trees]
    verifier = [t.usage.get("verifier_tokens", 0) for t in trees]
    lo, hi = bootstrap_ci(acc)
    return {
        "n": len(trees),
        "budget": budget,
        "accuracy": sum(acc) / max(1, len(acc)),
        "accuracy_ci95": [lo, hi],
        "mean_generated_tokens": sum(spent) / max(1, len(spent)),
        "max_generated_tokens": max(spent, default=0),
        "mean_forward_tokens": sum(forward) / max(1, len(forward)),  # the policy's prefills + generated
        "mean_verifier_tokens": sum(verifier) / max(1, len(verifier)),  # a learned verifier's inputs
        "mean_nodes": sum(len(t.nodes) for t in trees) / max(1, len(trees)),
        "answered": sum(t.answer is not None for t in trees) / max(1, len(trees)),
        "cached_tokens": sum(t.usage.get("cached_tokens", 0) for t in trees) + (batches.cached_tokens if batches else 0),
    }
