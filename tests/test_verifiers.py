"""Learned verifiers as scorers: path aggregation (last, min, prod, mean) and the implicit PRM
beta * log(pi / pi_ref) of a trained policy (arXiv 2412.01981)."""

from __future__ import annotations

import json
import math

import pytest
from conftest import build_tiny_model, random_prm

from sharpen.backends.hf import HFBackend
from sharpen.core.errors import ConfigError
from sharpen.core.tasks import load_task
from sharpen.search.process import LMProcess
from sharpen.search.scorers import ImplicitPRMScorer, aggregate, make_scorer


def test_aggregate():
    xs = [0.9, 0.2, 0.6]
    assert aggregate(xs, "last") == 0.6 and aggregate(xs, "min") == 0.2
    assert aggregate(xs, "prod") == pytest.approx(0.108) and aggregate(xs, "mean") == pytest.approx(17 / 30)
    with pytest.raises(ConfigError, match="agg"):
        make_scorer("prm:/nowhere:agg=median", None)


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    task = load_task("gym:chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1})
    proc = LMProcess(HFBackend(tiny_model_dir, max_batch=8), task, temperature=1.0, step_tokens=5, max_depth=3)
    other = build_tiny_model(str(tmp_path_factory.mktemp("other")), seed=1)  # same tokenizer, other weights
    tree = proc.new_tree(task.problems("test", 1)[0], seed=0)
    (kids,) = proc.expand(tree, [0], 3)
    grand = proc.expand(tree, [k for k in kids if not tree.nodes[k].terminal][:1], 2)[0]
    return proc, tree, kids + grand, other


def _manual(scorer: ImplicitPRMScorer, proc, tree, n: int, agg: str) -> float:
    """beta * sum of log-ratios over each step's tokens, one sequence at a time."""
    ids = proc.backend.tokenizer(tree.prompt, add_special_tokens=False)["input_ids"]
    q, scores = 0.0, []
    for m in tree.path(n):
        for t in m.token_ids:
            lp = [scorer._token_logprobs(model, [ids + [t]])[0, -1].item() for model in scorer.models]
            q += scorer.beta * (lp[0] - lp[1])
            ids = ids + [t]
        scores.append(1 / (1 + math.exp(-q)))
    return aggregate(scores, agg)


@pytest.mark.parametrize("agg", ["last", "min"])
def test_implicit_prm_is_beta_log_ratio_summed_over_steps(setup, tiny_model_dir, agg):
    proc, tree, nodes, other = setup
    scorer = make_scorer(f"implicit:{other}:ref={tiny_model_dir}:beta=0.5:agg={agg}", proc)
    assert isinstance(scorer, ImplicitPRMScorer)
    for n in nodes:
        tree.nodes[n].score = None
    before = proc.meter.snapshot()
    vals = scorer.score(tree, nodes)
    used = proc.meter.snapshot() - before
    assert used.generated_tokens == len(nodes)  # one budget token per node, like a PRM
    prompt = len(proc.backend.tokenizer(tree.prompt, add_special_tokens=False)["input_ids"])
    paths = sum(prompt + sum(m.num_tokens for m in tree.path(n)) for n in nodes)
    assert used.verifier_tokens == 2 * paths and used.prompt_tokens == 0  # both models' forwards, apart
    assert len(set(vals)) > 1
    for n, v in zip(nodes, vals, strict=True):
        assert v == pytest.approx(_manual(scorer, proc, tree, n, agg), abs=1e-5)


def test_implicit_prm_of_the_reference_itself_is_one_half(setup, tiny_model_dir):
    proc, tree, nodes, _ = setup
    for n in nodes:
        tree.nodes[n].score = None
    vals = make_scorer(f"implicit:{tiny_model_dir}:ref={tiny_model_dir}", proc).score(tree, nodes)
    assert vals == pytest.approx([0.5] * len(nodes))


def test_implicit_prm_finds_the_base_in_a_trained_policy_dir(setup, tiny_model_dir, tmp_path):
    proc, tree, nodes, other = setup
    out = tmp_path / "policy"
    (out / "merged").mkdir(parents=True)
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        src = __import__("pathlib").Path(other) / f
        if src.exists():
            (out / "merged" / f).write_bytes(src.read_bytes())
    (out / "sharpen_train.json").write_text(json.dumps({"kind": "dpo", "config": {"model": tiny_model_dir}}))
    scorer = make_scorer(f"implicit:{out}", proc)
    assert scorer.ref_path == tiny_model_dir and scorer.policy_path == str(out / "merged")
    with pytest.raises(ConfigError, match="ref="):
        make_scorer(f"implicit:{other}", proc)  # a bare model dir records no base


LONG_SYSTEM = "Solve step by step, one short step per line, and end with the answer line. " * 4
"""Stands in for a policy prompt's system text and worked examples, which a question-context PRM skips."""


def _labels(problems: range, tmp, name: str):
    """Step labels by hand: a right equation (value 0.9) and a wrong one (0.1) for each problem,
    the wrong one recognisable by its form ('... = ?'), as a malformed step would be."""
    from sharpen.train.data import LABEL_FEATURES, save_dataset, to_dataset

    rows = []
    for i in problems:
        a, b = i % 10, (i * 7) % 10
        for step, v in ((f"{a} + {b} = {a + b}", 0.9), (f"{a} + {b} = ?", 0.1)):
            rows.append({"prompt": f"{LONG_SYSTEM}What is {a} + {b}?\n", "question": f"What is {a} + {b}?",
                         "prefix_steps": [], "step": step, "value": v,
                         "label": int(v >= 0.5), "path_values": [v], "path_labels": [int(v >= 0.5)], "leaf": True,
                         "terminal": False, "problem_id": f"p{i}", "node_id": 1, "parent_id": 0, "depth": 1,
                         "round": 0, "recipe": "test", "delimiter": "\n"})
    return save_dataset(to_dataset(rows, LABEL_FEATURES), tmp / name)


def test_soft_label_prm_ranks_unseen_right_steps_above_wrong(tiny_model_dir, tmp_path):
    from sharpen.train.metrics import prm_auroc
    from sharpen.train.prm import PRMTrainConfig, soft_label_loss, train_prm

    train, held = _labels(range(0, 40), tmp_path, "train"), _labels(range(40, 60), tmp_path, "held")
    # 60 steps: at 30 the outcome hung on the head's initial draw (seed 0 reached only 0.59)
    opts = dict(max_steps=60, per_device_train_batch_size=8, learning_rate=3e-3, lora=False, save_steps=100, logging_steps=10)
    merged = train_prm(PRMTrainConfig(model=tiny_model_dir, data=str(train), output_dir=str(tmp_path / "prm"), **opts,
                                      soft=True))
    m = prm_auroc(merged, __import__("datasets").load_from_disk(str(held)))
    assert m["auroc"] > 0.9 and m["n"] == 40  # problems 40-59 were never trained on
    assert m["inner_steps"]["auroc"] == m["auroc"] and m["final_answer"] is None
    # the soft loss is the cross-entropy against [1 - v, v]: minimal where P(good) = v
    import torch

    logits = torch.log(torch.tensor([[[0.7, 0.3]]]))
    best = soft_label_loss(type("O", (), {"logits": logits})(), torch.tensor([[0.3]]))
    worse = soft_label_loss(type("O", (), {"logits": torch.log(torch.tensor([[[0.4, 0.6]]]))})(), torch.tensor([[0.3]]))
    assert best < worse


def test_question_context_prm_reads_the_bare_question(tiny_model_dir, tmp_path, setup):
    """A PRM trained with context=question reads `question + "\\n"` where the default reads the
    rendered prompt: recorded in sharpen_prm.json, used by training, by prm_auroc and by the scorer
    (which then charges far fewer verifier tokens), and it still learns to rank unseen steps."""
    from sharpen.train.metrics import prm_auroc
    from sharpen.train.prm import PRMModel, PRMTrainConfig, build_trainer, encode, train_prm

    train, held = _labels(range(0, 40), tmp_path, "train"), _labels(range(40, 60), tmp_path, "held")
    opts = dict(max_steps=30, per_device_train_batch_size=8, learning_rate=3e-3, lora=False, save_steps=100,
                logging_steps=10, soft=True)
    cfg = PRMTrainConfig(model=tiny_model_dir, data=str(train), output_dir=str(tmp_path / "q"), context="question", **opts)
    first = build_trainer(cfg).train_dataset[0]["input_ids"]
    tok = __import__("transformers").AutoTokenizer.from_pretrained(tiny_model_dir)
    assert first == encode(tok, "What is 0 + 0?\n", ["0 + 0 = 0"])[0]  # no system text
    merged = train_prm(cfg)
    assert json.loads((merged / "sharpen_prm.json").read_text())["context"] == "question"
    prm = PRMModel.load(merged)
    assert prm.context == "question" and prm.context_of("PROMPT", "Q?") == "Q?\n"
    m = prm_auroc(merged, __import__("datasets").load_from_disk(str(held)))
    assert m["auroc"] > 0.9 and m["n"] == 40

    proc, tree, nodes, _ = setup
    spent = {}
    for name, path in (("question", merged), ("prompt", random_prm(tmp_path / "p", tiny_model_dir, seed=0))):
        for n in nodes:
            tree.nodes[n].score = None
        before = proc.meter.total.verifier_tokens
        make_scorer(f"prm:{path}", proc).score(tree, nodes)
        spent[name] = proc.meter.total.verifier_tokens - before
    q_len = len(tok(tree.question + "\n", add_special_tokens=False)["input_ids"])
    p_len = len(tok(tree.prompt, add_special_tokens=False)["input_ids"])
    assert spent["prompt"] - spent["question"] >= len(nodes) * (p_len - q_len) - len(nodes)
    with pytest.raises(ConfigError, match="context"):
        build_trainer(PRMTrainConfig(model=tiny_model_dir, data=str(train), output_dir=str(tmp_path / "x"),
                                     context="everything", **opts))


def test_pav_scores_value_plus_alpha_times_progress(setup, tiny_model_dir, tmp_path):
    proc, tree, nodes, _ = setup
    random_prm(tmp_path, tiny_model_dir, seed=0)
    for n in nodes:
        tree.nodes[n].score = None
    scorer = make_scorer(f"pav:{tmp_path}:alpha=2", proc)
    vals = scorer.score(tree, nodes)
    prm = scorer.prm
    prompt_ids = prm.encode([tree.prompt], [[]])[0][0]
    head = prm.score_encoded([(prompt_ids, [len(prompt_ids) - 1])])[0][0]  # V before the first step
    for n, v in zip(nodes, vals, strict=True):
        steps = [m.step for m in tree.path(n)]
        per_step = prm.score([tree.prompt], [steps])[0]
        before = per_step[-2] if len(steps) > 1 else head
        assert v == pytest.approx(min(1, max(0, per_step[-1] + 2 * (per_step[-1] - before))), abs=1e-5)
        assert tree.nodes[n].meta["advantage"] == pytest.approx(per_step[-1] - before, abs=1e-5)


def test_prm_calls_of_many_searches_are_batched(tiny_model_dir, tmp_path):
    """Under lockstep batching a PRM scores the nodes of every live search in one pass: fewer forward
    calls, the same trees as searching one problem at a time."""
    from sharpen.search.collect import search_problems

    random_prm(tmp_path, tiny_model_dir, seed=1)
    task = load_task("gym:chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1})
    problems = task.problems("test", 6)

    def run(parallel: int):
        proc = LMProcess(HFBackend(tiny_model_dir, max_batch=32), task, temperature=1.0, step_tokens=4, max_depth=3)
        scorer = make_scorer(f"prm:{tmp_path}:batch=64", proc)
        calls = []
        forward = scorer.prm.model.forward
        scorer.prm.model.forward = lambda *a, **kw: calls.append(1) or forward(*a, **kw)
        trees = search_problems(proc, scorer, "beam", problems, 40, seed=2, parallel=parallel)
        return trees, len(calls)

    one, calls_one = run(1)
    many, calls_many = run(6)
    assert calls_many < calls_one / 2
    for a, b in zip(one, many, strict=True):
        assert [n.step for n in a.nodes] == [n.step for n in b.nodes] and a.answer == b.answer
        assert [n.score for n in a.nodes] == pytest.approx([n.score for n in b.nodes], abs=1e-5)
        assert a.usage["verifier_tokens"] == b.usage["verifier_tokens"] > 0


def test_implicit_prm_scores_many_searches_at_once_as_one_at_a_time(tiny_model_dir, tmp_path, monkeypatch):
    """The implicit scorer under lockstep batching (a sweep's --parallel): the same trees and scores,
    from fewer forward calls (the searches' scoring calls merge into one)."""
    from sharpen.search.collect import search_problems
    from sharpen.search.scorers import ImplicitPRMScorer

    other = build_tiny_model(str(tmp_path / "other"), seed=1)
    task = load_task("gym:chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1})
    problems = task.problems("test", 4)
    calls = []
    inner = ImplicitPRMScorer._log_ratios
    monkeypatch.setattr(ImplicitPRMScorer, "_log_ratios", lambda self, rows: calls.append(len(rows)) or inner(self, rows))

    def run(parallel: int):
        calls.clear()
        proc = LMProcess(HFBackend(tiny_model_dir, max_batch=32), task, temperature=1.0, step_tokens=4, max_depth=3)
        scorer = make_scorer(f"implicit:{other}:ref={tiny_model_dir}", proc)
        return search_problems(proc, scorer, "pf", problems, 32, seed=2, parallel=parallel), list(calls)

    (alone, alone_calls), (together, together_calls) = run(1), run(4)
    assert sum(alone_calls) == sum(together_calls) and len(together_calls) < len(alone_calls)
    for a, b in zip(alone, together, strict=True):
        assert [n.step for n in a.nodes] == [n.step for n in b.nodes] and a.answer == b.answer
        assert [n.score for n in a.nodes] == pytest.approx([n.score for n in b.nodes], abs=1e-5)
        assert a.usage["verifier_tokens"] == b.usage["verifier_tokens"] > 0


def test_omega_finds_the_first_wrong_step_by_binary_search():
    from sharpen.search.algorithms import get_algorithm
    from sharpen.search.toy import RandomWalkProcess, make_problems
    from sharpen.train.data import step_labels

    proc = RandomWalkProcess(horizon=8, p_good=0.6)
    omega = get_algorithm("omega").fn
    found = 0
    trees = []
    for i, p in enumerate(make_problems(30, seed=4, horizon=8)):
        tree = omega(proc, make_scorer("oracle:4", proc, collect=True), p, 2000, seed=i, samples=4)
        tree.scorer = "oracle:4"
        trees.append(tree)
        for end, wrong in tree.meta["first_wrong"].items():
            found += 1
            path = [n.id for n in tree.path(end)]
            at = path.index(wrong)
            assert tree.nodes[wrong].score is not None and tree.nodes[wrong].score <= 0.0
            # every prefix probed before it had a positive value (else the search would have stopped there)
            assert all(tree.nodes[a].score > 0 for a in path[:at] if tree.nodes[a].score is not None)
            probed = [a for a in path[:-1] if tree.nodes[a].score is not None]
            assert len(probed) <= len(path).bit_length()  # O(log n) Monte Carlo estimates
    assert found >= 10
    labels = step_labels(trees)
    assert 0 < sum(labels["label"]) < len(labels)  # both classes, soft values beside them
    assert set(labels["value"]) - {0.0, 1.0}


def test_ranking_prm_learns_to_order_one_problems_own_paths(tiny_model_dir, tmp_path):
    """`ranking` trains on pairs of one problem's right and wrong paths with a reward model's
    Bradley-Terry loss beside the labels' cross-entropy; the PRM then orders the paths of problems it
    never saw (within-problem AUROC, which `prm_auroc` reports beside the pooled one)."""
    import torch

    from sharpen.train.metrics import prm_auroc
    from sharpen.train.prm import PRMTrainConfig, build_trainer, ranking_examples, ranking_loss, train_prm

    rows = [{"problem_id": p, "final": f, "input_ids": [i]} for i, (p, f) in
            enumerate([("a", 1), ("a", 0), ("a", 0), ("a", 0), ("b", 1), ("b", 1), ("c", 0), ("d", 1), ("d", -1)])]
    pairs = ranking_examples(rows, per_right=2, seed=0)
    assert len(pairs) == 2 and {p["right"]["input_ids"][0] for p in pairs} == {0}  # only "a" has both
    assert {p["wrong"]["input_ids"][0] for p in pairs} <= {1, 2, 3}
    # the loss: cross-entropy at the labelled tokens plus weight * -log sigmoid(z_right - z_wrong),
    # z read at each row's last labelled token (row 0 right, row 1 wrong)
    logits = torch.zeros(2, 3, 2)
    logits[0, 1, 1], logits[1, 2, 1] = 2.0, -1.0
    labels = torch.tensor([[-100.0, 1.0, -100.0], [-100.0, -100.0, 0.0]])
    out = type("O", (), {"logits": logits})()
    ce = -(torch.log_softmax(logits[0, 1], -1)[1] + torch.log_softmax(logits[1, 2], -1)[0]) / 2
    assert ranking_loss(0.5)(out, labels).item() == pytest.approx(
        (ce + 0.5 * -torch.nn.functional.logsigmoid(torch.tensor(3.0))).item(), abs=1e-5)

    train, held = _labels(range(0, 40), tmp_path, "train"), _labels(range(40, 60), tmp_path, "held")
    opts = dict(max_steps=30, per_device_train_batch_size=4, learning_rate=3e-3, lora=False, save_steps=100,
                logging_steps=10, context="question")
    cfg = PRMTrainConfig(model=tiny_model_dir, data=str(train), output_dir=str(tmp_path / "r"), ranking=1.0, **opts)
    assert len(build_trainer(cfg).train_dataset) == 40  # one right and one wrong path per problem
    merged = train_prm(cfg)
    m = prm_auroc(merged, __import__("datasets").load_from_disk(str(held)))
    assert m["within_problem"]["problems"] == 20 and m["within_problem"]["auroc"] > 0.9
    with pytest.raises(ConfigError, match="ranking"):
        build_trainer(PRMTrainConfig(model=tiny_model_dir, data=str(train), output_dir=str(tmp_path / "x"),
                                     ranking=-1.0, **opts))


def test_pav_and_implicit_remember_a_bounded_number_of_prompts(setup, tiny_model_dir, tmp_path, monkeypatch):
    """A long-lived server's scorers see a new prompt with every request: each tokenizes a tree's prompt
    once and keeps only the most recently used ones (`LRUDict`), so memory does not grow with the
    requests; a prompt dropped from the cache is tokenized again and scores the same."""
    from sharpen.core.tasks import Problem
    from sharpen.search.scorers import common

    monkeypatch.setattr(common, "PROMPTS_KEPT", 6)  # 256 by default: the same code, fewer prompts to score
    proc, _, _, other = setup
    random_prm(tmp_path, tiny_model_dir, seed=0)
    pav = make_scorer(f"pav:{tmp_path}", proc)
    implicit = make_scorer(f"implicit:{other}:ref={tiny_model_dir}", proc)
    bound = 6
    assert pav._prompt_lens.size == implicit._prompt_ids.size == bound

    def scores(i: int) -> tuple[list, list, str]:
        out = []
        for scorer in (pav, implicit):  # a tree each: a scored node is not scored again
            tree = proc.new_tree(Problem(f"q{i}", f"What is {i} + 1?", str(i + 1)), seed=0)
            node = tree.add(0, step=f"{i} + 1 = {i + 1}", num_tokens=1, token_ids=[11])
            out.append(scorer.score(tree, [node.id])[0])
        return out[0], out[1], tree.prompt

    first = scores(0)
    for i in range(1, bound + 3):
        scores(i)
    assert len(pav._prompt_lens) == bound and len(implicit._prompt_ids) == bound
    assert first[2] not in pav._prompt_lens and first[2] not in implicit._prompt_ids
    again = scores(0)
    assert again[0] == pytest.approx(first[0], abs=1e-6) and again[1] == pytest.approx(first[1], abs=1e-6)
    assert first[0] != pytest.approx(first[1])  # two scorers, two values
