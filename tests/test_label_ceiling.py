"""benchmarks/label_ceiling.py: the AUROC a scorer knowing each step's true value would reach against MC labels."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

spec = importlib.util.spec_from_file_location("label_ceiling", Path(__file__).parents[1] / "benchmarks" / "label_ceiling.py")
label_ceiling = importlib.util.module_from_spec(spec)
spec.loader.exec_module(label_ceiling)


def test_ceiling_is_chance_when_every_step_has_one_value_and_perfect_when_values_are_certain():
    rng = np.random.default_rng(1)
    same = rng.binomial(16, 0.1, size=400)  # every step's true value 0.1: knowing it ranks nothing
    c = label_ceiling.ceiling(same, 16, 0.01, draws=50)
    assert 0.4 < c["median"] < 0.6
    certain = np.array([0] * 200 + [16] * 200)  # values 0 and 1: fresh labels equal them
    c = label_ceiling.ceiling(certain, 16, 0.01, draws=20)
    assert c["median"] == pytest.approx(1.0)
    assert c["mass_zero"] == pytest.approx(0.5, abs=0.01)


def test_ceiling_falls_as_rollouts_thin_out():
    rng = np.random.default_rng(2)
    v = rng.choice([0.0, 0.02, 0.3], size=600, p=[0.5, 0.3, 0.2])
    many = label_ceiling.ceiling(rng.binomial(64, v), 64, 0.01, draws=50)["median"]
    few = label_ceiling.ceiling(rng.binomial(4, v), 4, 0.01, draws=50)["median"]
    assert many > few + 0.05


def test_values_that_do_not_match_the_rollouts_are_a_one_line_error(tmp_path, monkeypatch, capsys):
    from datasets import Dataset

    Dataset.from_dict({"value": [0.0, 0.5, 1.0], "terminal": [False, False, True]}).save_to_disk(str(tmp_path / "labels"))
    capsys.readouterr()  # the save's own progress bar
    monkeypatch.setattr(sys, "argv", ["label_ceiling.py", str(tmp_path / "labels"), "--rollouts", "3"])
    with pytest.raises(SystemExit) as e:
        label_ceiling.main()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--rollouts" in err and len(err.splitlines()) == 1
    monkeypatch.setattr(sys, "argv", ["label_ceiling.py", str(tmp_path / "labels"), "--rollouts", "2", "--draws", "5"])
    label_ceiling.main()
    out = capsys.readouterr().out
    assert "| inner steps | 2 |" in out and "| final answers | 1 |" in out
