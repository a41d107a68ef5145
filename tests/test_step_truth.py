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
