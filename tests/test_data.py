"""Dataset builders on hand-made trees: expected rows, edge cases, atomic save."""

from __future__ import annotations

import pytest

from sharpen.core.errors import ConfigError, TaskError
from sharpen.core.io import write_jsonl
from sharpen.core.tree import Tree
from sharpen.train.data import (
    load_dataset_dir,
    load_trees,
    save_dataset,
    step_dpo_pairs,
    step_labels,
    step_pairs,
    trace_pairs,
    verified_traces,
)

P = "<|user|>What is 1 + 2 + 3?<|end|>\n<|assistant|>"


def two_level() -> Tree:
    """root ─ 1 "1 + 2 = 3" (0.8) ─ 3 "3 + 3 = 6" (0.9) ─ 6 "Answer: 6" ✓
                          └ 4 "3 + 3 = 7" (0.0) ─ 7 "Answer: 7" ✗
    ├ 2 "1 + 2 = 4" (0.2) ─ 5 "Answer: 7" ✗
    └ 8 "1 + 2 = 3" (0.5)   (same text as 1, no children)"""
    t = Tree(problem_id="p1", scorer="oracle:4", question="What is 1 + 2 + 3?", prompt=P, reference="6")
    t.add(0, step="1 + 2 = 3", score=0.8)
    t.add(0, step="1 + 2 = 4", score=0.2)
    t.add(1, step="3 + 3 = 6", score=0.9)
    t.add(1, step="3 + 3 = 7", score=0.0)
    t.add(2, step="Answer: 7", terminal=True, answer="7", correct=False)
    t.add(3, step="Answer: 6", terminal=True, answer="6", correct=True)
    t.add(4, step="Answer: 7", terminal=True, answer="7", correct=False)
    t.add(0, step="1 + 2 = 3", score=0.5)
    return t


def best_of_n() -> Tree:
    """One-step solutions: a depth-one tree."""
    t = Tree(problem_id="p2", scorer="oracle:4", question="What is 2 + 2?", prompt="Q2\n", reference="4")
    t.add(0, step="Answer: 4", terminal=True, answer="4", correct=True)
    t.add(0, step="Answer: 5", terminal=True, answer="5", correct=False)
    t.add(0, step="Answer:  4", terminal=True, answer="4", correct=True)  # duplicate after normalising
    return t


def test_step_pairs_best_worst():
    ds = step_pairs([two_level()], min_margin=0.1, round=2)
    rows = ds.to_list()
    assert [(r["prefix_node_id"], r["chosen_node_id"], r["rejected_node_id"]) for r in rows] == [
        (0, 1, 2),
        (1, 3, 4),
    ]
    r0, r1 = rows
    assert r0["prompt"] == P and r0["chosen"] == "1 + 2 = 3\n" and r0["rejected"] == "1 + 2 = 4\n"
    assert (
        r1["prompt"] == P + "1 + 2 = 3\n"
        and r1["chosen"] == "3 + 3 = 6\n"
        and r1["rejected"] == "3 + 3 = 7\n"
    )
    assert r1["chosen_value"] == 0.9 and r1["rejected_value"] == 0.0 and r1["margin"] == 0.9
    assert r0["round"] == 2 and r0["problem_id"] == "p1" and r0["recipe"] == "mcts-dpo/best_worst"


def test_step_pairs_all_skips_same_text_and_small_margin():
    rows = step_pairs([two_level()], min_margin=0.3, pairing="all").to_list()
    got = {(r["chosen_node_id"], r["rejected_node_id"]) for r in rows}
    # 1 vs 8 share the text; 8 vs 2 repeats the texts of 1 vs 2 (deduplicated)
    assert got == {(1, 2), (3, 4)}


def test_step_pairs_stopping_is_a_preference():
    """The format ends with an answer line: an answer line trains on the end token, another step on
    the delimiter, and a rejected step after which the model stopped keeps its end token, so going
    on can be preferred over stopping at the same text."""
    t = Tree(problem_id="stop", scorer="oracle:4", question="What is 7 + 4 - 6?", prompt=P, reference="5", meta={"eos": "<|end|>"})
    go = t.add(0, step="7 + 4 = 11", score=1.0)
    t.add(0, step="7 + 4 = 11", score=0.0, terminal=True, finish_reason="eos", answer="11", correct=False)
    t.add(go.id, step="Answer: 5", score=1.0, terminal=True, finish_reason="answer", answer="5", correct=True)
    t.add(go.id, step="Answer: 11", score=0.0, terminal=True, finish_reason="eos", answer="11", correct=False)
    u = Tree(problem_id="one", scorer="oracle:4", question="What is 6 + 9?", prompt=P, reference="15", meta={"eos": "<|end|>"})
    u.add(0, step="6 + 9 = 15", score=1.0, terminal=True, finish_reason="eos", answer="15", correct=True)
    u.add(0, step="6 + 9 = 14", score=0.0, terminal=True, finish_reason="eos", answer="14", correct=False)
    rows = step_pairs([t, u], min_margin=0.5, pairing="all").to_list()
    assert [(r["chosen"], r["rejected"]) for r in rows] == [
        ("7 + 4 = 11\n", "7 + 4 = 11<|end|>"),
        ("Answer: 5<|end|>", "Answer: 11<|end|>"),
        ("6 + 9 = 15\n", "6 + 9 = 14<|end|>"),  # a correct stop without an answer line: go on instead
    ]
    t.meta.pop("eos")  # no recorded end token: every step ends with the delimiter, equal texts never pair
    assert [r["chosen"] for r in step_pairs([t], min_margin=0.5, pairing="all").to_list()] == ["Answer: 5\n"]


