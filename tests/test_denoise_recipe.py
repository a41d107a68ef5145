"""The denoising recipes of `sharpen run` (`diffusion-spo`, `diffusion-rwr`) on a tiny DDPM prepared in
seconds: a 2-round run through the real CLI evaluates every round's unguided sampler by mean reward on
held-out problems of the target class (the same noise every round), trains each round from the last,
compares the last round with round 0 by mean reward and draws the sample grid into the report; a run
interrupted in any stage and resumed, or a finished run rerun, ends with the same results; a digits
config with a language-model recipe, or a text task with a denoising recipe, is a one-line error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("diffusers")
pytest.importorskip("sklearn")

from sharpen.backends.diffusion import load_digits_model  # noqa: E402
from sharpen.core.errors import ConfigError  # noqa: E402
from sharpen.core.io import read_jsonl  # noqa: E402
from sharpen.loop.config import validate  # noqa: E402
from sharpen.loop.recipes import unused_fields  # noqa: E402
from sharpen.loop.runner import DenoiseRunner, prepare_run_dir, runner_for  # noqa: E402
from sharpen.report.images import grid_size  # noqa: E402
from sharpen.report.run import GRID_CELL, write_report  # noqa: E402
from sharpen.search.denoise import problems  # noqa: E402
from sharpen.train.diffusion import unguided_samples  # noqa: E402

TARGET = 3
EVAL_N = 5


def _config(model_dir: Path, **changes) -> dict:
    cfg = {"name": "tiny-spo", "recipe": "diffusion-spo", "model": str(model_dir), "task": "digits",
           "task_args": {"steps": 8}, "rounds": 2, "seed": 3,
           "collect": {"algo": "beam", "scorer": "x0-reward", "problems": 2, "budget": 60,
                       "args": {"width": 2, "expansions": 3}},
           "build": {"min_margin": 0.0},
           "train": {"target": TARGET, "max_steps": 4, "batch": 8, "lr": 1.0e-3, "save_every": 2},
           "eval": {"n": EVAL_N}}
    for key, value in changes.items():
        section, _, name = key.partition(".")
        if name:
            cfg[section][name] = value
        else:
            cfg[section] = value
    return cfg


def _write(tmp: Path, cfg: dict) -> Path:
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "sharpen", "run", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _results(run: Path) -> dict:
    """What a run measured, without the paths and wall times that name its own directory."""
    out = {"paired": _json(run / "paired.json")}
    for r in range(3):
        out[f"eval-{r}"] = {k: v for k, v in _json(run / f"round-{r}" / "eval" / "metrics.json").items() if k != "model"}
        out[f"rows-{r}"] = sorted(json.dumps(row, sort_keys=True) for row in read_jsonl(
            run / f"round-{r}" / "eval" / "problems.jsonl"))
    for r in (1, 2):
        out[f"data-{r}"] = _json(run / f"round-{r}" / "data" / "summary.json")
        out[f"unet-{r}"] = (run / f"round-{r}" / "train" / "policy" / "model" / "unet" /
                            "diffusion_pytorch_model.safetensors").read_bytes()
    return out


@pytest.fixture(scope="module")
def model_dir(tiny_digits_dir) -> Path:
    return tiny_digits_dir


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, model_dir) -> Path:
    tmp = tmp_path_factory.mktemp("spo")
    r = _cli(str(_write(tmp, _config(model_dir))), "--out", str(tmp / "run"), cwd=tmp)
    assert r.returncode == 0, r.stderr
    return tmp / "run"


def test_two_rounds_through_the_cli_train_and_measure_the_unguided_sampler(cli_run, model_dir):
    run = cli_run
    held_out = [p for p in problems("test", 200, seed=3) if p.meta["target"] == TARGET][:EVAL_N]
    metrics = {r: _json(run / f"round-{r}" / "eval" / "metrics.json") for r in range(3)}
    rows = {r: list(read_jsonl(run / f"round-{r}" / "eval" / "problems.jsonl")) for r in range(3)}
    for r in range(3):
        # one unguided sample per held-out problem of the target class, the first of the test stream
        assert [row["id"] for row in rows[r]] == [p.id for p in held_out]
        m = metrics[r]
        assert m["n"] == EVAL_N and m["target"] == TARGET and 0 <= m["mean_reward"] <= 1
        assert m["mean_reward"] == pytest.approx(sum(row["reward"] for row in rows[r]) / EVAL_N)
        assert m["mean_reward_ci95"][0] <= m["mean_reward"] <= m["mean_reward_ci95"][1]
        assert m["target_share"] == sum(row["class"] == TARGET for row in rows[r]) / EVAL_N
        assert m["diversity"] > 0 and m["nfe"] == EVAL_N * 8
    # round 0 is the starting model's sampler, its noise the run seed's: the same figures drawn directly
    _, rewards, classes, _ = unguided_samples(load_digits_model(model_dir, chunk=1), held_out, 1, steps=8, seed=3)
    assert [row["reward"] for row in rows[0]] == pytest.approx(rewards, abs=1e-12)
    assert [row["class"] for row in rows[0]] == classes
    # each round trained from the last round's denoiser, on step pairs it built from its own search
    start = str(model_dir)
    for r in (1, 2):
        data = _json(run / f"round-{r}" / "data" / "summary.json")
        train = _json(run / f"round-{r}" / "train" / "summary.json")
        assert data["rows"]["pairs"] > 0 and data["trees"] == 2 and data["nfe"] > 0
        assert train["start"] == start and train["rows"] == data["rows"]["pairs"] and train["steps"] == 4
        assert train["metrics"]["steps_run"] == 4 and metrics[r]["model"] == train["model"]
        new = Path(train["model"]) / "unet" / "diffusion_pytorch_model.safetensors"
        assert new.read_bytes() != (Path(start) / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
        assert (Path(train["model"]) / "classifier.json").read_bytes() == (model_dir / "classifier.json").read_bytes()
        collected = [json.loads(line)["problem_id"] for line in
                     (run / f"round-{r}" / "collect" / "trees.jsonl").read_text().splitlines()]
        assert len(collected) == 2 and all(p.startswith("digit-train-3-") for p in collected)
        start = train["model"]
    # the sampler changed with training: some held-out sample differs from round 0's
    assert [row["x"] for row in rows[2]] != [row["x"] for row in rows[0]]
    # the last round against round 0 by mean reward, paired by problem
    paired = _json(run / "paired.json")
    assert paired["metric"] == "mean_reward" and paired["from_round"] == 0 and paired["to_round"] == 2
    assert paired["n"] == EVAL_N and paired["before"] == pytest.approx(metrics[0]["mean_reward"])
    assert paired["after"] == pytest.approx(metrics[2]["mean_reward"])
    assert paired["delta"] == pytest.approx(paired["after"] - paired["before"])
    assert paired["ci95"][0] <= paired["delta"] <= paired["ci95"][1]


def test_report_shows_mean_reward_and_the_sample_grid(cli_run, tmp_path):
    import shutil

    from PIL import Image

    run = tmp_path / "copy"
    shutil.copytree(cli_run, run)
    md, page = (run / "report.md").read_text(), (run / "report.html").read_text()
    assert md.splitlines()[4].startswith("| round | mean reward | 95% CI | target share | diversity | pairs |")
    assert "Mean reward change of the unguided sampler, round 0 -> 2:" in md and "Greedy accuracy" not in md
    assert "![samples](plots/samples.png)" in md and "<h2>Unguided samples</h2>" in page
    assert "Mean reward change of the unguided sampler, round 0 &rarr; 2:" in page
    # a row per evaluated round, a column per held-out problem (all 5 here), two caption lines each
    grid = run / "plots" / "samples.png"
    assert Image.open(grid).size == grid_size(3, EVAL_N, 2, row_labels=True, title=True, cell=GRID_CELL)
    assert (run / "plots" / "reward_per_round.png").exists() and not (run / "plots" / "accuracy_per_round.png").exists()
    # the report is rebuilt from the run directory alone
    for name in ("report.md", "report.html"):
        (run / name).unlink()
    shutil.rmtree(run / "plots")
    write_report(run, unused_fields(run))  # as `sharpen report RUN`
    assert (run / "report.md").read_text() == md.replace(str(cli_run), str(run))
    assert grid.exists()


def test_a_finished_run_rerun_changes_nothing(cli_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(cli_run, run)
    before = _results(run)
    stages = _json(run / "manifest.json")["stages"]
    r = _cli(str(run / "config.yaml"), "--out", str(run), "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    after = _json(run / "manifest.json")["stages"]
    assert {k: v["finished"] for k, v in after.items()} == {k: v["finished"] for k, v in stages.items()}
    assert _results(run) == before


class Interrupt(BaseException):
    """Stands for a kill: raised from the progress callback, past every `except Exception`."""


@pytest.mark.slow
@pytest.mark.parametrize("stage,after", [("round 1: collect", 1), ("round 1: Diffusion-DPO", 3),
                                         ("round 2: evaluate", 2)])
def test_an_interrupted_run_resumes_to_the_same_results(cli_run, model_dir, tmp_path, stage, after):
    """Stopped after `after` units of `stage` (a problem searched, an optimizer step, a sample drawn), then
    resumed by the CLI: the finished stages are kept, and every result equals the uninterrupted run's."""
    from contextlib import contextmanager

    @contextmanager
    def progress(description: str, total: int):
        count = [0]

        def advance(n: int = 1) -> None:
            count[0] += n
            if description.startswith(stage) and count[0] >= after:
                raise Interrupt(description)

        yield advance

    run = tmp_path / "run"
    cfg = prepare_run_dir(validate(_config(model_dir)), run, resume=False)
    with pytest.raises(Interrupt):
        runner_for(cfg)(cfg, run, progress=progress).run_all()
    stages = _json(run / "manifest.json")["stages"]
    done = {k: v["finished"] for k, v in stages.items() if v["status"] == "done"}
    assert "round-0/eval" in done and any(v["status"] == "running" for v in stages.values())
    if "DPO" in stage:  # the optimizer's state was saved at step 2: the round resumes from it
        assert (run / "round-1" / "train" / "policy" / "checkpoint.pt").exists()
    r = _cli(str(run / "config.yaml"), "--out", str(run), "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    stages = _json(run / "manifest.json")["stages"]
    assert all(stages[k]["finished"] == t for k, t in done.items()), "a finished stage was redone"
    assert _results(run) == _results(cli_run)
    if "DPO" in stage:
        assert _json(run / "round-1" / "train" / "summary.json")["metrics"]["resumed_from"] == 2


def test_rwr_samples_the_searchs_nfe_and_trains(model_dir, tmp_path):
    """diffusion-rwr reads the same config (its search settings unread): collect.budget x problems NFE of
    unguided samples, reward-weighted fine-tuning, the same evaluation."""
    cfg = validate(_config(model_dir, recipe="diffusion-rwr", rounds=1))
    assert runner_for(cfg) is DenoiseRunner
    run = tmp_path / "rwr"
    cfg = prepare_run_dir(cfg, run, resume=False)
    result = runner_for(cfg)(cfg, run).run_all()
    collect = _json(run / "round-1" / "collect" / "metrics.json")
    assert collect["samples"] == 60 * 2 // 8 and collect["nfe"] == collect["samples"] * 8
    data = _json(run / "round-1" / "data" / "summary.json")
    assert data["rows"] == {"samples": collect["samples"]}
    train = _json(run / "round-1" / "train" / "summary.json")
    assert train["method"] == "rwr" and train["model"] == result["model"] != str(model_dir)
    assert result["paired"]["metric"] == "mean_reward" and result["paired"]["n"] == EVAL_N
    assert "mean reward of the samples" in (run / "report.md").read_text()


@pytest.mark.parametrize("changes,message", [
    ({"recipe": "mcts-dpo"}, "recipe mcts-dpo trains a language model"),
    ({"task": "gym:chain_sum", "task_args": {}}, "recipe diffusion-spo trains a denoiser on the digits task"),
])
def test_a_recipe_and_task_of_different_kinds_is_a_one_line_error(model_dir, tmp_path, changes, message):
    r = _cli(str(_write(tmp_path, _config(model_dir, **changes))), "--out", str(tmp_path / "x"), cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr and "(fix: " in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_seeds_of_a_diffusion_recipe_are_a_one_line_error(model_dir, tmp_path):
    r = _cli(str(_write(tmp_path, _config(model_dir))), "--seeds", "0,1", "--out", str(tmp_path / "x"), cwd=tmp_path)
    assert r.returncode == 2 and "--seeds combines held-out greedy accuracy" in r.stderr and "(fix: " in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


@pytest.mark.parametrize("changes,message", [
    ({"train": {"max_steps": 2}}, r"train.target=None: .*\(fix: train.target: an integer in 0..9\)"),
    ({"train.target": 10}, r"train.target=10"),
    ({"task_args": {"steps": 8, "classes": 3}}, r"train.target=3: .*0..2\)"),
    ({"train.tau": 0.1}, r"train.tau is not an option of recipe diffusion-spo"),
    ({"train.lr": 2.0}, r"train: denoiser training: lr=2.0 \(fix: a learning rate"),
    ({"collect.scorer": "self"}, r"collect.scorer=self: step pairs need"),
    ({"collect.temperature": 0.9}, r"collect.temperature does not apply to recipe diffusion-spo"),
    ({"eval": {"n": 5, "samples": 2}}, r"eval.samples does not apply"),
    ({"train.replay": True}, r"train.replay does not apply"),
    ({"build.min_margin": 1.5}, r"build.min_margin=1.5"),
    ({"task_args": {"steps": 8, "reward": "realism"}}, r"task_args.reward=realism"),
    ({"task_args": {"stpes": 8}}, r"task_args has no option 'stpes'"),
])
def test_bad_denoising_configs_are_one_line_errors(model_dir, changes, message):
    with pytest.raises(ConfigError, match=message) as e:
        validate(_config(model_dir, **changes), "cfg.yaml")
    assert "\n" not in str(e.value) and "(fix: " in str(e.value)


def test_task_args_default_to_the_digits_tasks_own(model_dir):
    raw = _config(model_dir)
    del raw["task_args"]
    assert validate(raw).task_args == {}  # not the text task's default
    assert validate(_config(model_dir, recipe="diffusion-rwr", **{"train.tau": 0.2})).train.options["tau"] == 0.2


@pytest.mark.slow
def test_a_users_own_pipeline_runs_the_recipe_as_the_prepared_model_does(tmp_path, model_dir, cli_run):
    """A diffusers pipeline of the user's own (the tiny UNet saved as a DDIMPipeline, no rewards in its
    directory) runs the same recipe with the built-in digits-ddpm's rewards and measures what the
    prepared model's run measures."""
    import shutil

    from conftest import user_pipeline

    pipe = user_pipeline(model_dir, tmp_path / "pipe")
    home = tmp_path / "home"
    shutil.copytree(model_dir, home / "models" / "digits-ddpm")  # the built-in, prepared (tiny)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SHARPEN_HOME": str(home)}
    r = subprocess.run([sys.executable, "-m", "sharpen", "run", str(_write(tmp_path, _config(pipe))), "--out",
                        str(tmp_path / "run")], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    mine, theirs = _results(tmp_path / "run"), _results(cli_run)
    for key in ("paired", "eval-0", "eval-1", "eval-2", "rows-0", "rows-2"):
        assert mine[key] == theirs[key], key
    assert not (tmp_path / "run" / "round-2" / "train" / "policy" / "model" / "classifier.json").exists()
