"""Lockstep batching: many searches share batched backend calls, deterministically, and each
search's budget counts only its own tokens."""

import pytest

from sharpen.backends.hf import HFBackend
from sharpen.collect import search_problems
from sharpen.process import LMProcess
from sharpen.scorers import make_scorer
from sharpen.tasks import load_task


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    task = load_task("gym:chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1})
    return task, task.problems("test", 5)


def _search(tiny_model_dir, task, problems, algo, scorer, parallel):
    backend = HFBackend(tiny_model_dir, seed=0, max_batch=64)
    process = LMProcess(backend, task, temperature=1.0, step_tokens=5, rollout_tokens=10, max_depth=3)
    sc = make_scorer(scorer, process, collect=True)
    trees = search_problems(process, sc, algo, problems, 60, seed=1, parallel=parallel)
    return trees, backend


def _no_time(tree):
    d = tree.to_dict()
    d["usage"] = {k: v for k, v in d["usage"].items() if k != "seconds"}
    return d


@pytest.mark.parametrize("algo,scorer", [("mcts", "self"), ("pf", "rollout:2"), ("vote", "none"), ("beam", "oracle:2")])
def test_parallel_search_is_deterministic_and_within_budget(tiny_model_dir, setup, algo, scorer):
    task, problems = setup
    a, backend = _search(tiny_model_dir, task, problems, algo, scorer, parallel=4)
    b, _ = _search(tiny_model_dir, task, problems, algo, scorer, parallel=4)
    assert [_no_time(t) for t in a] == [_no_time(t) for t in b]
    for t in a:
        spent = t.usage["generated_tokens"]
        assert 0 < spent <= 60 + 10  # budget + one row's max tokens
    # the per-search meters add up to what the real backend generated
    assert sum(t.usage["generated_tokens"] for t in a) == backend.meter.total.generated_tokens
    # calls were merged: fewer backend calls than searches made
    assert backend.meter.total.calls < sum(t.usage["calls"] for t in a)
