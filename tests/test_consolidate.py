"""The consolidation's defects, each with a test that fails on commit 305ee37: planning at expected
row cost, MCTS terminals backed up once, one rule for Monte Carlo values, tree provenance and the
test-split refusal, option typos as one-line errors, and per-row random streams (a tree does not
depend on its batch-mates)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_same_tree

from sharpen.backends.base import SamplingParams
from sharpen.backends.hf import HFBackend
from sharpen.core.budget import Budget
from sharpen.core.errors import ConfigError
from sharpen.core.meter import UsageMeter
from sharpen.core.tasks import load_task
from sharpen.core.tree import Tree
from sharpen.search.algorithms import mcts
from sharpen.search.algorithms.mcts import step_children
from sharpen.search.collect import search_problems
from sharpen.search.credit import mc_values
from sharpen.search.process import LMProcess
from sharpen.search.scorers import make_scorer
from sharpen.search.toy import DistanceScorer, RandomWalkProcess, make_problems
from sharpen.train.data import load_dataset_dir

TASK_ARGS = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}


# -- 1. planning at the expected cost of a row ---------------------------------------------------
class LongMaxWalk(RandomWalkProcess):
    """The toy walk with a step allowed up to 24 tokens, though each step costs 1: a real process
    whose rows cost far less than their maximum, as language-model steps do."""

    def __init__(self) -> None:
        super().__init__(horizon=8, early_stop=False)
        self.step_tokens = 24


def test_expansion_gets_k_rows_when_the_budget_covers_them_at_expected_cost():
    proc = LongMaxWalk()
    widths = []
    for i, p in enumerate(make_problems(10, seed=3, horizon=8)):
        tree = mcts(proc, DistanceScorer(proc), p, 120, seed=i, k=8)
        expanded = [n for n in tree.nodes if step_children(tree, n.id)]
        widths += [len(step_children(tree, n.id)) for n in expanded[1:]]  # after the first measured call
        assert tree.usage["generated_tokens"] <= 120 + tree.usage["overshoot_bound"]
        assert tree.usage["overshoot"] == max(0, tree.usage["generated_tokens"] - 120)
    # at the worst case (24 + 1 per row) a budget of 120 buys at most 4 rows per expansion
    assert widths and max(widths) == 8
    assert sum(w == 8 for w in widths) >= len(widths) // 2


def test_budget_plans_at_measured_cost_and_bounds_the_overshoot():
    meter = UsageMeter()
    b = Budget(meter, 200, prior={"step": 8})
    assert b.rows(8, 24, "step") == 8  # the prior: 8 rows x 8 tokens fit in 200
    meter.record(0, 8 * 3, 0.0)  # the rows cost 3 tokens each
    assert b.expected("step", 24) == pytest.approx((8 + 24) / 9)
    assert b.fit(100, b.expected("step", 24)) == int(176 // ((8 + 24) / 9))
    unknown = Budget(UsageMeter(), 200)
    assert unknown.expected("answer", 32) == 32  # no prior: the maximum
    assert unknown.rows(8, 32, "answer") == 6 and unknown.max_call_tokens == 6 * 32


def test_lm_process_row_prior_comes_from_the_worked_examples(tiny_model_dir):
    task = load_task("gym:chain_sum", TASK_ARGS)
    proc = LMProcess(HFBackend(tiny_model_dir, max_batch=8), task, step_tokens=24, rollout_tokens=32)
    prior = proc.new_tree(task.problems("test", 1)[0], seed=0).meta["row_prior"]
    assert 1 <= prior["step"] < 24 and prior["step"] < prior["answer"] <= 32


# -- 2. MCTS backs a terminal up once, then closes it --------------------------------------------
def test_mcts_never_reselects_a_finished_terminal():
    proc = RandomWalkProcess(horizon=4, p_good=0.9, early_stop=True)
    for i, p in enumerate(make_problems(20, seed=5, horizon=4)):
        tree = mcts(proc, DistanceScorer(proc), p, 400, seed=i, k=2, max_iters=200)
        visits = [n.visits for n in tree.nodes if n.terminal]
        assert visits and max(visits) <= 1, visits
        # the root's visits are the evaluated nodes below it: nothing is backed up for free
        evaluated = sum(1 for n in tree.nodes if n.parent is not None and n.visits and n.score is not None)
        assert tree.root.visits == evaluated


# -- 4. one rule: only oracle scores are Monte Carlo values ---------------------------------------
def _scored_tree(scorer: str | None) -> Tree:
    t = Tree(problem_id="p", question="What is 1 + 2?", prompt="Q\n", scorer=scorer, split="train")
    t.add(0, step="1 + 2 = 3", score=0.9)
    t.add(0, step="1 + 2 = 4", score=0.1)
    return t


def test_only_oracle_scores_are_monte_carlo_values():
    assert mc_values(_scored_tree("oracle:4")) == {1: 0.9, 2: 0.1}
    for guess in ("self", "prm:/x", "rollout:4", None):
        assert mc_values(_scored_tree(guess)) == {}, guess


def _write_trees(path: Path, trees: list[Tree]) -> Path:
    path.write_text("".join(json.dumps(t.to_dict()) + "\n" for t in trees))
    return path


def _sharpen(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from sharpen.cli import main; main()", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_cli_build_makes_no_pairs_from_self_scores(tmp_path):
    trees = _write_trees(tmp_path / "t.jsonl", [_scored_tree("self")])
    r = _sharpen("build", "pairs", "--trees", str(trees), "--out", str(tmp_path / "pairs"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "'rows': 0" in r.stdout


# -- 5. provenance: split, scorer, algorithm; build refuses the test split ------------------------
def test_trees_record_provenance_and_build_refuses_test_split(tiny_model_dir, tmp_path):
    task = load_task("gym:chain_sum", TASK_ARGS)
    proc = LMProcess(HFBackend(tiny_model_dir, max_batch=8), task, temperature=1.0, step_tokens=4,
                     rollout_tokens=8, max_depth=2)
    trees = search_problems(proc, make_scorer("rollout:1", proc), "bon", task.problems("test", 2), 24, split="test",
                            scorer_spec="rollout:1")
    assert all((t.algo, t.scorer, t.split) == ("bon", "rollout:1", "test") for t in trees)
    path = _write_trees(tmp_path / "trees.jsonl", trees)
    for kind in ("pairs", "labels", "traces"):
        out = tmp_path / kind
        r = _sharpen("build", kind, "--trees", str(path), "--out", str(out), cwd=tmp_path)
        assert r.returncode == 2 and "test-split" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()
    r = _sharpen("build", "traces", "--trees", str(path), "--out", str(tmp_path / "ok"), "--allow-test-split",
                 cwd=tmp_path)
    assert r.returncode == 0, r.stderr


# -- 6. option typos are one-line errors, before any work -----------------------------------------
def test_misspelt_algorithm_option_is_a_config_error_everywhere(tmp_path):
    from sharpen.loop.config import validate

    with pytest.raises(ConfigError, match="no option 'kk'"):
        mcts(RandomWalkProcess(), None, make_problems(1)[0], 10, seed=0, kk=3)
    with pytest.raises(ConfigError, match="collect: .*no option 'rollouts'"):
        validate({"collect": {"algo": "mcts", "args": {"rollouts": 4}}})
    with pytest.raises(ConfigError, match="c_puct"):
        validate({"collect": {"algo": "mcts", "args": {"c_puct": "lots"}}})
    r = _sharpen("search", "--model", str(tmp_path / "none"), "--arg", "kk=3", "--n", "1", cwd=tmp_path)
    assert r.returncode == 2 and "no option 'kk'" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "runs").exists()


# -- 10. per-row random streams: a tree does not depend on its batch-mates ------------------------
def test_a_row_draws_the_same_alone_or_among_others(tiny_backend):
    p = SamplingParams(n=3, temperature=1.0, max_tokens=12)
    alone = tiny_backend.generate(["What is 3 + 4?\n"], p, seeds=[42])[0]
    crowd = tiny_backend.generate(["1 + 1 =", "What is 3 + 4?\n", "State the final answer: 9 - 4 ="], p,
                                  seeds=[7, 42, 9])[1]
    assert [c.token_ids for c in alone] == [c.token_ids for c in crowd]
    assert len({tuple(c.token_ids) for c in alone}) > 1  # the samples of one prompt differ


def _no_time(tree: Tree) -> dict:
    """The tree without wall time and cached tokens: both record how the computation was shared (a
    prefix prefilled once for many rows is counted for the batch, as cached tokens), not the tree.
    Prompt and forward tokens stay: a search is charged what its calls cost alone."""
    d = tree.to_dict()
    d["usage"] = {k: v for k, v in d["usage"].items() if k not in ("seconds", "cached_tokens")}
    return d


@pytest.mark.parametrize("algo,scorer", [("mcts", "rollout:1"), ("pf", "self"), ("vote", None)])
def test_tree_is_the_same_searched_alone_or_in_a_batch_of_many(tiny_model_dir, algo, scorer):
    task = load_task("gym:chain_sum", TASK_ARGS)
    problems = task.problems("test", 12)

    def run(ps, parallel, max_batch):
        proc = LMProcess(HFBackend(tiny_model_dir, max_batch=max_batch), task, temperature=1.0, step_tokens=5,
                         rollout_tokens=10, max_depth=3)
        return search_problems(proc, make_scorer(scorer, proc), algo, ps, 60, seed=3, parallel=parallel)

    crowd = run(problems, parallel=12, max_batch=64)
    for i in (0, 7):
        alone = run([problems[i]], parallel=1, max_batch=4)[0]
        assert_same_tree(_no_time(alone), _no_time(crowd[i]))


# -- duplicate siblings (issue 14, item 8) --------------------------------------------------------
def test_merge_duplicates_keeps_one_node_per_distinct_step(tiny_model_dir):
    task = load_task("gym:chain_sum", TASK_ARGS)
    problem = task.problems("test", 1)[0]

    def expand(merge: bool):
        proc = LMProcess(HFBackend(tiny_model_dir, max_batch=16), task, temperature=0.05, step_tokens=3,
                         merge_duplicates=merge)
        tree = proc.new_tree(problem, seed=0)
        return tree, proc.expand(tree, [0], 12)[0]

    plain, kids = expand(False)
    merged, landed = expand(True)
    texts = [(" ".join(plain.nodes[c].step.split()), plain.nodes[c].terminal) for c in kids]
    assert len(set(texts)) < len(texts)  # the plain expansion holds duplicates (low temperature)
    assert len(landed) == len(set(texts)) == len(merged.root.children)
    counts = {(" ".join(merged.nodes[c].step.split()), merged.nodes[c].terminal): merged.nodes[c].meta.get("count", 1)
              for c in landed}
    assert counts == {t: texts.count(t) for t in set(texts)}  # every sample counted on its node
    assert sum(merged.nodes[c].prior for c in landed) == pytest.approx(1.0)


def test_cli_build_pairs_adds_whole_solution_pairs(tmp_path):
    from test_data import two_level

    trees = _write_trees(tmp_path / "t.jsonl", [two_level()])
    r = _sharpen("build", "pairs", "--trees", str(trees), "--out", str(tmp_path / "pairs"), "--trace-pairs", "2",
                 cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    kinds = load_dataset_dir(tmp_path / "pairs")["recipe"]
    assert kinds.count("trace-pairs") == 2 and kinds.count("mcts-dpo/best_worst") >= 1
    r = _sharpen("build", "pairs", "--trees", str(trees), "--out", str(tmp_path / "bad"), "--trace-pairs", "-1",
                 cwd=tmp_path)
    assert r.returncode == 2 and "--trace-pairs" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
