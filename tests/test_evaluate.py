import math

import pytest

from sharpen.core.io import read_jsonl
from sharpen.core.tasks import load_task
from sharpen.search.evaluate import EvalConfig, evaluate, ks_up_to, pass_at_k


def test_pass_at_k_unbiased():
    assert pass_at_k(8, 0, 1) == 0.0
    assert pass_at_k(8, 8, 4) == 1.0
    assert math.isclose(pass_at_k(8, 2, 1), 2 / 8)
    assert math.isclose(pass_at_k(4, 1, 2), 1 - math.comb(3, 2) / math.comb(4, 2))
    assert pass_at_k(8, 7, 2) == 1.0


def test_ks():
    assert ks_up_to(8) == [1, 2, 4, 8]
    assert ks_up_to(6) == [1, 2, 4, 6]


def test_evaluate_writes_rows_and_resumes(tiny_backend, tmp_path):
    task = load_task("gym:chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1})
    problems = task.problems("test", 3)
    cfg = EvalConfig(samples=2, max_tokens=8, seed=0, problems_per_call=2)
    path = tmp_path / "p.jsonl"
    m = evaluate(tiny_backend, task, problems, cfg, out_jsonl=path)
    rows = list(read_jsonl(path))
    assert [r["id"] for r in rows] == [p.id for p in problems]
    assert m["n"] == 3 and set(m) >= {"greedy", "pass@1", "pass@2", "majority@2", "mean_tokens", "tokens_per_second"}
    # resume: nothing new generated when every problem is already there
    before = tiny_backend.meter.snapshot().generated_tokens
    m2 = evaluate(tiny_backend, task, problems, cfg, out_jsonl=path)
    assert tiny_backend.meter.snapshot().generated_tokens == before
    assert m2["pass@1"] == pytest.approx(m["pass@1"])


def test_greedy_rows_do_not_depend_on_batch(tiny_model_dir, tmp_path):
    """`eval.batch` is a speed knob: the greedy rows are the same at any batch size."""
    from sharpen.backends import load_backend

    task = load_task("gym:chain_sum", {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1})
    problems = task.problems("test", 6)
    rows = []
    for batch in (1, 4):
        backend = load_backend(tiny_model_dir, seed=0, max_batch=batch)
        cfg = EvalConfig(samples=0, max_tokens=12, seed=0, problems_per_call=batch)
        evaluate(backend, task, problems, cfg, out_jsonl=tmp_path / f"b{batch}.jsonl")
        rows.append([r["greedy"] for r in read_jsonl(tmp_path / f"b{batch}.jsonl")])
    assert len(rows[0]) == 6 and rows[0] == rows[1]
