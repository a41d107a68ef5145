"""Adding an algorithm is one file: a tiny example algorithm, defined here in a module of its own,
runs through `sharpen search`, `sharpen sweep` and a run config's `collect.algo`, and a misspelt
option of it is a one-line error (exit 2). The module is loaded through `SHARPEN_PLUGINS`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sharpen.core.errors import ConfigError
from sharpen.search.registry import algorithms, get_algorithm, parse_scorer, scorer_grammar

PLUGIN = '''
"""A tiny example algorithm: sample whole solutions until the budget is spent, answer with the first."""
from pydantic import Field

from sharpen.search.registry import Options, algorithm
from sharpen.search.algorithms.bon import sample_solutions
from sharpen.search.algorithms.common import finish, open_search


class FirstOptions(Options):
    batch: int = Field(2, ge=1, description="solutions per call")


@algorithm("first", FirstOptions, needs_scorer=False)
def first_answer(process, scorer, problem, budget_tokens, seed, **options):
    """The first sampled solution's answer."""
    o = FirstOptions.parse(options, "algorithm first")
    tree, budget = open_search(process, problem, budget_tokens, seed, "first")
    solutions = sample_solutions(process, None, tree, budget, o.batch)
    return finish(process, tree, budget, solutions[0] if solutions else None)
