"""`oracle:k:prover=<policy>`: Monte Carlo step values from a second policy's completions (PAV's
prover), while the searching policy writes the steps."""

import pytest
from conftest import build_tiny_model

from sharpen.backends.hf import HFBackend
from sharpen.core.errors import ConfigError, ModelError
from sharpen.core.tasks import load_task
from sharpen.search.collect import search_problems
from sharpen.search.process import LMProcess
from sharpen.search.scorers import make_scorer


@pytest.fixture(scope="module")
def task_problems():
    task = load_task("gym:chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1})
    return task, task.problems("train", 4)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    return build_tiny_model(str(tmp_path_factory.mktemp("prover")), seed=7)


def _collect(model, task, problems, scorer, parallel=1):
    backend = HFBackend(model, seed=0, max_batch=64)
    calls = []  # (stop_at, generated tokens) of each call the policy's backend ran
    generate = backend.generate

    def spy(prompts, params, seeds=None):
        out = generate(prompts, params, seeds)
        calls.append((params.stop_at, sum(c.num_tokens for comps in out for c in comps)))
        return out

    backend.generate = spy
    process = LMProcess(backend, task, temperature=1.0, step_tokens=5, rollout_tokens=10, max_depth=3)
    sc = make_scorer(scorer, process, collect=True)
    trees = search_problems(process, sc, "omega", problems, 150, seed=1, parallel=parallel)
    return trees, backend, sc, calls


def _nodes(trees):
    return [[(n.step, n.score, n.meta.get("rollouts")) for n in t.nodes] for t in trees]


def test_a_prover_equal_to_the_policy_gives_the_trees_of_the_plain_oracle(tiny_model_dir, task_problems):
    task, problems = task_problems
    plain, _, _, _ = _collect(tiny_model_dir, task, problems, "oracle:3")
    same, _, sc, calls = _collect(tiny_model_dir, task, problems, f"oracle:3:prover={tiny_model_dir}")
    assert sc.prover is not None and {kind for kind, _ in calls} == {"step"}  # every rollout went to the prover
    assert _nodes(same) == _nodes(plain)
    assert [t.usage["generated_tokens"] for t in same] == [t.usage["generated_tokens"] for t in plain]
    assert any(n.meta.get("rollouts") for t in plain for n in t.nodes)  # inner nodes were valued


@pytest.mark.parametrize("parallel", [1, 3])
def test_another_prover_writes_the_rollouts_and_its_tokens_count(tiny_model_dir, other_model, task_problems, parallel):
    task, problems = task_problems
    plain, _, _, _ = _collect(tiny_model_dir, task, problems, "oracle:3")
    trees, _, sc, calls = _collect(tiny_model_dir, task, problems, f"oracle:3:prover={other_model}", parallel)
    again, _, _, _ = _collect(tiny_model_dir, task, problems, f"oracle:3:prover={other_model}", parallel)
    assert _nodes(trees) == _nodes(again)  # deterministic, batched or not
    assert {kind for kind, _ in calls} == {"step"}  # the policy wrote the steps only
    prover = sc.prover.backend.meter.total
    assert prover.generated_tokens > 0
    # the search budgets metered the prover's tokens beside the policy's, and stayed within budget
    assert sum(t.usage["generated_tokens"] for t in trees) == sum(n for _, n in calls) + prover.generated_tokens
    assert all(t.usage["generated_tokens"] <= 150 + t.usage["overshoot_bound"] for t in trees)
    # the prover's completions differ from the policy's: other rollout tokens, other trees
    assert _nodes(trees) != _nodes(plain)
    if parallel > 1:  # the searches' prover rows were merged into shared calls
        _, _, alone, _ = _collect(tiny_model_dir, task, problems, f"oracle:3:prover={other_model}")
        assert prover.calls < alone.prover.backend.meter.total.calls


def test_a_bad_prover_is_one_line_and_the_oracle_is_still_collect_only(tiny_model_dir, task_problems, tmp_path):
    task, _ = task_problems
    process = LMProcess(HFBackend(tiny_model_dir, seed=0), task, step_tokens=5, rollout_tokens=10, max_depth=3)
    with pytest.raises(ModelError, match="oracle prover: cannot load .*fix: oracle:<k>:prover="):
        make_scorer(f"oracle:2:prover={tmp_path / 'nothing-here'}", process, collect=True)
    with pytest.raises(ConfigError, match="--collect"):
        make_scorer(f"oracle:2:prover={tmp_path / 'nothing-here'}", process, collect=False)


def test_search_skips_the_problems_a_prover_trained_on(tiny_model_dir, tmp_path):
    from sharpen import api

    task_args = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
    first = load_task("gym:chain_sum", task_args).problems("train", 5)
    trees, m = api.search(tiny_model_dir, "gym:chain_sum", "vote", None, 20, n=2, collect=True, task_args=task_args,
                          skip=3, out=tmp_path / "s")
    assert [t.problem_id for t in trees] == [p.id for p in first[3:5]]
    assert '"skip": 3' in (tmp_path / "s" / "config.json").read_text()
    with pytest.raises(ConfigError, match="--skip must be >= 0"):
        api.search(tiny_model_dir, "gym:chain_sum", "vote", None, 20, n=2, collect=True, task_args=task_args, skip=-1)