def test_step_pairs_margin_filters_everything():
    assert len(step_pairs([two_level()], min_margin=0.95)) == 0


def test_step_pairs_one_step_solutions_and_all_equal():
    rows = step_pairs([best_of_n()], min_margin=0.5).to_list()
    assert [(r["chosen_node_id"], r["rejected_node_id"]) for r in rows] == [(1, 2)]
    assert rows[0]["prompt"] == "Q2\n"
    t = Tree(problem_id="eq", scorer="oracle:4", question="q")
    for s in ("a", "b", "c"):
        t.add(0, step=s, score=0.5)
    assert len(step_pairs([t], min_margin=0.0, pairing="all")) == 0


def test_step_pairs_no_sibling_and_empty():
    t = Tree(problem_id="chain", scorer="oracle:4", question="q")
    a = t.add(0, step="a", score=0.5)
    t.add(a.id, step="Answer: 1", terminal=True, correct=True)
    assert len(step_pairs([t])) == 0
    ds = step_pairs([])
    assert len(ds) == 0 and "chosen" in ds.column_names
    assert len(step_pairs([Tree(problem_id="e", question="q")])) == 0
    with pytest.raises(ConfigError):
        step_pairs([t], pairing="bogus")  # type: ignore[arg-type]


def test_step_dpo_pairs():
    rows = step_dpo_pairs([two_level()], round=1).to_list()
    # failed 5: first wrong step is 5 itself? path 2 (0.2) -> 5 (0.0): first value <= 0 is 5, no sibling -> none
    # failed 7: path 1 (0.8) -> 4 (0.0): wrong step 4, correct sibling 3
    assert [(r["prefix_node_id"], r["chosen_node_id"], r["rejected_node_id"]) for r in rows] == [(1, 3, 4)]
    assert rows[0]["recipe"] == "step-dpo" and rows[0]["prompt"] == P + "1 + 2 = 3\n"
    # with a threshold the first wrong step of 5's path is 2, against the correct 1
    rows = step_dpo_pairs([two_level()], threshold=0.3).to_list()
    assert {(r["chosen_node_id"], r["rejected_node_id"]) for r in rows} == {(1, 2), (3, 4)}


def test_step_dpo_pairs_one_step_and_edge_cases():
    rows = step_dpo_pairs([best_of_n()]).to_list()
    assert [(r["chosen_node_id"], r["rejected_node_id"]) for r in rows] == [(1, 2)]
    # no correct continuation anywhere: nothing
    t = Tree(problem_id="bad", scorer="oracle:4", question="q")
    t.add(0, step="Answer: 1", terminal=True, correct=False)
    t.add(0, step="Answer: 2", terminal=True, correct=False)
    assert len(step_dpo_pairs([t])) == 0
    assert len(step_dpo_pairs([])) == 0


def test_step_labels():
    rows = step_labels([two_level()], threshold=0.5).to_list()
    by = {r["node_id"]: r for r in rows}
    assert set(by) == {1, 2, 3, 4, 5, 6, 7, 8}
    r = by[4]
    assert r["prompt"] == P and r["prefix_steps"] == ["1 + 2 = 3"] and r["step"] == "3 + 3 = 7"
    assert r["value"] == 0.0 and r["label"] == 0 and not r["leaf"] and r["parent_id"] == 1 and r["depth"] == 2
    assert by[6]["path_labels"] == [1, 1, 1] and by[6]["path_values"] == [0.8, 0.9, 1.0] and by[6]["leaf"]
    assert by[8]["label"] == 1 and by[8]["leaf"] and not by[8]["terminal"]
    assert by[2]["label"] == 0
    assert len(step_labels([])) == 0


def test_verified_traces_dedup():
    rows = verified_traces([two_level(), best_of_n()], round=3).to_list()
    assert [(r["problem_id"], r["node_id"]) for r in rows] == [("p1", 6), ("p2", 1)]
    assert rows[0]["completion"] == "1 + 2 = 3\n3 + 3 = 6\nAnswer: 6" and rows[0]["prompt"] == P
    assert rows[1]["completion"] == "Answer: 4" and rows[1]["num_steps"] == 1 and rows[1]["round"] == 3
    assert len(verified_traces([Tree(problem_id="e", question="q")])) == 0


