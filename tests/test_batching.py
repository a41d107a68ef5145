"""Lockstep batching: many searches share batched backend calls, deterministically, and each
search's budget counts only its own tokens."""

import pytest
from conftest import assert_same_tree

from sharpen.backends.hf import HFBackend
from sharpen.core.tasks import load_task
from sharpen.search.collect import search_problems
from sharpen.search.process import LMProcess
from sharpen.search.scorers import make_scorer


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    task = load_task("gym:chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1})
    return task, task.problems("test", 5)


def _search(tiny_model_dir, task, problems, algo, scorer, parallel, batch_meter=None):
    backend = HFBackend(tiny_model_dir, seed=0, max_batch=64)
    process = LMProcess(backend, task, temperature=1.0, step_tokens=5, rollout_tokens=10, max_depth=3)
    sc = make_scorer(scorer, process, collect=True)
    trees = search_problems(process, sc, algo, problems, 60, seed=1, parallel=parallel, batch_meter=batch_meter)
    return trees, backend


def _no_time(tree):
    """The tree without wall time and cached tokens: both record how the computation was shared
    (cached tokens are what a shared prefill saved, counted for the batch), not the tree."""
    d = tree.to_dict()
    d["usage"] = {k: v for k, v in d["usage"].items() if k not in ("seconds", "cached_tokens")}
    return d


@pytest.mark.parametrize("algo,scorer", [("mcts", "self"), ("pf", "rollout:2"), ("vote", "none"), ("beam", "oracle:2")])
def test_parallel_search_is_deterministic_and_within_budget(tiny_model_dir, setup, algo, scorer):
    """Searched 4 at a time or one by one, every problem gets the same tree, usage included
    (prompt and forward tokens too)."""
    from sharpen.core.meter import UsageMeter

    task, problems = setup
    batches = UsageMeter()
    a, backend = _search(tiny_model_dir, task, problems[:4], algo, scorer, parallel=4, batch_meter=batches)
    b, _ = _search(tiny_model_dir, task, problems[:4], algo, scorer, parallel=1)
    for x, y in zip(a, b, strict=True):
        assert_same_tree(_no_time(x), _no_time(y))
    for t in a:
        spent = t.usage["generated_tokens"]
        assert 0 < spent <= 60 + 10  # budget + one row's max tokens
    # the per-search meters add up to what the real backend generated and was charged for prompts
    assert sum(t.usage["generated_tokens"] for t in a) == backend.meter.total.generated_tokens
    assert sum(t.usage["prompt_tokens"] for t in a) == backend.meter.total.prompt_tokens
    # calls were merged: fewer backend calls than searches made
    assert backend.meter.total.calls < sum(t.usage["calls"] for t in a)
    # the batch level holds what shared prefills saved, once; no tree carries a share of it
    assert batches.total.prompt_tokens == backend.meter.total.prompt_tokens
    assert 0 < batches.total.cached_tokens < batches.total.prompt_tokens
    assert all(t.usage["cached_tokens"] == 0 for t in a)


def _usage(tree):
    return {k: v for k, v in tree.usage.items() if k not in ("seconds", "cached_tokens")}


def test_a_search_is_charged_its_own_prompt_tokens_times_its_rows_whoever_shares_its_calls(tiny_model_dir, setup):
    """A merged call charges each search its own prompts' tokens times its rows, not a share of the
    call by prompt count: a problem with a long question costs the same beside short ones as alone."""
    from sharpen.core.tasks import Problem
    from sharpen.search.batching import LockstepBatcher, fork_search
    from sharpen.search.registry import get_algorithm

    task, problems = setup
    backend = HFBackend(tiny_model_dir, seed=0, max_batch=64)
    process = LMProcess(backend, task, temperature=1.0, step_tokens=5, rollout_tokens=10, max_depth=3)
    vote = get_algorithm("vote").fn
    long = Problem("long", problems[0].question + " Think about it with care, step by step. " * 6, problems[0].answer)
    searched = [long, problems[1], problems[2]]

    def job(p, seed):
        return lambda proxy: vote(fork_search(process, None, proxy)[0], None, p, 40, seed=seed)

    alone = [_usage(LockstepBatcher(backend).run([job(p, 10 + i)])[0]) for i, p in enumerate(searched)]
    before = backend.meter.snapshot()
    batcher = LockstepBatcher(backend)
    together = batcher.run([job(p, 10 + i) for i, p in enumerate(searched)])
    assert [_usage(t) for t in together] == alone
    used = backend.meter.snapshot() - before
    assert sum(t.usage["prompt_tokens"] for t in together) == used.prompt_tokens == batcher.meter.total.prompt_tokens
    assert batcher.meter.total.cached_tokens > 0  # the worked examples' prefix, prefilled once for all rows


@pytest.mark.parametrize("continuous", [False, True])
def test_a_call_that_fails_fails_only_its_own_search(tiny_model_dir, setup, continuous):
    """A backend call that raises for one search's prompt, merged with others' calls: that search
    gets the exception, the others finish with the trees they get alone."""
    from sharpen.search.batching import LockstepBatcher, fork_search
    from sharpen.search.registry import get_algorithm

    task, problems = setup
    backend = HFBackend(tiny_model_dir, seed=0, max_batch=64)
    process = LMProcess(backend, task, temperature=1.0, step_tokens=5, rollout_tokens=10, max_depth=3)
    vote = get_algorithm("vote").fn

    def job(i):
        def run(proxy):
            try:
                return vote(fork_search(process, None, proxy)[0], None, problems[i], 40, seed=10 + i)
            except RuntimeError as e:
                return e
        return run

    alone = {i: _no_time(LockstepBatcher(backend).run([job(i)])[0]) for i in (0, 2, 3)}
    bad = problems[1].question
    generate, decode = backend.generate, backend.continuous

    def check(texts):
        if any(bad in t for t in texts):
            raise RuntimeError("this prompt cannot be served")

    backend.generate = lambda prompts, params, seeds=None: check(prompts) or generate(prompts, params, seeds=seeds)
    backend.continuous = lambda params, first, admit, deliver: (check([t for j in first for t in j.texts])
                                                                 or decode(params, first, admit, deliver))
    got = LockstepBatcher(backend, continuous=continuous).run([job(i) for i in range(4)])
    assert isinstance(got[1], RuntimeError)
    for i in (0, 2, 3):
        assert not isinstance(got[i], BaseException), got[i]
        assert_same_tree(_no_time(got[i]), alone[i])


@pytest.mark.parametrize("continuous", [False, True])
def test_continuous_admission_a_search_joins_a_running_one_and_gets_the_tree_it_gets_alone(tiny_model_dir, setup,
                                                                                           continuous):
    """`LockstepBatcher.serve` (what `sharpen serve` runs): a search handed over while another is
    running joins it at the next merged call (with `continuous`, at the next decode step of the call
    running), their rows share forward passes, and each gets the tree it gets searched alone."""
    from sharpen.search.batching import LockstepBatcher, fork_search
    from sharpen.search.registry import get_algorithm

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

