"""`sharpen run CONFIG --seeds 0,1`: one run per seed in <out>/seed-<s>/, one combined report whose
per-seed numbers are each seed's own run facts; a rerun skips finished seeds; bad --seeds is a
one-line error, exit 2, nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sharpen.core.errors import ConfigError
from sharpen.loop.recipes import get_recipe
from sharpen.loop.seeds import parse_seeds
from sharpen.report.run import collect_facts
from sharpen.report.seeds import seeds_facts

SHARPEN = [sys.executable, "-m", "sharpen"]


def _sharpen(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run(SHARPEN + args, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def _config(tmp_path: Path, model: str) -> Path:
    """The loop tests' smallest round: 3 training problems, a short MCTS, 1 DPO step, 4 held-out problems."""
    cfg = {
        "name": "seeds-test", "recipe": "mcts-dpo", "model": model, "task": "gym:chain_sum",
        "task_args": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
        "rounds": 1, "seed": 99,  # replaced by each --seeds value
        "collect": {"algo": "mcts", "scorer": "oracle:2", "problems": 3, "budget": 150, "step_tokens": 6,
                    "rollout_tokens": 12, "max_depth": 2, "temperature": 1.0, "strict_format": False},
        "build": {"min_margin": 0.01},
        "train": {"max_steps": 1, "per_device_train_batch_size": 2},
        "eval": {"n": 4, "samples": 0, "max_tokens": 4},
    }
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.mark.parametrize("text,needle", [
    ("", "empty"), (" , ", "empty"), ("0,,1", "'' is not an integer"), ("0;1", "not an integer"),
    ("a,b", "'a' is not an integer"), ("1.5", "not an integer"), ("0,1,0", "0 given twice"), ("-1", "0.."),
])
def test_parse_seeds_refuses_bad_values(text, needle):
    with pytest.raises(ConfigError, match="fix:") as e:
        parse_seeds(text)
    assert needle in str(e.value)


def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds(" 3, 1 ") == [3, 1]  # the order given is the order run


@pytest.mark.parametrize("value", ["", "0,x", "1,1"])
def test_bad_seeds_one_line_exit_2_nothing_written(tmp_path, value):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("name: x\n")
    r = _sharpen(["run", str(cfg), "--seeds", value, "--out", str(tmp_path / "out")], tmp_path)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "--seeds" in lines[0] and "fix:" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml"]


def test_seeds_refuse_a_single_run_dir_and_a_seed_set(tmp_path, tiny_model_dir):
    cfg = _config(tmp_path, tiny_model_dir)
    single = tmp_path / "single"
    single.mkdir()
    (single / "manifest.json").write_text("{}")
    r = _sharpen(["run", str(cfg), "--seeds", "0,1", "--out", str(single)], tmp_path)
    assert r.returncode == 2 and "holds a single run" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in single.iterdir()) == ["manifest.json"]
    r = _sharpen(["run", str(cfg), "--seeds", "0,1", "--set", "seed=4", "--out", str(tmp_path / "o")], tmp_path)
    assert r.returncode == 2 and "--seeds" in r.stderr and not (tmp_path / "o").exists()


