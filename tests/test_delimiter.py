"""A tree's own step delimiter (`tree.meta["delimiter"]`) renders every dataset built from it, and a
PRM trains on, records and scores with the delimiter of its labels."""

from __future__ import annotations

import json

import pytest

from sharpen.core.errors import TaskError
from sharpen.core.tree import Tree
from sharpen.train.data import save_dataset, step_dpo_pairs, step_labels, step_pairs, verified_traces

D = " ;; "
P = "<|user|>What is 1 + 2 + 3?<|end|>\n<|assistant|>"


def tree(delimiter: str | None = D, pid: str = "d") -> Tree:
    """root ─ 1 "1 + 2 = 3" (0.8) ─ 3 "3 + 3 = 6" (0.9) ─ 5 "Answer: 6" ✓
         │                    └ 4 "3 + 3 = 7" (0.0) ─ 6 "Answer: 7" ✗
         └ 2 "1 + 2 = 4" (0.2)"""
    t = Tree(problem_id=pid, scorer="oracle:4", question="What is 1 + 2 + 3?", prompt=P, reference="6")
    if delimiter is not None:
        t.meta["delimiter"] = delimiter
    t.add(0, step="1 + 2 = 3", score=0.8)
    t.add(0, step="1 + 2 = 4", score=0.2)
    t.add(1, step="3 + 3 = 6", score=0.9)
    t.add(1, step="3 + 3 = 7", score=0.0)
    t.add(3, step="Answer: 6", terminal=True, answer="6", correct=True)
    t.add(4, step="Answer: 7", terminal=True, answer="7", correct=False)
    return t


def test_pairs_render_prefix_and_completions_with_the_tree_delimiter():
    rows = {r["prefix_node_id"]: r for r in step_pairs([tree()]).to_list()}
    assert rows[0]["chosen"] == "1 + 2 = 3" + D and rows[0]["rejected"] == "1 + 2 = 4" + D
    assert rows[1]["prompt"] == P + "1 + 2 = 3" + D
    assert rows[1]["chosen"] == "3 + 3 = 6" + D and rows[1]["rejected"] == "3 + 3 = 7" + D
    (r,) = step_dpo_pairs([tree()]).to_list()
    assert (r["prompt"], r["chosen"], r["rejected"]) == (P + "1 + 2 = 3" + D, "3 + 3 = 6" + D, "3 + 3 = 7" + D)


def test_traces_join_steps_with_the_tree_delimiter():
    (r,) = verified_traces([tree()]).to_list()
    assert r["completion"] == D.join(["1 + 2 = 3", "3 + 3 = 6", "Answer: 6"])


def test_labels_carry_the_tree_delimiter_and_trees_without_one_mean_newline():
    rows = step_labels([tree(), tree(None, "n")]).to_list()
    assert {r["delimiter"] for r in rows if r["problem_id"] == "d"} == {D}
    assert {r["delimiter"] for r in rows if r["problem_id"] == "n"} == {"\n"}
    (r,) = verified_traces([tree(None)]).to_list()
    assert r["completion"] == "1 + 2 = 3\n3 + 3 = 6\nAnswer: 6"


def test_prm_encode_puts_labels_on_the_delimiter_token(tiny_model_dir):
    from transformers import AutoTokenizer

    from sharpen.train.prm import encode

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids, pos = encode(tok, P, ["1 + 2 = 3", "Answer: 3"], delimiter=D)
    assert pos[-1] == len(ids) - 1 and pos[0] < pos[1]
    assert tok.decode(ids[: pos[0] + 1]) == P + "1 + 2 = 3" + D  # the label sees the whole delimiter
    # the delimiter's trailing space merges into the next step's " +": the label goes on the token
    # before it, which sees nothing of the next step
    ids, pos = encode(tok, P, ["1 + 2 = 3", "+ 4 = 7"], delimiter=D)
    assert tok.decode([ids[pos[0] + 1]]) == " +"
    assert tok.decode(ids[: pos[0] + 1]) == P + "1 + 2 = 3 ;;"


def test_prm_trains_records_and_scores_with_the_labels_delimiter(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from sharpen.train.prm import PRMModel, PRMTrainConfig, build_trainer, encode, train_prm

    labels = save_dataset(step_labels([tree(pid=f"p{i}") for i in range(2)]), tmp_path / "labels")
    opts = dict(max_steps=1, per_device_train_batch_size=2, save_steps=1, logging_steps=1)
    cfg = PRMTrainConfig(model=tiny_model_dir, data=str(labels), output_dir=str(tmp_path / "prm"), **opts)
    # the labels sit where `encode` with the rows' delimiter puts them
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    trainer = build_trainer(cfg)
    ids, pos = encode(tok, P, ["1 + 2 = 3", "3 + 3 = 6", "Answer: 6"], delimiter=D)
    ex = next(e for e in trainer.train_dataset if e["input_ids"] == ids)
    assert [i for i, lab in enumerate(ex["labels"]) if lab != -100] == pos

    merged = train_prm(cfg)
    assert json.loads((merged / "sharpen_prm.json").read_text())["delimiter"] == D
    prm = PRMModel.load(merged, device="cpu")
    assert prm.delimiter == D
    steps = ["1 + 2 = 3", "3 + 3 = 7"]
    assert prm.score([P], [steps]) == prm.score_encoded([encode(prm.tokenizer, P, steps, 2048, D)])


def test_prm_refuses_labels_with_mixed_delimiters(tiny_model_dir, tmp_path):
    from sharpen.train.prm import PRMTrainConfig, build_trainer

    labels = save_dataset(step_labels([tree(), tree(None, "n")]), tmp_path / "labels")
    cfg = PRMTrainConfig(model=tiny_model_dir, data=str(labels), output_dir=str(tmp_path / "prm"),
                         **dict(max_steps=1, per_device_train_batch_size=2))
    with pytest.raises(TaskError, match="delimiters"):
        build_trainer(cfg)
