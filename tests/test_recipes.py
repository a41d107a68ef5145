"""Each shipped recipe runs a round end to end on the tiny random model: it builds rows of the
dataset it trains on, and what it trains moves away from where it started.

The tiny model is random, so rows come from sampling a lot on an easy task: 1-digit `a + b` /
`a - b` (answers -9..18), lenient answers (`strict_format: false`, it writes no `Answer:` lines), and
oracle rollouts or many whole samples: about one sample in twenty is right, enough for verified
traces, step labels of both kinds and step pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import changed_tensors

from sharpen.data import load_dataset_dir
from sharpen.io import read_jsonl
from sharpen.loop.config import validate
from sharpen.loop.runner import LoopRunner, prepare_run_dir
from sharpen.tree import Tree

TASK_ARGS = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
MCTS = {"algo": "mcts", "scorer": "oracle:4", "problems": 8, "budget": 400}
VOTE = {"algo": "vote", "scorer": "none", "problems": 8, "budget": 384}  # 32 whole samples a problem


def _run(tmp_path: Path, model: str, recipe: str, collect: dict, rounds: int = 1) -> Path:
    cfg = validate({
        "name": recipe, "recipe": recipe, "model": model, "rounds": rounds, "seed": 3, "task_args": TASK_ARGS,
        "collect": {"step_tokens": 6, "rollout_tokens": 12, "max_depth": 2, "temperature": 1.0,
                    "strict_format": False, **collect},
        "train": {"max_steps": 2, "per_device_train_batch_size": 2},
        "eval": {"n": 2, "samples": 0, "max_tokens": 4},
    })
    run = tmp_path / "run"
    cfg = prepare_run_dir(cfg, run, resume=False)
    LoopRunner(cfg, run).run_all()
    return run


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _trees(run: Path, r: int) -> dict[str, Tree]:
    return {t.problem_id: t for t in map(Tree.from_dict, read_jsonl(run / f"round-{r}" / "collect" / "trees.jsonl"))}




def _trained_policy(run: Path, r: int, start: str, kind: str, trainer: str) -> str:
    """Round `r` trained a new policy from `start` on its own `kind` rows; returns the policy."""
    summary = _json(run / f"round-{r}" / "train" / "summary.json")
    rows = len(load_dataset_dir(run / f"round-{r}" / "data" / kind))
    assert summary["kind"] == kind and summary["rows"] == rows > 0 and summary["start"] == start
    policy = summary["model"]
    assert policy != start and Path(policy).is_relative_to(run)
    record = _json(Path(policy).parent / "sharpen_train.json")
    assert record["kind"] == trainer and record["config"]["model"] == start
    assert record["config"]["data"] == str(run / f"round-{r}" / "data" / kind)
    assert changed_tensors(start, policy), "the trained policy has its start's weights"
    # the next stage evaluated it
    assert _json(run / f"round-{r}" / "eval" / "metrics.json")["model"] == policy
    return policy


def test_step_dpo_round_builds_first_wrong_step_pairs_and_trains(tmp_path, tiny_model_dir):
    run = _run(tmp_path, tiny_model_dir, "step-dpo", MCTS)
    pairs = load_dataset_dir(run / "round-1" / "data" / "pairs")
    assert len(pairs) >= 1
    trees = _trees(run, 1)
    for row in pairs:
        t = trees[row["problem_id"]]
        chosen, rejected = t.nodes[row["chosen_node_id"]], t.nodes[row["rejected_node_id"]]
        assert row["recipe"] == "step-dpo" and row["chosen"] != row["rejected"]
        assert chosen.parent == rejected.parent == row["prefix_node_id"]  # the same prefix
        assert row["rejected_value"] <= 0.0 < row["chosen_value"]
        # the rejected step is wrong: a failed solution runs through it and no correct one does
        below = [n for n in t.terminals() if rejected.id in [m.id for m in t.path(n.id)]]
        assert any(n.correct is False for n in below) and not any(n.correct for n in below)
    _trained_policy(run, 1, tiny_model_dir, "pairs", "dpo")


def test_rft_round_builds_verified_traces_and_trains(tmp_path, tiny_model_dir):
    run = _run(tmp_path, tiny_model_dir, "rft", VOTE)
    traces = load_dataset_dir(run / "round-1" / "data" / "traces")
    assert len(traces) >= 1
    trees = _trees(run, 1)
    for row in traces:
        t = trees[row["problem_id"]]
        node = t.nodes[row["node_id"]]
        assert node.terminal and node.correct is True  # verified against the reference
        assert row["completion"] == t.text(node.id) and row["answer"] == node.answer
    _trained_policy(run, 1, tiny_model_dir, "traces", "sft")


def test_prm_guided_round_trains_a_prm_and_the_policy(tmp_path, tiny_model_dir):
    from sharpen.train.prm import PRMModel

    run = _run(tmp_path, tiny_model_dir, "prm-guided", MCTS)
    labels = load_dataset_dir(run / "round-1" / "data" / "labels")
    assert set(labels["label"]) == {0, 1}  # steps that keep the answer reachable and steps that do not
    assert all(row["label"] == int(row["value"] >= 0.5) for row in labels)
    summary = _json(run / "round-1" / "train" / "summary.json")
    prm = summary["prm"]
    record = _json(Path(prm).parent / "sharpen_train.json")
    assert record["kind"] == "prm" and record["config"]["model"] == tiny_model_dir
    assert record["config"]["data"] == str(run / "round-1" / "data" / "labels")
    # the backbone moved (the classification head is new, so it has no start to compare with)
    assert changed_tensors(tiny_model_dir, prm), "the trained PRM has the policy's weights"
    (scores,) = PRMModel.load(prm).score([labels[0]["prompt"]], [list(labels[0]["prefix_steps"]) + [labels[0]["step"]]])
    assert len(scores) == len(labels[0]["prefix_steps"]) + 1 and all(0.0 <= s <= 1.0 for s in scores)
    # the policy trains on the verified traces the search found
    _trained_policy(run, 1, tiny_model_dir, "traces", "sft")


@pytest.mark.parametrize("empty", [1, 2])
def test_prm_guided_round_without_labels_falls_back(tmp_path, tiny_model_dir, monkeypatch, empty):
    """A round that builds no step labels trains no PRM. The next round must not fail on the missing
    PRM: it searches with the last PRM there is (round 1's, when round 2 is empty) or, when no round
    has trained one yet, the configured scorer."""
    from sharpen import data

    build_labels = data.step_labels

    def no_labels_in_round_empty(trees, *args, **kwargs):
        ds = build_labels(trees, *args, **kwargs)
        return ds.select([]) if kwargs.get("round") == empty else ds

    monkeypatch.setattr(data, "step_labels", no_labels_in_round_empty)
    collect = {"algo": "mcts", "scorer": "oracle:4", "problems": 2, "budget": 200}
    run = _run(tmp_path, tiny_model_dir, "prm-guided", collect, rounds=empty + 1)

    def collected_with(r: int) -> str:
        return _json(run / f"round-{r}" / "collect" / "metrics.json")["scorer"]

    assert _json(run / f"round-{empty}" / "data" / "summary.json")["rows"]["labels"] == 0
    assert "prm" not in _json(run / f"round-{empty}" / "train" / "summary.json")
    assert not (run / f"round-{empty}" / "train" / "prm").exists()
    if empty == 1:
        assert collected_with(2) == "oracle:4"
    else:
        prm1 = _json(run / "round-1" / "train" / "summary.json")["prm"]
        assert collected_with(2) == collected_with(3) == f"prm:{prm1}"
    assert all(v["status"] == "done" for v in _json(run / "manifest.json")["stages"].values())
    # the round after the empty one built labels and trained its own PRM
    assert "prm" in _json(run / f"round-{empty + 1}" / "train" / "summary.json")
