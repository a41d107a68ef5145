"""The language-model process and its scorers on a tiny randomly initialised llama (fast, no
download): the same algorithm code that searches the toy searches text."""

from __future__ import annotations

import pytest

from sharpen.core.tasks import Problem, Task
from sharpen.search.algorithms import ALGORITHMS
from sharpen.search.scorers import PRMScorer, SelfScorer, make_scorer

PROBLEM = Problem("add-2-3", "What is 2 + 3?", "5")


class AddTask(Task):
    name = "add"

    def verify(self, problem, answer):
        return self.vote_key(answer) == self.vote_key(problem.answer)


@pytest.fixture()
def lm_process(tiny_backend):
    from sharpen.search.process import LMProcess

    return LMProcess(tiny_backend, AddTask(), temperature=1.0, step_tokens=6, rollout_tokens=16, max_depth=3)


def test_lm_process_expand_and_rollout(lm_process):
    proc = lm_process
    tree = proc.new_tree(PROBLEM, seed=1)
    assert tree.prompt.endswith("<|assistant|>") and tree.reference == "5"
    assert tree.meta["eos"] == "<|end|>"  # the end token, for pairs about stopping
    before = proc.meter.total.generated_tokens
    (kids,) = proc.expand(tree, [0], 3)
    assert len(kids) == 3
    assert abs(sum(tree.nodes[c].prior for c in kids) - 1.0) < 1e-6
    spent = proc.meter.total.generated_tokens - before
    assert spent == sum(tree.nodes[c].num_tokens for c in kids)
    for c in kids:
        node = tree.nodes[c]
        assert 0 < node.num_tokens <= 6 and node.logprob <= 0 and "\n" not in node.step
        assert node.terminal == (node.finish_reason == "eos" or node.step.strip().lower().startswith("answer:"))
    # rollouts: k completions to the end from a node, metered, not added to the tree
    node = tree.add(0, step="2 + 3 = 5", terminal=False)
    size, before = len(tree.nodes), proc.meter.total.generated_tokens
    (rolls,) = proc.rollout(tree, [node.id], 2)
    assert len(rolls) == 2 and len(tree.nodes) == size
    assert proc.meter.total.generated_tokens - before == sum(r.num_tokens for r in rolls)
    for r in rolls:
        assert 0 < r.num_tokens <= 16 and r.logprob < 0 and r.finish_reason in {"eos", "answer", "length"}
        assert r.finish_reason != "length" or r.num_tokens == 16
        assert r.text.startswith("2 + 3 = 5\n") and r.answer == AddTask().extract(r.text)
    done = tree.add(0, step="Answer: 5", terminal=True, answer="5")
    before = proc.meter.total.generated_tokens
    assert proc.rollout(tree, [done.id], 2) == [[]]  # a finished solution has nothing to complete
    assert proc.meter.total.generated_tokens == before
    # depth cap: every node at max_depth is terminal
    deep = [node.id]  # unfinished, so the walk down takes at least one step
    while deep and not tree.nodes[deep[0]].terminal:
        deep = proc.expand(tree, deep, 1)[0]
    assert deep and tree.nodes[deep[0]].terminal and tree.nodes[deep[0]].depth <= 3


@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_algorithms_on_tiny_lm(lm_process, algo):
    proc = lm_process
    scorer = make_scorer("self", proc)
    budget = 48
    a = ALGORITHMS[algo](proc, scorer, PROBLEM, budget, seed=3)
    assert a.usage["generated_tokens"] <= budget + proc.rollout_tokens
    assert len(a.nodes) > 1 and a.algo == algo
    b = ALGORITHMS[algo](proc, scorer, PROBLEM, budget, seed=3)
    da, db = a.to_dict(), b.to_dict()
    da.pop("usage"), db.pop("usage")
    assert da == db


def test_self_and_rollout_scorers_on_tiny_lm(lm_process):
    proc = lm_process
    tree = proc.new_tree(PROBLEM, seed=0)
    (kids,) = proc.expand(tree, [0], 2)
    s = SelfScorer(proc)
    before = proc.meter.total.generated_tokens
    vals = s.score(tree, kids)
    assert all(0.0 <= v <= 1.0 for v in vals)
    assert proc.meter.total.generated_tokens - before == len(kids)
    assert "Yes or No" in s.prompt(tree, kids[0])
    # rollout:2: an unfinished node's value is the share of its 2 completions that agree with their
    # own majority answer; a finished one is 1 with an answer, else 0
    tree = proc.new_tree(PROBLEM, seed=0)  # unscored nodes (a scored node is not scored again)
    (kids,) = proc.expand(tree, [0], 2)
    kids += [tree.add(0, step="2 + 3 = 5").id, tree.add(0, step="Answer: 5", terminal=True, answer="5").id]
    r = make_scorer("rollout:2", proc)
    before = proc.meter.total.generated_tokens
    vals = r.score(tree, kids)
    spent = proc.meter.total.generated_tokens - before
    inner = [c for c in kids if not tree.nodes[c].terminal]
    assert 0 < spent <= 2 * proc.rollout_tokens * len(inner)
    for c, v in zip(kids, vals, strict=True):
        node = tree.nodes[c]
        if node.terminal:
            assert v == (1.0 if proc.vote_key(node.answer) is not None else 0.0)
            continue
        keys = [proc.vote_key(a) for a in node.meta["rollouts"]]
        assert len(keys) == 2 and v == max((keys.count(k) for k in keys if k is not None), default=0) / 2
    assert r.score(tree, kids) == vals and proc.meter.total.generated_tokens - before == spent  # cached


