"""Step-DPO on hand-made trees: a step with a verified correct terminal below it is never rejected."""

from __future__ import annotations

from sharpen.core.tree import Tree
from sharpen.train.data import step_dpo_pairs

P = "<|user|>What is 2 + 3 + 4?<|end|>\n<|assistant|>"


def unlucky_step() -> Tree:
    """`oracle:k` gave step 1 the value 0 (all k rollouts failed), yet the search itself reached a
    verified correct answer below it:

    root ─ 1 "2 + 3 = 5" (0.0) ─ 3 "5 + 4 = 9" (0.5) ─ 5 "Answer: 9" ✓
         │                    └ 4 "5 + 4 = 8" (0.0) ─ 6 "Answer: 8" ✗
         └ 2 "2 + 3 = 6" (1.0)   (no verified terminal below: its value alone counts)"""
    t = Tree(problem_id="u", scorer="oracle:4", question="What is 2 + 3 + 4?", prompt=P, reference="9")
    t.add(0, step="2 + 3 = 5", score=0.0)
    t.add(0, step="2 + 3 = 6", score=1.0)
    t.add(1, step="5 + 4 = 9", score=0.5)
    t.add(1, step="5 + 4 = 8", score=0.0)
    t.add(3, step="Answer: 9", terminal=True, answer="9", correct=True)
    t.add(4, step="Answer: 8", terminal=True, answer="8", correct=False)
    return t


def test_step_with_correct_terminal_below_is_never_rejected():
    rows = step_dpo_pairs([unlucky_step()]).to_list()
    # before the fix the first step <= 0 on 6's path was 1, rejected against 2 (which is wrong)
    assert all(r["rejected_node_id"] != 1 for r in rows)
    # the first wrong step is 4: no correct terminal below it, against its correct sibling 3
    assert [(r["prefix_node_id"], r["chosen_node_id"], r["rejected_node_id"]) for r in rows] == [(1, 3, 4)]
    assert rows[0]["prompt"] == P + "2 + 3 = 5\n" and rows[0]["rejected"] == "5 + 4 = 8\n"


def test_wrong_step_is_found_below_a_zero_valued_good_step():
    """Step 1 scored 0 but leads to the correct answer 2: the wrong step of the failed 3 is 3 itself,
    against 2 (before the fix 1 was taken as wrong, and having no sibling it gave no pair at all)."""
    t = Tree(problem_id="v", scorer="oracle:4", question="q", prompt=P, reference="9")
    t.add(0, step="2 + 3 = 5", score=0.0)
    t.add(1, step="Answer: 9", terminal=True, answer="9", correct=True)
    t.add(1, step="Answer: 8", terminal=True, answer="8", correct=False)
    rows = step_dpo_pairs([t]).to_list()
    assert [(r["chosen_node_id"], r["rejected_node_id"]) for r in rows] == [(2, 3)]
