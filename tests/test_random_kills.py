"""A two-round `sharpen run` on the tiny model, killed with SIGKILL at 20 seeded random moments over
collect, build, train and eval and resumed after each, ends exactly where the uninterrupted run ends
(benchmarks/random_kills.py; slow: `pytest -m slow tests/test_random_kills.py`). Each resume bug the
harness found has a fast test of its own here."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml


def harness():
    """benchmarks/random_kills.py, as a module."""
    spec = importlib.util.spec_from_file_location("random_kills", Path(__file__).parents[1] / "benchmarks" / "random_kills.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(path: Path, model: str) -> Path:
    """mcts-dpo for 2 rounds: MCTS with oracle rollouts in lockstep groups of 2, half of round 2's step
    rows from the starting model (collect.reference_share), DPO."""
    cfg = {"name": "kills", "recipe": "mcts-dpo", "model": model, "task": "gym:chain_sum", "rounds": 2, "seed": 3,
           "task_args": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
           "collect": {"algo": "mcts", "scorer": "oracle:2", "problems": 4, "budget": 200, "step_tokens": 6,
                       "rollout_tokens": 12, "max_depth": 3, "temperature": 1.0, "strict_format": False,
                       "parallel": 2, "reference_share": 0.5},
           "build": {"min_margin": 0.01},
           "train": {"max_steps": 4, "per_device_train_batch_size": 2, "learning_rate": 1e-3},
           "eval": {"n": 4, "samples": 2, "max_tokens": 8, "batch": 2}}
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_random_kills_end_where_the_uninterrupted_run_ends(tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path / "cfg.yaml", tiny_model_dir)
    r = harness().random_kills(config, tmp_path / "work", kills=20, seed=0, timeout=900)
    assert not r["differences"], "\n".join(r["differences"])
    assert r["kills"] == 20, r["events"]  # no process finished before its moment
    hit = {name.rsplit("/", 1)[1] for e in r["events"] for name in e.get("killed_in", [])}
    assert hit == {"collect", "build", "train", "eval"}, r["events"]
    # the trained policies really trained: their weights are not the starting model's
    from conftest import changed_tensors

    assert changed_tensors(tiny_model_dir, str(tmp_path / "work" / "ref" / "round-2" / "train" / "policy" / "merged"))


def test_a_resumed_collection_counts_the_step_rows_of_the_trees_it_read(tmp_path, tiny_model_dir):
    """collect.reference_share: collect/metrics.json's `step_rows` (step rows sampled by the policy and
    by the reference model) covers every tree of the round, those a killed process wrote too."""
    from conftest import build_tiny_model

    from sharpen.loop.config import validate
    from sharpen.loop.runner import LoopRunner, prepare_run_dir

    policy = build_tiny_model(str(tmp_path / "policy"), seed=1)  # round 2 collects with a trained policy
    cfg = validate({"name": "mix", "model": tiny_model_dir, "rounds": 2, "seed": 3,
                    "task_args": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
                    "collect": {"algo": "mcts", "scorer": "oracle:2", "problems": 4, "budget": 120, "step_tokens": 6,
                                "rollout_tokens": 12, "max_depth": 3, "temperature": 1.0, "strict_format": False,
                                "parallel": 2, "reference_share": 0.5},
                    "eval": {"n": 4}})

    def collect(name: str, written: bytes = b"") -> tuple[dict, bytes]:
        run = tmp_path / name
        runner = LoopRunner(prepare_run_dir(cfg, run, resume=False), run)
        d = run / "round-2" / "collect"
        if written:  # a process killed after the first lockstep group
            d.mkdir(parents=True)
            (d / "trees.jsonl").write_bytes(written)
        runner.collect(2, policy)
        trees = re.sub(rb'"seconds": [0-9.e+-]+', b'"seconds": 0', (d / "trees.jsonl").read_bytes())
        return json.loads((d / "metrics.json").read_text())["step_rows"], trees

    rows, trees = collect("whole")
    assert rows["policy"] > 0 and rows["reference"] > 0
    first = (tmp_path / "whole" / "round-2" / "collect" / "trees.jsonl").read_bytes().splitlines(keepends=True)[:2]
    assert collect("resumed", b"".join(first)) == (rows, trees)
