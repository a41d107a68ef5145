"""How well a verifier picks among one problem's own samples, from a sweep cell's stored scores (no
model run). Weighted vote and best-of-N sample the same solutions at one budget and seed, so one
`weighted@...` cell gives both, and vote over the same samples:

    .venv/bin/python benchmarks/selection.py runs/sweep/weighted@prm-.../budget-96/trees.jsonl [bon-trees.jsonl]

Prints accuracy of weighted (as searched), best-of-N (the top-scored solution, first of equals) and
vote over the same samples, pass@N; and on the problems whose samples hold both a right and a wrong
answer: how often the top-scored sample is right, a random pick's expectation, vote's count, and the
mean within-problem AUROC beside the pooled one (pooled AUROC also rewards telling easy problems from
hard ones, which selection does not use). With a second file (a `bon@...` cell of the same sweep),
checks that best-of-N read off the scores picks what the bon cell picked.

With `--prm DIR`, the stored solutions are first scored afresh by that PRM (one forward pass per
solution, as the `prm:DIR` scorer reads a whole sample: its value at the last token), so one set of
sampled trees (a `vote` cell will do) judges any number of PRMs without searching again; weighted
vote is then recomputed from the new scores:

    .venv/bin/python benchmarks/selection.py runs/sweep/vote@none/budget-192/trees.jsonl --prm /tmp/prm/merged

and then also prints the tokens each model read per problem (generated, the policy's forward tokens, the
PRM's) and best-of-N's and weighted vote's paired bootstrap difference from vote on the same samples: the
comparison at equal generated tokens.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

from sharpen.core.answer import vote_key
from sharpen.core.stats import labelled_auroc, paired_bootstrap
from sharpen.train.metrics import within_problem_auroc


def solutions(t: dict) -> list[dict]:
    return [n for n in t["nodes"][1:] if n["parent"] == 0 and n["terminal"]]


def best_of_n(t: dict) -> bool | None:
    scored = [n for n in solutions(t) if n["score"] is not None]
    return bool(max(scored, key=lambda n: n["score"])["correct"]) if scored else None


def _top_answer(t: dict, weight) -> bool:
    """Whether the answer whose solutions' weights (`weight(node)`, None: no vote) sum highest is right."""
    total: dict[str, float] = defaultdict(float)
    first: dict[str, dict] = {}
    for n in solutions(t):
        k, w = vote_key(n["answer"]), weight(n)
        if k is not None and w is not None:
            total[k] += w
            first.setdefault(k, n)
    if not total:
        return False
    top = max(total.values())
    return bool(first[next(k for k, v in total.items() if v == top)]["correct"])


def vote(t: dict) -> bool:
    return _top_answer(t, lambda n: 1.0)


def weighted(t: dict) -> bool:
    """Weighted vote from the stored scores: the answer whose solutions' scores sum highest."""
    return _top_answer(t, lambda n: n["score"])


def rescore(trees: list[dict], prm_dir: str, batch: int = 16) -> int:
    """Every solution's score replaced by `prm_dir`'s value at its last token (in place); returns the
    tokens the PRM read (its forward tokens: context and solution, once per solution)."""
    from sharpen.search.scorers.prm_model import PRMModel

    prm = PRMModel.load(prm_dir, max_length=None, require_format=False)
    items = [(t, x) for t in trees for x in solutions(t)]
    heads = [prm.context_of(t.get("prompt"), t["question"]) for t, _ in items]
    enc = prm.encode(heads, [[x["step"]] for _, x in items])
    enc = [(ids, pos[-1:] if pos else [len(ids) - 1]) for ids, pos in enc]
    for (_, x), p in zip(items, prm.score_encoded(enc, batch_size=batch), strict=True):
        x["score"] = p[-1]
    return sum(len(ids) for ids, _ in enc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trees")
    ap.add_argument("bon_trees", nargs="?", help="a bon@... cell of the same sweep, to check against")
    ap.add_argument("--prm", help="score the stored solutions afresh with this PRM first")
    args = ap.parse_args()
    trees = [json.loads(line) for line in open(args.trees)]
    read = rescore(trees, args.prm) if args.prm else None
    n = len(trees)
    v = [float(vote(t)) for t in trees]
    b = [float(bool(best_of_n(t))) for t in trees]
    w = [float(weighted(t)) if args.prm else float(bool(t["correct"])) for t in trees]  # as searched without --prm
    rows, scores = [], []  # every scored solution, for the pooled and within-problem AUROC
    mixed = top = vote_right = 0
    chance = 0.0
    for t, voted, picked in zip(trees, v, b, strict=True):
        s = [x for x in solutions(t) if x["score"] is not None]
        rows += [{"problem_id": t["problem_id"], "label": int(bool(x["correct"]))} for x in s]
        scores += [x["score"] for x in s]
        right = sum(bool(x["correct"]) for x in s)
        if 0 < right < len(s):
            mixed += 1
            top += picked
            vote_right += voted
            chance += right / len(s)
    print(f"n={n}: weighted {sum(w) / n:.3f}, best-of-N {sum(b) / n:.3f}, vote on the same samples {sum(v) / n:.3f}, "
          f"pass@N {sum(any(x['correct'] for x in solutions(t)) for t in trees) / n:.3f}")
    if mixed:
        pooled = labelled_auroc([r["label"] for r in rows], scores)
        print(f"{mixed} problems with right and wrong samples: top-scored right on {top:.0f}, a random pick "
              f"{chance:.1f}, vote {vote_right:.0f}; within-problem AUROC "
              f"{within_problem_auroc(rows, scores)['auroc']:.3f}, pooled {pooled:.3f}")
    if read is not None:
        usage = [t.get("usage") or {} for t in trees]
        gen = sum(u.get("generated_tokens", 0) for u in usage) / n
        fwd = sum(u.get("forward_tokens", 0) for u in usage) / n
        print(f"tokens per problem: generated {gen:.1f}, policy forward {fwd:.1f}, PRM forward {read / n:.1f} "
              f"(vote spends the policy's alone)")
        for name, picked in (("best-of-N", b), ("weighted", w)):
            d, (lo, hi) = paired_bootstrap(v, picked)
            print(f"{name} - vote on the same samples: {d:+.3f} [{lo:+.3f}, {hi:+.3f}] (paired bootstrap 95%)")
    if args.bon_trees:
        bon = {t["problem_id"]: t for t in (json.loads(line) for line in open(args.bon_trees))}
        same = sum(bool(picked) == bool(bon[t["problem_id"]]["correct"]) for t, picked in zip(trees, b, strict=True))
        print(f"best-of-N from the scores == the bon cell on {same} of {n} problems")


if __name__ == "__main__":
    main()
