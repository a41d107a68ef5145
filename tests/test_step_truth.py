"""benchmarks/step_truth.py: the exact truth of a chain_sum equation step, in any order of work."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("step_truth", Path(__file__).parents[1] / "benchmarks" / "step_truth.py")
step_truth = importlib.util.module_from_spec(spec)
spec.loader.exec_module(step_truth)


def test_a_step_is_right_when_it_holds_and_works_toward_the_answer_in_any_order():
    q = "State the final answer to the following arithmetic problem: 8 + 9 - 6 ="
    right = ["8 + 9 = 17", "17 - 6 = 11", "9 - 6 = 3", "8 + 3 = 11", "8 - 6 = 2"]
    wrong = ["8 + 9 = 16", "6 - 9 = -3", "8 + 6 = 14", "9 + 6 = 15", "8 + 9 - 6 = 12"]
    assert [step_truth.step_truth(q, s) for s in right] == [True] * len(right)
    assert [step_truth.step_truth(q, s) for s in wrong] == [False] * len(wrong)
    assert step_truth.step_truth(q, "Let me add them up.") is None
    assert step_truth.step_truth("0 - 4 - 8 =", "-4 - 8 = -12") is True


def test_without_a_prm_it_ranks_the_labels_by_the_steps_truth(tmp_path, monkeypatch, capsys):
    import sys

    import datasets

    q = "State the final answer to the following arithmetic problem: 8 + 9 - 6 ="
    rows = [  # two right steps labelled right; two wrong steps, one labelled right; two rows not counted
        ("8 + 9 = 17", 1), ("9 - 6 = 3", 1), ("8 + 9 = 16", 0), ("8 + 6 = 14", 1), ("Let me add.", 1), ("17 - 6 = 11", 1),
    ]
    datasets.Dataset.from_list([
        {"problem_id": "p", "question": q, "step": s, "label": y, "terminal": i == len(rows) - 1}
        for i, (s, y) in enumerate(rows)
    ]).save_to_disk(str(tmp_path / "labels"))
    monkeypatch.setattr(sys, "argv", ["step_truth.py", str(tmp_path / "labels")])
    step_truth.main()
    out = capsys.readouterr().out
    assert "4 non-final equation steps of 1 problems" in out
    # positives (right, right, wrong) score (1, 1, 0), the negative (wrong) 0: 2 of 3 pairs won, 1 tied
    assert "against the Monte Carlo label: AUROC 0.833" in out
    assert "(3 of 4 positive)" in out
