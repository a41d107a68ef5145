"""Ray scale-out: a local Ray cluster, 2 actors, gets the very trees one process gets."""

import json
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("ray")
pytestmark = [pytest.mark.server, pytest.mark.integration]


def same_bytes(path) -> bytes:
    """The file's bytes with each tree's wall-clock `usage.seconds` set to 0: a measurement of time,
    the one field two runs of one process never share either."""
    return re.sub(rb'"seconds": [0-9.e+-]+', b'"seconds": 0', path.read_bytes())

TASK = ["--task-arg", "min_terms=2", "--task-arg", "max_terms=3", "--task-arg", "min_digits=1",
        "--task-arg", "max_digits=1"]


def sharpen(args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    return subprocess.run([sys.executable, "-m", "sharpen", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow  # the longest tests of the suite (90 s / 45 s idle); `pytest -m slow` runs them
def test_ray_actors_give_the_trees_of_one_process_byte_for_byte(tmp_path):
    common = ["search", "--model", "smollm2-135m", "--algo", "mcts", "--scorer", "rollout", "--arg", "k=2", *TASK,
              "--n", "4", "--budget", "24", "--step-tokens", "12", "--rollout-tokens", "16", "--max-depth", "4",
              "--temperature", "0.8", "--parallel", "2", "--seed", "3"]
    one = sharpen([*common, "--out", "one"], tmp_path)
    assert one.returncode == 0, one.stderr
    many = sharpen([*common, "--out", "ray", "--ray", "local", "--actors", "2"], tmp_path)
    assert many.returncode == 0, many.stderr
    a, b = same_bytes(tmp_path / "one" / "trees.jsonl"), same_bytes(tmp_path / "ray" / "trees.jsonl")
    trees = [json.loads(x) for x in a.decode().splitlines()]
    assert len(trees) == 4 and all(len(t["nodes"]) > 1 for t in trees)  # real searches, sampled (T=0.8)
    assert a == b
    # resume: a run that stopped after some problems finishes with the same file
    lines = a.splitlines(keepends=True)
    (tmp_path / "part").mkdir()
    (tmp_path / "part" / "trees.jsonl").write_bytes(b"".join(lines[:2]))
    again = sharpen([*common, "--out", "part", "--ray", "local", "--actors", "2"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert same_bytes(tmp_path / "part" / "trees.jsonl") == a


@pytest.mark.slow
def test_eval_on_ray_actors_gives_the_rows_of_one_process(tmp_path, tiny_model_dir):
    # 20 problems: two chunks (the CLI evaluates 16 problems per generate call), one per actor;
    # sampled rows (T=1.0) as well as greedy ones
    common = ["eval", "--model", tiny_model_dir, *TASK, "--n", "20", "--samples", "3", "--temperature", "1.0",
              "--max-tokens", "8", "--seed", "5"]
    one = sharpen([*common, "--out", "one"], tmp_path)
    assert one.returncode == 0, one.stderr
    many = sharpen([*common, "--out", "ray", "--ray", "local", "--actors", "2", "--json"], tmp_path)
    assert many.returncode == 0, many.stderr
    a = (tmp_path / "one" / "problems.jsonl").read_bytes()
    rows = [json.loads(x) for x in a.decode().splitlines()]
    assert len(rows) == 20 and all(len(r["samples"]) == 3 for r in rows)
    assert len({s["text"] for r in rows for s in r["samples"]}) > 20  # really sampled
    assert (tmp_path / "ray" / "problems.jsonl").read_bytes() == a
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads(many.stdout.strip().splitlines()[-1])
    assert m2["usage"]["generated_tokens"] == m1["usage"]["generated_tokens"] > 0  # summed over the actors
    assert {k: m2[k] for k in ("greedy", "pass@1", "pass@3", "majority@3")} == \
        {k: m1[k] for k in ("greedy", "pass@1", "pass@3", "majority@3")}
    # resume: a run that stopped inside the second chunk finishes with the same file
    (tmp_path / "part").mkdir()
    (tmp_path / "part" / "problems.jsonl").write_bytes(b"".join(a.splitlines(keepends=True)[:18]))
    again = sharpen([*common, "--out", "part", "--ray", "local", "--actors", "2"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "part" / "problems.jsonl").read_bytes() == a


TASK_ARGS = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1}


@pytest.fixture(scope="module")
def local_ray():
    """Ray in this process: `--ray local` starts it at the first call; shut down after the module."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    yield
    if ray.is_initialized():
        ray.shutdown()


def test_an_error_keeps_the_groups_that_finished_before_it(tmp_path, tiny_model_dir, local_ray):
    import ray

    from sharpen.api import load_model, load_task
    from sharpen.core.io import read_jsonl
    from sharpen.search.distributed import _threads, eval_on_ray, run_groups
    from sharpen.search.evaluate import EvalConfig, evaluate

    problems = load_task("gym:chain_sum", **TASK_ARGS).problems("test", 4, seed=5)
    cfg = EvalConfig(samples=2, temperature=1.0, max_tokens=6, seed=5, problems_per_call=2)
    path = tmp_path / "ray" / "problems.jsonl"
    second = [p.id for p in problems[2:]]

    def fail_once_written(path: str, ids: list[str]) -> None:  # a local function: Ray ships it by value
        import json
        import time

        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with open(path) as f:
                    if set(ids) <= {json.loads(x)["id"] for x in f if x.endswith("\n")}:
                        break
            except FileNotFoundError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the first group failed")

    fail = ray.remote(num_cpus=0)(fail_once_written)  # no CPU: the two actors hold them all
    c = cfg.model_dump()

    def call(actor, group):  # the first group fails, once the second one has finished
        return fail.remote(str(path), second) if group[0]["id"] == problems[0].id else actor.evaluate.remote(group, c)

    worker = (tiny_model_dir, cfg.seed, {"max_batch": 8}, "gym:chain_sum", TASK_ARGS, _threads())
    with pytest.raises(RuntimeError, match="the first group failed"):
        run_groups("local", 2, worker, problems, 2, "id", path, call)
    assert [r["id"] for r in read_jsonl(path)] == second  # written when it finished, kept after the error
    # resumed: the first group is evaluated, and the file is the one a single process writes
    eval_on_ray("local", 2, tiny_model_dir, "gym:chain_sum", TASK_ARGS, problems, cfg, path, batch=8)
    one = tmp_path / "one.jsonl"
    task = load_task("gym:chain_sum", **TASK_ARGS)
    evaluate(load_model(tiny_model_dir, seed=cfg.seed, max_batch=8), task, problems, cfg, out_jsonl=one)
    assert path.read_bytes() == one.read_bytes()


def test_search_on_ray_resumes_groups_cut_short(tmp_path, tiny_model_dir, local_ray):
    from sharpen import api
    from sharpen.search.process import SearchSettings

    settings = SearchSettings(temperature=1.0, step_tokens=4, rollout_tokens=8, max_depth=2, parallel=2, batch=8)
    kw = dict(model=tiny_model_dir, task="gym:chain_sum", algo="vote", scorer=None, budget=24, n=4, seed=3,
              settings=settings, task_args=TASK_ARGS)
    api.search(**kw, out=tmp_path / "one")
    a = (tmp_path / "one" / "trees.jsonl").read_bytes()
    lines = a.splitlines(keepends=True)
    assert len(lines) == 4
    # both groups (--parallel 2) cut short, each after its first problem, the later group's row first
    # (rows are appended as groups finish)
    (tmp_path / "part").mkdir()
    (tmp_path / "part" / "trees.jsonl").write_bytes(lines[2] + lines[0])
    api.search(**kw, out=tmp_path / "part", ray="local", actors=2)
    assert same_bytes(tmp_path / "part" / "trees.jsonl") == same_bytes(tmp_path / "one" / "trees.jsonl")


def test_run_config_cluster_section(tmp_path):
    from sharpen.loop.config import load_config, with_cluster

    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\ncluster: {address: local, actors: 3}\n")
    c = load_config(cfg).cluster
    assert (c.address, c.actors) == ("local", 3)
    assert load_config(cfg, {"cluster.actors": 4}).cluster.actors == 4
    assert with_cluster(load_config(cfg), "auto", None).cluster.model_dump() == {"address": "auto", "actors": 3}
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncluster: {address: local, actros: 2}\n")
    r = sharpen(["run", str(bad), "--out", "r"], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "cluster.actros" in r.stderr and "fix:" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # --actors alone needs a cluster to size
    bad.write_text("name: x\n")
    r = sharpen(["run", str(bad), "--out", "r", "--actors", "2"], tmp_path)
    assert r.returncode == 2 and "--actors needs a cluster" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # the longest tests of the suite (90 s / 45 s idle); `pytest -m slow` runs them
def test_run_on_ray_collects_and_evaluates_as_one_process(tmp_path, tiny_model_dir):
    import yaml

    cfg = {"name": "ray-run", "model": tiny_model_dir, "rounds": 1, "seed": 3,
           "task_args": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
           "collect": {"algo": "mcts", "scorer": "oracle", "problems": 4, "budget": 200, "step_tokens": 6,
                       "rollout_tokens": 12, "max_depth": 3, "temperature": 1.0, "strict_format": False,
                       "parallel": 2},
           "build": {"min_margin": 0.01}, "train": {"max_steps": 2, "per_device_train_batch_size": 2},
           "eval": {"n": 6, "samples": 2, "max_tokens": 8, "batch": 3}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    one = sharpen(["run", "cfg.yaml", "--out", "one"], tmp_path)
    assert one.returncode == 0, one.stderr
    many = sharpen(["run", "cfg.yaml", "--out", "ray", "--ray", "local", "--actors", "2"], tmp_path)
    assert many.returncode == 0, many.stderr
    assert yaml.safe_load((tmp_path / "ray" / "config.yaml").read_text())["cluster"] == {"address": "local",
                                                                                         "actors": 2}
    # collect and both evaluations (round 1's with the policy trained here) ran on the actors, same bytes
    for f in ("round-0/eval/problems.jsonl", "round-1/collect/trees.jsonl", "round-1/eval/problems.jsonl"):
        assert same_bytes(tmp_path / "ray" / f) == same_bytes(tmp_path / "one" / f), f
