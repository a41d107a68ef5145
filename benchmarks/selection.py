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
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

from sharpen.answer import vote_key
from sharpen.stats import auroc


def solutions(t: dict) -> list[dict]:
    return [n for n in t["nodes"][1:] if n["parent"] == 0 and n["terminal"]]


def best_of_n(t: dict) -> bool | None:
    scored = [n for n in solutions(t) if n["score"] is not None]
    return bool(max(scored, key=lambda n: n["score"])["correct"]) if scored else None


def vote(t: dict) -> bool:
    total: dict[str, float] = defaultdict(float)
    first: dict[str, dict] = {}
    for n in solutions(t):
        k = vote_key(n["answer"])
        if k is not None:
            total[k] += 1.0
            first.setdefault(k, n)
    if not total:
        return False
    top = max(total.values())
    return bool(first[next(k for k, v in total.items() if v == top)]["correct"])


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    trees = [json.loads(line) for line in open(sys.argv[1])]
    n = len(trees)
    pos, neg, within = [], [], []
    mixed = top = vote_right = 0
    chance = 0.0
    for t in trees:
        s = [x for x in solutions(t) if x["score"] is not None]
        right, wrong = [x["score"] for x in s if x["correct"]], [x["score"] for x in s if not x["correct"]]
        pos += right
        neg += wrong
        if right and wrong:
            mixed += 1
            top += bool(best_of_n(t))
            vote_right += vote(t)
            chance += len(right) / len(s)
            within.append(auroc(right, wrong))
    print(f"n={n}: weighted {sum(bool(t['correct']) for t in trees) / n:.3f}, best-of-N "
          f"{sum(bool(best_of_n(t)) for t in trees) / n:.3f}, vote on the same samples {sum(map(vote, trees)) / n:.3f}, "
          f"pass@N {sum(any(x['correct'] for x in solutions(t)) for t in trees) / n:.3f}")
    if mixed:
        print(f"{mixed} problems with right and wrong samples: top-scored right on {top}, a random pick "
              f"{chance:.1f}, vote {vote_right}; within-problem AUROC {sum(within) / len(within):.3f}, "
              f"pooled {auroc(pos, neg):.3f}")
    if len(sys.argv) > 2:
        bon = {t["problem_id"]: t for t in (json.loads(line) for line in open(sys.argv[2]))}
        same = sum(bool(best_of_n(t)) == bool(bon[t["problem_id"]]["correct"]) for t in trees)
        print(f"best-of-N from the scores == the bon cell on {same} of {n} problems")


if __name__ == "__main__":
    main()
