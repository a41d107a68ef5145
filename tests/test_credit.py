"""Step credit on hand-made trees: Monte Carlo values and fallbacks, Q, advantages, binary search."""

from __future__ import annotations

import math

import pytest

from sharpen.core.errors import ConfigError
from sharpen.core.tree import Tree
from sharpen.search.credit import (
    advantages,
    first_wrong_step,
    mc_values,
    path_value_fn,
    q_values,
    rollout_value,
    values,
)


def make_tree(scored: bool = True) -> Tree:
    t = Tree(problem_id="p1", scorer="oracle:4", question="What is 1 + 2?", prompt="Q: 1+2\n", reference="3")
    a = t.add(0, step="1 + 2 = 3", score=0.75 if scored else None)
    d = t.add(0, step="1 + 2 = 4", score=0.25 if scored else None)
    t.add(a.id, step="Answer: 3", terminal=True, answer="3", correct=True)
    t.add(a.id, step="Answer: 5", terminal=True, answer="5", correct=False)
    t.add(d.id, step="Answer: 4", terminal=True, answer="4", correct=False)
    return t


def test_rollout_value():
    assert rollout_value([True, False, True, True]) == 0.75
    with pytest.raises(ConfigError):
        rollout_value([])


def test_mc_values_reads_scores_and_terminals():
    v = mc_values(make_tree())
    assert v == {0: 1 / 3, 1: 0.75, 2: 0.25, 3: 1.0, 4: 0.0, 5: 0.0}


def test_mc_values_fall_back_to_subtree_correctness():
    v = mc_values(make_tree(scored=False))
    assert v[1] == 0.5 and v[2] == 0.0 and math.isclose(v[0], 1 / 3)


def test_mc_values_empty_tree():
    assert mc_values(Tree(problem_id="e", question="q")) == {}


def test_q_values_and_sources():
    t = make_tree()
    t.nodes[1].visits, t.nodes[1].value_sum = 4, 3.0
    assert q_values(t) == {1: 0.75}
    assert values(t, "q") == {1: 0.75}
    assert values(t, "score") == {1: 0.75, 2: 0.25}
    assert values(t, "value")[1] == 0.75
    with pytest.raises(ConfigError):
        values(t, "nope")  # type: ignore[arg-type]


def test_advantages_are_progress():
    t = make_tree()
    adv = advantages(t)
    assert math.isclose(adv[1], 0.75 - 1 / 3)
    assert adv[3] == 0.25 and adv[4] == -0.75 and adv[5] == -0.25
    assert 0 not in adv


@pytest.mark.parametrize("n,wrong", [(1, 0), (2, 1), (7, 0), (7, 3), (7, 6), (16, 9), (100, 57)])
def test_first_wrong_step_binary_search(n, wrong):
    calls = []

    def value_fn(h: int) -> float:
        calls.append(h)
        return 0.0 if h > wrong else 0.5

    steps = [f"s{i}" for i in range(n)]
    assert first_wrong_step(steps, value_fn) == wrong
    assert len(calls) <= math.ceil(math.log2(n)) + 1
    assert len(set(calls)) == len(calls)


def test_first_wrong_step_none_when_correct_or_empty():
    assert first_wrong_step(["a", "b", "c"], lambda h: 1.0) is None
    assert first_wrong_step([], lambda h: 0.0) is None
    # known_wrong skips the check of the full solution
    calls = []
    assert (
        first_wrong_step(["a", "b"], lambda h: calls.append(h) or (0.0 if h >= 2 else 1.0), known_wrong=True)
        == 1
    )
    assert 2 not in calls


def test_first_wrong_step_on_tree_path():
    t = make_tree()
    assert first_wrong_step(["1 + 2 = 4", "Answer: 4"], path_value_fn(t, 5), threshold=0.3) == 0
    assert first_wrong_step(["1 + 2 = 3", "Answer: 5"], path_value_fn(t, 4)) == 1
    assert first_wrong_step(["1 + 2 = 3", "Answer: 3"], path_value_fn(t, 3)) is None