def test_trace_pairs_whole_solutions_correct_against_wrong():
    t = two_level()
    t.meta["eos"] = "<eos>"
    rows = trace_pairs([t, best_of_n()], per_problem=2, round=2).to_list()
    # p1: the one correct solution (node 6) against each distinct wrong one, in search order (5, then 7)
    assert [(r["problem_id"], r["chosen_node_id"], r["rejected_node_id"]) for r in rows] == [
        ("p1", 6, 5), ("p1", 6, 7), ("p2", 1, 2)]
    assert rows[0]["prompt"] == P and rows[0]["prefix_node_id"] == 0
    assert rows[0]["chosen"] == "1 + 2 = 3\n3 + 3 = 6\nAnswer: 6<eos>"
    assert rows[0]["rejected"] == "1 + 2 = 4\nAnswer: 7<eos>"
    assert rows[1]["rejected"] == "1 + 2 = 3\n3 + 3 = 7\nAnswer: 7<eos>"
    assert {r["recipe"] for r in rows} == {"trace-pairs"} and {r["round"] for r in rows} == {2}
    assert (rows[0]["chosen_value"], rows[0]["rejected_value"], rows[0]["margin"]) == (1.0, 0.0, 1.0)
    # p2's duplicate correct answer ("Answer:  4") is the same solution: one pair, not two
    assert trace_pairs([best_of_n()], per_problem=5).num_rows == 1
    assert [r["rejected_node_id"] for r in trace_pairs([two_level()], per_problem=1).to_list()] == [5]


def test_trace_pairs_need_both_outcomes():
    only_right = Tree(problem_id="r", question="q", prompt="Q\n")
    only_right.add(0, step="Answer: 4", terminal=True, answer="4", correct=True)
    unverified = Tree(problem_id="u", question="q", prompt="Q\n")
    unverified.add(0, step="Answer: 4", terminal=True, answer="4")
    unverified.add(0, step="Answer: 5", terminal=True, answer="5", correct=False)
    assert trace_pairs([only_right, unverified], per_problem=3).num_rows == 0
    with pytest.raises(ConfigError, match="per_problem"):
        trace_pairs([only_right], per_problem=0)


def test_save_and_load_atomic(tmp_path):
    ds = step_pairs([two_level()])
    out = save_dataset(ds, tmp_path / "pairs")
    assert load_dataset_dir(out, ["prompt", "chosen"]).to_list() == ds.to_list()
    save_dataset(step_pairs([]), out)  # replaces
    assert len(load_dataset_dir(out)) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["pairs"]
    with pytest.raises(TaskError):
        load_dataset_dir(out, ["completion"])
    with pytest.raises(TaskError):
        load_dataset_dir(tmp_path / "nothing")


def test_load_trees(tmp_path):
    write_jsonl(tmp_path / "trees.jsonl", [two_level().to_dict(), best_of_n().to_dict()])
    trees = load_trees(tmp_path / "trees.jsonl")
    assert [t.problem_id for t in trees] == ["p1", "p2"] and len(trees[0].nodes) == 9
    assert len(load_trees(tmp_path)) == 2
    with pytest.raises(TaskError):
        load_trees(tmp_path / "missing.jsonl")


def test_outcome_steps_split_whole_solutions_into_steps_labelled_by_the_outcome():
    t = Tree(problem_id="p3", scorer=None, question="What is 1 + 2 + 3?", prompt=P, reference="6")
    t.add(0, step="1 + 2 = 3\n3 + 3 = 6\nAnswer: 6", terminal=True, answer="6", correct=True)
    t.add(0, step="1 + 2 = 4\n\nAnswer: 7", terminal=True, answer="7", correct=False)
    t.add(0, step="Answer: 6", terminal=True, answer="6", correct=True)
    plain = step_labels([t]).to_list()
    assert [r["step"] for r in plain] == [n.step for n in t.nodes[1:]]  # off: one row per node, as before
    rows = step_labels([t], outcome_steps=True).to_list()
    assert [r["step"] for r in rows] == ["1 + 2 = 3", "3 + 3 = 6", "Answer: 6", "1 + 2 = 4", "Answer: 7", "Answer: 6"]
    first = rows[:3]
    assert [r["prefix_steps"] for r in first] == [[], ["1 + 2 = 3"], ["1 + 2 = 3", "3 + 3 = 6"]]
    assert [r["leaf"] for r in rows] == [False, False, True, False, True, True]
    assert [r["terminal"] for r in rows] == [False, False, True, False, True, True]
    assert [r["node_id"] for r in rows] == [-1, -1, 1, -1, 2, 3]
    assert [r["label"] for r in rows] == [1, 1, 1, 0, 0, 1]
    assert rows[2]["path_labels"] == [1, 1, 1] and rows[4]["path_labels"] == [0, 0]
    assert rows[4]["path_values"] == [0.0, 0.0] and rows[4]["depth"] == 2
    # a solution without blank lines reads as the same text split or not (blank lines are dropped)
    assert "\n".join(rows[2]["prefix_steps"] + [rows[2]["step"]]) == t.nodes[1].step
    # only split rows are outcome labels: a one-line solution is its node's own (Monte Carlo) label
    assert [r["recipe"] for r in rows] == ["outcome-labels@0.5"] * 5 + ["mc-labels@0.5"]
