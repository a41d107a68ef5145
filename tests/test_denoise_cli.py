"""`sharpen search`, `sharpen sweep` and `sharpen models` on the denoising process, through the real
command line: a tiny digits-ddpm prepared in seconds (test_denoise.py's settings) is passed as
--model with --task digits; the reward of the chosen x_0 and the NFE spent are reported, the trees
written keep only their terminals' x_0, and a model of one kind with a task of the other (or a wrong
directory, or a setting that does not apply) is a one-line error, exit code 2, nothing written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import rgb_pipeline, user_pipeline

pytest.importorskip("diffusers")
pytest.importorskip("sklearn")


DIGITS = ["--task", "digits", "--task-arg", "steps=8"]  # 8 reverse steps: a whole sample costs 8 NFE


@pytest.fixture(scope="module")
def digits_dir(tiny_digits_dir) -> str:
    return str(tiny_digits_dir)


def run(args: list[str], cwd, home=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "250", "SHARPEN_HOME": str(home or cwd / "home")}
    return subprocess.run([sys.executable, "-m", "sharpen", *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=300)


def read_trees(path) -> list[dict]:
    return [json.loads(line) for line in open(path) if line.strip()]


def assert_compact(trees: list[dict]) -> None:
    """Only terminals keep a state (their x_0, 64 float16 values in base64)."""
    for t in trees:
        for node in t["nodes"]:
            assert ("x" in node["meta"]) == node["terminal"], (t["problem_id"], node["id"])
            if node["terminal"]:
                assert len(node["meta"]["x"]) == 172


def chosen_reward(tree: dict) -> float:
    node = tree["nodes"][tree["chosen"][-1]] if tree["chosen"] else None
    return node["meta"]["reward"] if node is not None and node["terminal"] else 0.0


def test_search_reports_reward_and_nfe_and_writes_compact_trees(tmp_path, digits_dir):
    out = tmp_path / "bon"
    r = run(["search", "--model", digits_dir, *DIGITS, "--algo", "bon", "--arg", "batch=4", "--budget", "40",
             "--n", "3", "--out", str(out), "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["scorer"] == "x0-reward"  # the digits task's default scorer
    assert m["budget_unit"] == "nfe" and m["n"] == 3
    trees = read_trees(out / "trees.jsonl")
    assert len(trees) == 3
    assert_compact(trees)
    assert all(sum(n["terminal"] for n in t["nodes"]) >= 4 for t in trees)  # 40 NFE buy four 8-NFE samples
    assert m["mean_reward"] == pytest.approx(sum(chosen_reward(t) for t in trees) / 3)
    assert 0.0 < m["mean_reward"] <= 1.0 and m["finished"] == 1.0
    assert m["mean_nfe"] == pytest.approx(sum(t["usage"]["nfe"] for t in trees) / 3)
    assert all(0 < t["usage"]["nfe"] <= 40 + t["usage"]["overshoot_bound"] for t in trees)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["mean_reward"] == m["mean_reward"] and on_disk["mean_nfe"] == m["mean_nfe"]


@pytest.mark.slow
def test_stepwise_search_table_and_its_inner_states_dropped(tmp_path, digits_dir):
    out = tmp_path / "pf"
    r = run(["search", "--model", digits_dir, *DIGITS, "--algo", "pf", "--arg", "n=2", "--budget", "48", "--n", "2",
             "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "mean reward of the chosen x_0" in r.stdout and "NFE/problem" in r.stdout
    trees = read_trees(out / "trees.jsonl")
    assert any(not n["terminal"] and n["parent"] is not None for t in trees for n in t["nodes"])  # inner states
    assert_compact(trees)


def test_sweep_reports_reward_and_nfe_per_cell(tmp_path, digits_dir):
    out = tmp_path / "sweep"
    r = run(["sweep", "--model", digits_dir, *DIGITS, "--algos", "bon,pf,svdd", "--budgets", "24,48", "--n", "3",
             "--arg", "bon.batch=2", "--arg", "pf.n=2", "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "NFE per problem" in r.stdout
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["task"] == "digits" and sweep["task_args"] == {"steps": 8}
    cells = sweep["results"]
    assert sorted((c["algo"], c["budget"]) for c in cells) == sorted(
        (a, b) for a in ("bon", "pf", "svdd") for b in (24, 48))
    for c in cells:
        assert c["budget_unit"] == "nfe" and 0.0 <= c["mean_reward"] <= 1.0
        assert 0 < c["mean_nfe"] <= c["budget"] + 8  # at most one sample's overshoot
        trees = read_trees(c["trees"])
        assert len(trees) == 3
        assert_compact(trees)
        assert c["mean_reward"] == pytest.approx(sum(chosen_reward(t) for t in trees) / 3)
    assert {c["scorer"] for c in cells} == {"x0-reward"}
    assert all((c["mean_ess"] is not None) == (c["algo"] == "pf") for c in cells)  # pf's ESS, beside the reward
    for c in cells:  # diversity beside the reward in the table ("-" with fewer than two samples of a class)
        assert ("div -" if c["diversity"] is None else f"div {c['diversity']:.2f}") in r.stdout
    assert (out / "accuracy_vs_tokens.png").stat().st_size > 10_000
    for b in (24, 48):  # the paired change vs the first row is of the mean reward, by which the search selects
        at = {c["algo"]: c for c in cells if c["budget"] == b}
        for algo in ("pf", "svdd"):
            v = at[algo]["vs_first"]
            assert v["baseline"] == "bon@x0-reward" and v["of"] == "mean_reward"
            assert v["delta"] == pytest.approx(at[algo]["mean_reward"] - at["bon"]["mean_reward"])
    r = run(["sweep", "--model", digits_dir, *DIGITS, "--algos", "vote,bon", "--budgets", "24", "--n", "1"], tmp_path)
    assert r.returncode == 2 and "images are selected by reward" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_models_list_and_prepare_and_the_builtin_name(tmp_path, digits_dir):
    home = tmp_path / "home"

    def prepared() -> str:
        r = run(["models", "list"], tmp_path, home)
        assert r.returncode == 0, r.stderr
        return re.search(r"digits-ddpm\s*│\s*(yes|no)\s*│", r.stdout).group(1)

    assert prepared() == "no"
    cached = home / "models" / "digits-ddpm"
    shutil.copytree(digits_dir, cached)  # as `sharpen models prepare digits-ddpm` leaves it, but tiny
    assert prepared() == "yes"
    before = (cached / "classifier.json").stat().st_mtime_ns
    r = run(["models", "prepare", "digits-ddpm"], tmp_path, home)
    assert r.returncode == 0 and str(cached) in r.stdout.replace("\n", ""), r.stderr
    assert (cached / "classifier.json").stat().st_mtime_ns == before  # prepared: returned, not trained again
    r = run(["search", "--model", "digits-ddpm", *DIGITS, "--algo", "bon", "--budget", "16", "--n", "1",
             "--out", str(tmp_path / "v"), "--json"], tmp_path, home)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["mean_nfe"] == 16
    # a user's own pipeline (a DDIMPipeline, no rewards in it) searches with the built-in's rewards
    pipe = user_pipeline(digits_dir, tmp_path / "pipe")
    u = run(["search", "--model", str(pipe), *DIGITS, "--algo", "bon", "--budget", "16", "--n", "1",
             "--out", str(tmp_path / "u"), "--json"], tmp_path, home)
    assert u.returncode == 0, u.stderr
    assert json.loads(u.stdout)["mean_reward"] == json.loads(r.stdout)["mean_reward"]


def _empty_dir(t):
    d = t / "empty"
    d.mkdir()
    return str(d)


def _pipeline_only(t):
    d = t / "pipeline"
    d.mkdir()
    (d / "model_index.json").write_text("{}")
    return str(d)


def _lm_dir(t):
    d = t / "lm"
    d.mkdir()
    (d / "config.json").write_text("{}")
    return str(d)


@pytest.mark.parametrize("command,make_args,needle", [
    ("search", lambda t, m: ["--model", m, "--task", "gym:chain_sum"], "searches the digits task only"),
    pytest.param("sweep", lambda t, m: ["--model", m, "--task", "gym:chain_sum"], "searches the digits task only", marks=pytest.mark.slow),
    ("search", lambda t, m: ["--model", "smollm2-135m", *DIGITS], "needs a denoising model"),
    pytest.param("search", lambda t, m: ["--model", _lm_dir(t), *DIGITS], "needs a denoising model", marks=pytest.mark.slow),
    ("sweep", lambda t, m: ["--model", _lm_dir(t), *DIGITS], "needs a denoising model"),
    ("search", lambda t, m: ["--model", _empty_dir(t), *DIGITS], "no model_index.json"),
    ("search", lambda t, m: ["--model", str(rgb_pipeline(t / "rgb")), *DIGITS], "makes 3x16x16"),
    pytest.param("search", lambda t, m: ["--model", _pipeline_only(t), *DIGITS], "no unet/config.json", marks=pytest.mark.slow),
    ("search", lambda t, m: ["--model", m, "--task", "digits", "--task-arg", "steps=0"], "steps"),
    pytest.param("search", lambda t, m: ["--model", m, "--task", "digits", "--task-arg", "classes=11"], "classes", marks=pytest.mark.slow),
    pytest.param("search", lambda t, m: ["--model", m, "--task", "digits", "--task-arg", "colour=1"], "no option 'colour'", marks=pytest.mark.slow),
    pytest.param("search", lambda t, m: ["--model", m, *DIGITS, "--task-arg", "reward=beauty"], "unknown reward",
                 marks=pytest.mark.slow),
    ("search", lambda t, m: ["--model", m, *DIGITS, "--temperature", "1.0"], "does not apply"),
    pytest.param("search", lambda t, m: ["--model", m, *DIGITS, "--algo", "bon", "--scorer", "self"], "language-model process", marks=pytest.mark.slow),
    ("search", lambda t, m: ["--model", m, *DIGITS, "--ray", "local"], "drop --ray"),
    ("eval", lambda t, m: ["--model", m, "--task", "digits"], "eval measures a language model"),
])
def test_bad_combinations_one_line_exit_2_nothing_written(tmp_path, digits_dir, command, make_args, needle):
    out = tmp_path / "out"
    r = run([command, *make_args(tmp_path, digits_dir), "--n", "2", "--out", str(out)], tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert needle in lines[0] and "fix" in lines[0], lines[0]
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_models_prepare_force_prepares_again(tmp_path, monkeypatch):
    """`--force` reaches the preparation (stubbed here: the real one trains for a minute or more)."""
    from typer.testing import CliRunner

    import sharpen.backends.diffusion as diffusion
    from sharpen.cli import app

    calls = []
    monkeypatch.setenv("SHARPEN_HOME", str(tmp_path))
    monkeypatch.setattr(diffusion, "prepare_digits", lambda out_dir, force=False: calls.append((out_dir, force)) or out_dir)
    for args, force in ((["models", "prepare", "digits-ddpm"], False), (["models", "prepare", "digits-ddpm", "--force"], True)):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, r.output
        assert calls[-1] == (tmp_path / "models" / "digits-ddpm", force)
