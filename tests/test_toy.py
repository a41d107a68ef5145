"""The toy random-walk process and the budget: the pieces the search tests stand on."""

import math

import pytest

from sharpen.core.budget import Budget, allot
from sharpen.core.errors import BudgetError
from sharpen.search.toy import DistanceScorer, RandomWalkProcess, make_problems


def test_expand_complete_rollout_and_meter():
    proc = RandomWalkProcess(horizon=4)
    problem = make_problems(1, seed=3, horizon=4)[0]
    tree = proc.new_tree(problem, seed=0)
    kids = proc.expand(tree, [0, 0], 3)
    assert [len(k) for k in kids] == [3, 3]
    assert math.isclose(sum(tree.nodes[c].prior for c in kids[0]), 1.0)
    assert proc.meter.total.generated_tokens == 6
    done = proc.complete(tree, [kids[0][0]], 2)[0]
    assert all(tree.nodes[d].terminal and tree.nodes[d].answer is not None for d in done)
    assert all(tree.nodes[d].num_tokens == 3 for d in done)
    assert proc.expand(tree, [done[0]], 3) == [[]]  # terminal nodes are not extended
    rolls = proc.rollout(tree, [0], 5)[0]
    assert len(rolls) == 5 and all(r.num_tokens == 4 for r in rolls)
    assert proc.meter.total.generated_tokens == 6 + 6 + 20


def test_terminal_at_horizon_and_verify():
    proc = RandomWalkProcess(horizon=2)
    tree = proc.new_tree(make_problems(1, horizon=2)[0])
    (a,) = proc.expand(tree, [0], 1)[0]
    (b,) = proc.expand(tree, [a], 1)[0]
    assert not tree.nodes[a].terminal and tree.nodes[b].terminal
    assert proc.verify(tree, tree.reference) and not proc.verify(tree, None)


def test_budget_caps_rows():
    proc = RandomWalkProcess(horizon=6)
    tree = proc.new_tree(make_problems(1)[0])
    budget = Budget(proc.meter, 10)
    assert budget.rows(100, 6) == 1  # not even one row surely fits: a single row
    out = proc.complete(tree, [0], 8, budget)[0]
    assert len(out) == 1 and budget.spent == 6
    assert budget.rows(5, 6) == 1 and budget.rows(5, 1) == 4
    proc.expand(tree, [0], 5, budget)
    assert budget.spent == 10 and budget.exhausted and budget.rows(3, 1) == 0
    assert proc.expand(tree, [0], 5, budget) == [[]]
    with pytest.raises(BudgetError):
        Budget(proc.meter, 0)


def test_allot():
    assert allot([1, 2, 3], 4, 12) == ([1, 2, 3], 4)
    assert allot([1, 2, 3], 4, 7) == ([1, 2, 3], 2)
    assert allot([1, 2, 3], 4, 2) == ([1, 2], 1)


def test_distance_scorer_values_and_cost():
    proc = RandomWalkProcess(horizon=4)
    tree = proc.new_tree(make_problems(1, horizon=4)[0])
    kids = proc.expand(tree, [0], 4)[0]
    scorer = DistanceScorer(proc, noise=0.0)
    before = proc.meter.total.generated_tokens
    vals = scorer.score(tree, kids + kids)
    assert all(0.0 <= v <= 1.0 for v in vals)
    assert proc.meter.total.generated_tokens - before == len(kids)  # duplicates and cache cost nothing
    scorer.score(tree, kids)
    assert proc.meter.total.generated_tokens - before == len(kids)


def test_early_stop_ends_walks_at_the_target():
    proc = RandomWalkProcess(horizon=6, p_good=0.9, early_stop=True)
    tree = proc.new_tree(make_problems(1, seed=2, horizon=6)[0])
    done = proc.complete(tree, [0], 20)[0]
    lengths = {tree.nodes[d].num_tokens for d in done}
    assert len(lengths) > 1 or lengths == {abs(int(tree.reference))}
    for d in done:
        if tree.nodes[d].num_tokens < 6:
            assert tree.nodes[d].answer == tree.reference