def test_prm_scorer_with_tiny_token_classifier(lm_process, tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForTokenClassification

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, num_labels=2, pad_token_id=tok.pad_token_id)
    LlamaForTokenClassification(cfg).save_pretrained(tmp_path / "merged")
    tok.save_pretrained(tmp_path / "merged")
    proc = lm_process
    scorer = make_scorer(f"prm:{tmp_path}", proc)
    assert isinstance(scorer, PRMScorer)
    tree = proc.new_tree(PROBLEM, seed=0)
    (kids,) = proc.expand(tree, [0], 3)
    before = proc.meter.total.generated_tokens
    vals = scorer.score(tree, kids)
    assert all(0.0 <= v <= 1.0 for v in vals)
    assert proc.meter.total.generated_tokens - before == len(kids)
    tree2 = ALGORITHMS["beam"](proc, scorer, PROBLEM, 40, seed=0, width=2, expansions=2)
    assert tree2.usage["generated_tokens"] <= 40 + proc.rollout_tokens


def test_prm_scorer_bad_path(lm_process, tmp_path):
    from sharpen.core.errors import ModelError

    with pytest.raises(ModelError):
        make_scorer(f"prm:{tmp_path / 'nope'}", lm_process)


def test_strict_answers_credit_only_answer_lines(tiny_backend):
    """With strict answers a solution without an `Answer:` line has no answer (so it is never
    verified correct); the lenient default falls back to "the answer is" / the last number."""
    from sharpen.search.process import LMProcess

    task = AddTask()
    assert task.extract("2 + 3 = 5\nThe answer is 5.") == "5"
    assert task.extract("2 + 3 = 5\nThe answer is 5.", strict=True) is None
    assert task.extract("2 + 3 = 5\nAnswer: 5", strict=True) == "5"
    opts = dict(temperature=1.0, step_tokens=6, rollout_tokens=16, max_depth=3)
    strict = LMProcess(tiny_backend, task, strict_answers=True, **opts)
    lenient = LMProcess(tiny_backend, task, **opts)
    tree = strict.new_tree(PROBLEM, seed=1)
    node = tree.add(0, step="2 + 3 = 5", terminal=False)
    said = tree.add(node.id, step="The answer is 5.", terminal=False)
    line = tree.add(node.id, step="Answer: 5", terminal=False)
    assert strict.answer(tree, node.id) is None and lenient.answer(tree, node.id) == "5"
    assert strict.answer(tree, said.id) is None and lenient.answer(tree, said.id) == "5"
    assert strict.answer(tree, line.id) == "5" == lenient.answer(tree, line.id)
    assert strict.verify(tree, strict.answer(tree, line.id)) and not strict.verify(tree, strict.answer(tree, said.id))
    (rollouts,) = strict.rollout(tree, [node.id], 3)
    assert len(rollouts) == 3
    for r in rollouts:
        assert task.extract(r.text) is not None  # read leniently, every one has an answer (at least the 5)
        assert r.answer == task.extract(r.text, strict=True)


def test_self_scorer_without_yes_or_no_in_top_logprobs(lm_process, monkeypatch):
    """A server whose top log-probs hold neither "Yes" nor "No" gives both -inf: the value is 0.5
    (no information), never NaN; one missing answer gives 0 or 1."""
    import math

    proc = lm_process
    tree = proc.new_tree(PROBLEM, seed=0)
    kids = [tree.add(0, step=f"step {i}").id for i in range(3)]
    rows = [{"Yes": -math.inf, "No": -math.inf}, {"Yes": -0.1, "No": -math.inf}, {"Yes": -math.inf, "No": -2.0}]
    monkeypatch.setattr(proc, "next_token_logprobs", lambda prompts, cands: rows[: len(prompts)])
    assert SelfScorer(proc).score(tree, kids) == [0.5, 1.0, 0.0]
