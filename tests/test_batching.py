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


@pytest.mark.parametrize("continuous", [False, True])
def test_continuous_admission_a_search_joins_a_running_one_and_gets_the_tree_it_gets_alone(tiny_model_dir, setup,
                                                                                           continuous):
    """`LockstepBatcher.serve` (what `sharpen serve` runs): a search handed over while another is
    running joins it at the next merged call (with `continuous`, at the next decode step of the call
    running), their rows share forward passes, and each gets the tree it gets searched alone."""
    from sharpen.batching import LockstepBatcher, fork_search
    from sharpen.registry import get_algorithm

    task, problems = setup
    backend = HFBackend(tiny_model_dir, seed=0, max_batch=64)
    process = LMProcess(backend, task, temperature=1.0, step_tokens=5, rollout_tokens=10, max_depth=3)
    vote = get_algorithm("vote").fn

    def job(i):
        return lambda proxy: vote(fork_search(process, None, proxy)[0], None, problems[i], 80, seed=10 + i)

    def steps(tree):
        return [(n.step, n.answer) for n in tree.nodes], tree.answer, tree.usage["generated_tokens"]

    alone = [steps(LockstepBatcher(backend).run([job(i)])[0]) for i in range(3)]
    rows: list[int] = []  # rows of each decode step's forward pass
    forward = backend.model.forward
    backend.model.forward = lambda *a, **kw: (kw.get("logits_to_keep") == 1 and rows.append(kw["input_ids"].shape[0])
                                              or forward(*a, **kw))
    got: dict[int, tuple] = {}
    handed = []

    def take(block):
        # the first search at once, the other two once the first has made a call
        if not handed:
            handed.append(0)
            return [(job(0), None, lambda r, e: got.__setitem__(0, r if e is None else e))]
        if len(handed) == 1 and rows:
            handed.extend([1, 2])
            return [(job(i), None, lambda r, e, i=i: got.__setitem__(i, r if e is None else e)) for i in (1, 2)]
        return None if len(handed) == 3 else []

    LockstepBatcher(backend, continuous=continuous).serve(take)
    assert sorted(got) == [0, 1, 2]
    assert [steps(got[i]) for i in range(3)] == alone
    assert rows[0] == 8 and max(rows) > 8  # the first search's 8 rows decoded alone at first, then beside others'

