"""benchmarks/answer_rows.py: final-answer rows from other trees, their truth only, added to step labels."""

import importlib.util
import json
import sys
from pathlib import Path

from datasets import load_from_disk
from test_data import best_of_n, two_level

from sharpen.core.tree import Tree
from sharpen.train.data import save_dataset, step_labels

spec = importlib.util.spec_from_file_location("answer_rows", Path(__file__).parents[1] / "benchmarks" / "answer_rows.py")
answer_rows = importlib.util.module_from_spec(spec)
spec.loader.exec_module(answer_rows)


def _held_out_tree() -> Tree:
    t = Tree(problem_id="p3", scorer="oracle:4", question="What is 4 + 4?", prompt="Q3\n", reference="8")
    t.add(0, step="Answer: 8", terminal=True, answer="8", correct=True)
    return t


def _write(path: Path, trees: list[Tree]) -> str:
    path.write_text("".join(json.dumps(t.to_dict()) + "\n" for t in trees))
    return str(path)


def test_answer_rows_add_each_final_answer_path_once_with_its_truth_alone(tmp_path, monkeypatch, capsys):
    base = save_dataset(step_labels([best_of_n()]), tmp_path / "labels")
    held = save_dataset(step_labels([_held_out_tree()]), tmp_path / "held")
    a = _write(tmp_path / "a.jsonl", [two_level(), _held_out_tree()])
    b = _write(tmp_path / "b.jsonl", [two_level()])  # the same paths again: nothing new
    out = tmp_path / "mix"
    monkeypatch.setattr(sys, "argv", ["answer_rows.py", str(base), "--trees", a, "--trees", b,
                                      "--exclude", str(held), "--out", str(out)])
    answer_rows.main()
    rows = load_from_disk(str(out)).to_list()
    added = sorted((r for r in rows if r["recipe"] == "answer-truth"), key=lambda r: r["prefix_steps"])
    assert len(rows) == len(load_from_disk(str(base))) + 3
    assert {r["problem_id"] for r in added} == {"p1"}  # p3 is held out; p1's three answer paths, once each
    assert [(r["prefix_steps"], r["step"], r["label"]) for r in added] == [
        (["1 + 2 = 3", "3 + 3 = 6"], "Answer: 6", 1),
        (["1 + 2 = 3", "3 + 3 = 7"], "Answer: 7", 0),
        (["1 + 2 = 4"], "Answer: 7", 0),
    ]
    for r in added:  # only the answer carries a label: the inner steps are the step labels' alone
        assert r["path_labels"] == [-1] * len(r["prefix_steps"]) + [r["label"]]
        assert r["path_values"][:-1] == [-1.0] * len(r["prefix_steps"]) and r["leaf"] and r["terminal"]
    printed = capsys.readouterr().out
    assert f"{a}: 3 final-answer rows" in printed and f"{b}: 0 final-answer rows" in printed
