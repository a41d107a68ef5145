"""benchmarks/credit_compare.py: two seeds experiments compared at the generated tokens each spent."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "credit_compare.py"
spec = importlib.util.spec_from_file_location("credit_compare", SCRIPT)
credit_compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(credit_compare)


def _run_dir(path: Path, correct_by_round: list[list[int]], tokens: list[int]) -> None:
    """A finished run dir: round r's greedy correctness on problems p0.., round r >= 1 generated tokens[r - 1]."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text("recipe: grpo\nseed: 0\n")
    (path / "manifest.json").write_text(json.dumps({"stages": {}}))
    for r, correct in enumerate(correct_by_round):
        d = path / f"round-{r}" / "eval"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"greedy": sum(correct) / len(correct), "n": len(correct)}))
        (d / "problems.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "greedy": {"correct": bool(c)}}) + "\n"
                                                  for i, c in enumerate(correct)))
        if r:
            t = path / f"round-{r}" / "train"
            t.mkdir(parents=True)
            (t / "summary.json").write_text(json.dumps({"generated_tokens": tokens[r - 1]}))


def test_tokens_to_reach_interpolates_between_rounds():
    assert credit_compare.tokens_to_reach([0, 100, 200], [0.2, 0.4, 0.6], 0.5) == pytest.approx(150)
    assert credit_compare.tokens_to_reach([0, 100], [0.2, 0.4], 0.5) is None
    assert credit_compare.tokens_to_reach([0, 100], [0.5, 0.6], 0.5) == 0


def test_median_over_seeds_of_each_seeds_mean():
    rows = np.array([(0, 1.0), (0, 0.0), (1, 0.0), (1, 0.0), (2, 1.0), (2, 1.0)])
    assert credit_compare.median_difference(rows) == pytest.approx(0.5)


def test_two_seeds_experiments_side_by_side(tmp_path):
    base, cand = tmp_path / "outcome", tmp_path / "mc"
    # seed 0: the candidate is right on one more of 4 problems; seed 1: on two more; seed 2 only in the baseline
    _run_dir(base / "seed-0", [[0, 0, 0, 0], [1, 0, 0, 0]], [1000])
    _run_dir(cand / "seed-0", [[0, 0, 0, 0], [1, 1, 0, 0]], [600])
    _run_dir(base / "seed-1", [[0, 0, 0, 0], [0, 0, 0, 1]], [1000])
    _run_dir(cand / "seed-1", [[0, 0, 0, 0], [1, 1, 0, 1]], [800])
    _run_dir(base / "seed-2", [[0, 0, 0, 0], [0, 0, 0, 0]], [1000])
    plot = tmp_path / "avt.png"
    r = subprocess.run([sys.executable, str(SCRIPT), str(base), str(cand), "--plot", str(plot)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    # median over seeds 0 and 1 of +0.25 and +0.5
    assert "median over seeds [0, 1]: +0.375" in r.stdout
    # seed 0: the baseline's 0.25 reached at 0.25 / 0.5 of the candidate's 600 tokens = 300, 0.30 of 1,000
    assert "300 (0.30)" in r.stdout
    assert plot.stat().st_size > 0
    none = subprocess.run([sys.executable, str(SCRIPT), str(base), str(tmp_path / "nothing")],
                          capture_output=True, text=True, timeout=120)
    assert none.returncode == 2 and "no seed both hold" in none.stderr
