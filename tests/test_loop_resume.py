"""Kill a real `sharpen run` with SIGKILL mid-stage, resume it, and get the same results as an
uninterrupted run: no finished stage redone, nothing written before the kill lost or corrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sharpen.core.io import read_jsonl


def _config(tmp_path: Path, model_dir: str) -> Path:
    cfg = {
        "name": "resume-test",
        "recipe": "mcts-dpo",
        "model": model_dir,
        "task": "gym:chain_sum",
        "task_args": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
        "rounds": 1,
        "seed": 3,
        "threads": 1,
        "collect": {"algo": "mcts", "scorer": "oracle", "problems": 6, "budget": 400, "step_tokens": 6,
                    "rollout_tokens": 12, "max_depth": 3, "temperature": 1.0,
                    "strict_format": False},  # a random tiny model writes no Answer: lines
        "build": {"min_margin": 0.01},
        "train": {"max_steps": 4, "per_device_train_batch_size": 2},
        "eval": {"n": 6, "samples": 2, "max_tokens": 8},
    }
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _run(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "sharpen", "run", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stage_status(run: Path, stage: str) -> str | None:
    try:
        return json.loads((run / "manifest.json").read_text())["stages"].get(stage, {}).get("status")
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _final(run: Path) -> dict:
    m = json.loads((run / "round-1" / "eval" / "metrics.json").read_text())
    trees = [t["answer"] for t in read_jsonl(run / "round-1" / "collect" / "trees.jsonl")]
    return {"paired": json.loads((run / "paired.json").read_text()), "trees": trees,
            **{k: m[k] for k in ("greedy", "pass@1", "pass@2", "majority@2")}}


@pytest.fixture(scope="module")
def ref_run(tmp_path_factory, tiny_model_dir) -> Path:
    tmp = tmp_path_factory.mktemp("ref")
    cfg = _config(tmp, tiny_model_dir)
    p = _run([str(cfg), "--out", str(tmp / "ref")], tmp)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    # the run trains (a kill in the train stage interrupts real training, not a skipped stage)
    assert json.loads((tmp / "ref" / "round-1" / "train" / "summary.json").read_text())["rows"] > 0
    assert json.loads((tmp / "ref" / "manifest.json").read_text())["threads"] == [1]  # the config's count, recorded
    return tmp / "ref"


@pytest.fixture(scope="module")
def uninterrupted(ref_run):
    return _final(ref_run)


@pytest.mark.parametrize("kill_when", ["collect", pytest.param("train", marks=pytest.mark.slow)])
def test_kill_and_resume_matches_uninterrupted(tmp_path, tiny_model_dir, uninterrupted, kill_when):
    cfg = _config(tmp_path, tiny_model_dir)
    expected = uninterrupted

    run = tmp_path / "killed"
    p = _run([str(cfg), "--out", str(run)], tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if kill_when == "collect" and (run / "round-1/collect/trees.jsonl").exists() \
                and (run / "round-1/collect/trees.jsonl").read_text().count("\n") >= 2:
            break
        if kill_when == "train" and _stage_status(run, "round-1/train") == "running":
            time.sleep(1.0)
            break
        time.sleep(0.05)
    assert p.poll() is None, "the run finished before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    before = json.loads((run / "manifest.json").read_text())["stages"]
    done_before = {k for k, v in before.items() if v["status"] == "done"}
    finished_at = {k: before[k]["finished"] for k in done_before}
    assert "round-0/eval" in done_before

    p = _run([str(cfg), "--out", str(run), "--resume"], tmp_path)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    after = json.loads((run / "manifest.json").read_text())["stages"]
    assert all(after[k]["finished"] == finished_at[k] for k in done_before), "a finished stage was redone"
    assert all(v["status"] == "done" for v in after.values())
    assert _final(run) == expected
    assert (run / "report.html").exists()


def test_run_refuses_existing_run_and_bad_config(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rounds: zero\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "sharpen", "run", str(bad), "--out", str(tmp_path / "x")],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 2 and "rounds" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()
    r = subprocess.run([sys.executable, "-m", "sharpen", "run", str(tmp_path / "nope.yaml")],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 2 and "config file not found" in r.stderr


def _report(run: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "sharpen", "report", str(run), *args],
                          capture_output=True, text=True, env=env, cwd=run.parent)


def test_report_rebuilds_from_run_dir_and_logs_to_trackers(tmp_path, ref_run, monkeypatch):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(ref_run, run)
    for name in ("report.html", "report.md"):
        (run / name).unlink()
    shutil.rmtree(run / "plots")
    metrics = {r: json.loads((run / f"round-{r}/eval/metrics.json").read_text()) for r in (0, 1)}

    r = _report(run, "--tracker", "tensorboard")
    assert r.returncode == 0, r.stderr
    assert (run / "report.html").exists() and (run / "plots" / "accuracy_per_round.png").exists()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for _ in range(2):  # a second call replaces the event files: no scalar logged twice
        ev = EventAccumulator(str(run / "tensorboard"))
        ev.Reload()
        greedy = ev.Scalars("eval/greedy")
        assert [(e.step, round(e.value, 6)) for e in greedy] == [(k, round(m["greedy"], 6)) for k, m in metrics.items()]
        assert "data/pairs" in ev.Tags()["scalars"]
        assert _report(run, "--tracker", "tensorboard").returncode == 0

    r = _report(run, "--tracker", "mlflow")
    assert r.returncode == 0, r.stderr
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # reading the run's local file store
    client = mlflow.MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("sharpen")
    (mrun,) = client.search_runs([exp.experiment_id])
    hist = client.get_metric_history(mrun.info.run_id, "eval/pass_at_1")
    assert sorted((h.step, round(h.value, 6)) for h in hist) == [(k, round(m["pass@1"], 6)) for k, m in metrics.items()]
    assert mrun.data.params["recipe"] == "mcts-dpo"

    r = _report(run, "--tracker", "wandb")
    assert r.returncode == 2 and "tensorboard or mlflow" in r.stderr and "Traceback" not in r.stderr
    r = _report(tmp_path / "nope")
    assert r.returncode == 2 and "Traceback" not in r.stderr