'''

TASK = ["--task", "gym:chain_sum", "--task-arg", "min_terms=2", "--task-arg", "max_terms=2",
        "--task-arg", "min_digits=1", "--task-arg", "max_digits=1"]


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("plugin")
    (d / "first_algo.py").write_text(PLUGIN)
    return {**os.environ, "PYTHONPATH": f"{d}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "SHARPEN_PLUGINS": "first_algo", "HF_HUB_OFFLINE": "1"}


def sharpen(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sharpen", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_example_algorithm_runs_through_search_sweep_and_a_run_config(plugin_env, tiny_model_dir, tmp_path):
    r = sharpen(["algos"], plugin_env, tmp_path)
    assert r.returncode == 0 and "first" in r.stdout and "batch=2" in r.stdout, r.stderr

    r = sharpen(["search", "--algo", "first", "--model", tiny_model_dir, *TASK, "--n", "3", "--budget", "20",
                 "--step-tokens", "4", "--rollout-tokens", "8", "--arg", "batch=1", "--out", "s", "--json"],
                plugin_env, tmp_path)
    assert r.returncode == 0, r.stderr
    trees = [json.loads(x) for x in (tmp_path / "s" / "trees.jsonl").read_text().splitlines()]
    assert len(trees) == 3 and all(t["algo"] == "first" and t["split"] == "test" for t in trees)
    assert all(len(t["nodes"]) > 1 for t in trees)

    r = sharpen(["sweep", "--algos", "first,vote", "--budgets", "16,24", "--model", tiny_model_dir, *TASK,
                 "--n", "2", "--rollout-tokens", "8", "--arg", "first.batch=1", "--out", "sw"], plugin_env, tmp_path)
    assert r.returncode == 0, r.stderr
    results = json.loads((tmp_path / "sw" / "sweep.json").read_text())["results"]
    assert sorted((m["algo"], m["budget"]) for m in results) == [("first", 16), ("first", 24), ("vote", 16), ("vote", 24)]

    cfg = {"name": "first", "recipe": "rft", "model": tiny_model_dir, "task": "gym:chain_sum",
           "task_args": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}, "rounds": 1,
           "collect": {"algo": "first", "args": {"batch": 2}, "scorer": "none", "problems": 2, "budget": 16,
                       "rollout_tokens": 8, "strict_format": False},
           "train": {"max_steps": 1, "per_device_train_batch_size": 2}, "eval": {"n": 2, "samples": 0, "max_tokens": 4}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    r = sharpen(["run", "cfg.yaml", "--out", "run"], plugin_env, tmp_path)
    assert r.returncode == 0, r.stderr
    collected = [json.loads(x) for x in (tmp_path / "run/round-1/collect/trees.jsonl").read_text().splitlines()]
    assert len(collected) == 2 and all(t["algo"] == "first" and t["split"] == "train" for t in collected)


@pytest.mark.parametrize("args", [
    ["search", "--algo", "first", "--arg", "bacth=2"],
    ["sweep", "--algos", "first", "--arg", "first.bacth=2"],
    ["search", "--algo", "first", "--arg", "batch=0"],
])
def test_misspelt_option_of_the_example_is_one_line_exit_2(plugin_env, tiny_model_dir, tmp_path, args):
    r = sharpen([*args, "--model", tiny_model_dir, "--n", "1"], plugin_env, tmp_path)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "algorithm first" in lines[0] and "fix:" in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "runs").exists()


def test_misspelt_option_in_a_run_config_fails_before_any_work(plugin_env, tiny_model_dir, tmp_path):
    cfg = {"model": tiny_model_dir, "collect": {"algo": "first", "args": {"bacth": 2}, "scorer": "none"}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    r = sharpen(["run", "cfg.yaml", "--out", "run"], plugin_env, tmp_path)
    assert r.returncode == 2 and "no option 'bacth'" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "run").exists()


def test_builtin_registry_and_scorer_specs():
    assert {"bon", "vote", "weighted", "beam", "mcts", "pf"} <= set(algorithms())
    assert not get_algorithm("vote").needs_scorer and get_algorithm("mcts").needs_scorer
    spec = parse_scorer("rollout:3:pool")
    assert (spec.name, spec.options.k, spec.options.pool) == ("rollout", 3, True)
    assert parse_scorer("prm:/a/b:c").options.path == "/a/b:c"
    assert parse_scorer("oracle").options.k == 4
    assert scorer_grammar()["prm"] == "prm:<path>"
    for bad in ("rollout:x", "rollout:0", "mystery", "self:3", "prm"):
        with pytest.raises(ConfigError):
            parse_scorer(bad)


def test_row_counts_are_bounded_by_the_budget_for_the_api_and_the_server():
    """A count option (particles, beams, samples, k, batch) above what the budget can pay for, at a
    token a row, or above the fixed cap, is a one-line ConfigError from the one check that the API
    (`sharpen search`, `sweep`) and the server both run, before any model is loaded."""
    from types import SimpleNamespace

    from sharpen import api
    from sharpen.serve import SearchService, ServeConfig

    for algo, raw in [("pf", {"n": 10**9}), ("beam", {"width": 4097}), ("mcts", {"k": 10**6}),
                      ("omega", {"samples": 10**9}), ("vote", {"batch": 10**9})]:
        with pytest.raises(ConfigError, match=r"less than or equal to 4096 \(fix: "):
            get_algorithm(algo).parse(raw)  # the fixed cap, whatever the budget
    assert get_algorithm("pf").parse({"n": 256}, 256).n == 256
    assert get_algorithm("beam").parse({"width": 16, "expansions": 16}, 256).width == 16
    with pytest.raises(ConfigError, match=r"option n=257 .* budget of 256 tokens .*\(fix: n <= 256, or a larger budget\)$"):
        get_algorithm("pf").parse({"n": 257}, 256)
    with pytest.raises(ConfigError, match=r"width=16 x expansions=17 = 272 rows .*\(fix: a product <= 256"):
        get_algorithm("beam").parse({"width": 16, "expansions": 17}, 256)

    with pytest.raises(ConfigError, match="option samples=300 ") as e:
        api.search(model="no-such-model", algo="omega", scorer="self", budget=256, n=1, options={"samples": 300})
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="option batch=300 "):
        api.sweep(["vote"], [512, 256], model="no-such-model", n=1, options={"vote": {"batch": 300}})

    # a scorer's row counts have the same fixed cap (its rollouts are paid from the search's budget)
    for spec in ("rollout:5000", "oracle:k=5000", "prm:x:batch=100000", "implicit:x:batch=100000", "pav:x:batch=100000"):
        with pytest.raises(ConfigError, match=r"less than or equal to 4096 \(fix: "):
            parse_scorer(spec)
    assert parse_scorer("rollout:4096").options.k == 4096
    with pytest.raises(ConfigError, match=r"scorer rollout: option k=300 .* budget of 256 tokens"):
        api.search(model="no-such-model", algo="beam", scorer="rollout:300", budget=256, n=1)

    service = SearchService(SimpleNamespace(backend=SimpleNamespace()), ServeConfig(), start=False)
    with pytest.raises(ConfigError, match=r"option batch=17 .*\(fix: batch <= 16, or a larger budget\)$"):
        service.check("vote", "none", 16, {"batch": 17})
    service.check("vote", "none", 16, {"batch": 16})