def test_two_seeds_run_resume_report_and_rerun_skips(tmp_path, tiny_model_dir):
    cfg = _config(tmp_path, tiny_model_dir)
    parent = tmp_path / "exp"
    runs = {s: parent / f"seed-{s}" for s in (0, 1)}
    # seed 0 alone, then as if killed in its last stage: the next command resumes it and starts seed 1
    assert _sharpen(["run", str(cfg), "--seeds", "0", "--out", str(parent)], tmp_path).returncode == 0
    manifest = json.loads((runs[0] / "manifest.json").read_text())
    manifest["stages"]["round-1/eval"]["status"] = "running"
    (runs[0] / "manifest.json").write_text(json.dumps(manifest))
    (runs[0] / "paired.json").unlink()
    r = _sharpen(["run", str(cfg), "--seeds", "0,1", "--out", str(parent)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "seed 0: resuming" in r.stderr and "seed 1: starting" in r.stderr
    after = json.loads((runs[0] / "manifest.json").read_text())["stages"]
    assert all(after[k]["finished"] == v["finished"] for k, v in manifest["stages"].items() if k != "round-1/eval")
    assert after["round-1/eval"]["status"] == "done"
    for s, d in runs.items():
        assert (d / "paired.json").exists() and (d / "report.html").exists()
        assert yaml.safe_load((d / "config.yaml").read_text())["seed"] == s
    for name in ("report.html", "report.md", "seeds.json", "plots/greedy_by_seed.png"):
        assert (parent / name).exists(), name
    # the CLI table: a row per seed, then the median and the spread
    table = {ln.split("│")[1].strip(): ln for ln in r.stdout.splitlines() if ln.count("│") > 2}
    assert {"0", "1", "median", "min", "max"} <= set(table) and "report:" in r.stdout

    facts = json.loads((parent / "seeds.json").read_text())
    unused = get_recipe("mcts-dpo").unused
    assert facts == json.loads(json.dumps(seeds_facts(parent, unused)))  # the file is the facts the report shows
    assert [s["seed"] for s in facts["seeds"]] == [0, 1] and facts["finished"] == 2
    finals, deltas = [], []
    for s in facts["seeds"]:
        own = collect_facts(runs[s["seed"]])
        assert s["paired"] == own["paired"]  # the run's own paired change and CI, not recomputed
        assert s["rounds"] == [{"round": e["round"], "greedy": e["eval"]["greedy"]} for e in own["rounds"]]
        assert s["rows"] == [{"round": e["round"], **e["data"]["rows"]} for e in own["rounds"] if e["data"]]
        assert s["final"] == own["rounds"][-1]["eval"]["greedy"] == own["paired"]["after"]
        finals.append(own["paired"]["after"])
        deltas.append(own["paired"]["delta"])
    assert facts["final"] == {"median": sum(finals) / 2, "min": min(finals), "max": max(finals)}
    assert facts["change"]["median"] == sum(deltas) / 2
    page = (parent / "report.html").read_text()
    # the config shown leaves out what the recipe never reads, and says so (as each seed's own report does)
    assert unused and facts["unused"] == list(unused)
    config_md = (parent / "report.md").read_text().split("## Config")[1]
    assert f"Left out (the recipe does not use them): {', '.join(unused)}." in config_md
    assert all(f.rsplit(".", 1)[-1] + ":" not in config_md for f in unused)
    for s in facts["seeds"]:
        p = s["paired"]
        assert f"{p['delta']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]" in page
        assert f"seed-{s['seed']}/report.html" in page
    # the seed draws the problems too: the report says so, with the overlap it measured
    assert "which problems are drawn" in facts["problems"] and facts["problems"] in r.stdout.replace("\n", " ")
    assert facts["overlap"]["heldout_n"] == 4 and 0 < facts["overlap"]["heldout_shared"] <= 4

    # rerunning the same command skips the finished seeds: no stage redone, the same report
    manifests = {s: (d / "manifest.json").read_text() for s, d in runs.items()}
    r2 = _sharpen(["run", str(cfg), "--seeds", "0,1", "--out", str(parent)], tmp_path)
    assert r2.returncode == 0, r2.stderr
    assert r2.stderr.count("finished already") == 2
    assert {s: (d / "manifest.json").read_text() for s, d in runs.items()} == manifests
    assert json.loads((parent / "seeds.json").read_text()) == facts
    # `sharpen report` on the parent rebuilds the combined report from the directory alone
    (parent / "report.html").unlink()
    assert _sharpen(["report", str(parent)], tmp_path).returncode == 0 and (parent / "report.html").exists()
    assert json.loads((parent / "seeds.json").read_text()) == facts
    # another config for a started seed is refused
    r3 = _sharpen(["run", str(cfg), "--seeds", "0,1", "--out", str(parent), "--set", "eval.n=5"], tmp_path)
    assert r3.returncode == 2 and "eval.n" in r3.stderr and "Traceback" not in r3.stderr
