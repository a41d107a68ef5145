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


def test_ray_actors_give_the_trees_of_one_process_byte_for_byte(tmp_path):
    common = ["search", "--model", "smollm2-135m", "--algo", "mcts", "--scorer", "rollout", "--arg", "k=2", *TASK,
              "--n", "6", "--budget", "40", "--step-tokens", "12", "--rollout-tokens", "16", "--max-depth", "4",
              "--temperature", "0.8", "--parallel", "2", "--seed", "3"]
    one = sharpen([*common, "--out", "one"], tmp_path)
    assert one.returncode == 0, one.stderr
    many = sharpen([*common, "--out", "ray", "--ray", "local", "--actors", "2"], tmp_path)
    assert many.returncode == 0, many.stderr
    a, b = same_bytes(tmp_path / "one" / "trees.jsonl"), same_bytes(tmp_path / "ray" / "trees.jsonl")
    trees = [json.loads(x) for x in a.decode().splitlines()]
    assert len(trees) == 6 and all(len(t["nodes"]) > 1 for t in trees)  # real searches, sampled (T=0.8)
    assert a == b
    # resume: a run that stopped after some problems finishes with the same file
    lines = a.splitlines(keepends=True)
    (tmp_path / "part").mkdir()
    (tmp_path / "part" / "trees.jsonl").write_bytes(b"".join(lines[:3]))
    again = sharpen([*common, "--out", "part", "--ray", "local", "--actors", "2"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert same_bytes(tmp_path / "part" / "trees.jsonl") == a
