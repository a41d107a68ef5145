"""The OpenAI-compatible server backend against a real llama.cpp server: llama-cpp-python's
`python -m llama_cpp.server` on the embedded model's own GGUF file, started by these tests on
127.0.0.1. The tokenizer and chat template stay client-side (`;tokenizer=smollm2-135m`).

Skipped when llama-cpp-python (with its server extra) is not installed; it compiles llama.cpp on
install: CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF" pip install 'sharpen[llamacpp]'."""

from __future__ import annotations

import json
import math
import sys
import urllib.request
from pathlib import Path

import pytest

from sharpen.backends.base import SamplingParams, row_seed
from sharpen.core.errors import BackendError

pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed (pip install "
                    "'sharpen[llamacpp]', built with the CMAKE_ARGS in pyproject.toml)")

sys.path.insert(0, str(Path(__file__).parent))
from servers import LlamaCppServer, builtin_gguf  # noqa: E402

pytestmark = [pytest.mark.server, pytest.mark.integration]
PROBLEMS = 8
MIN_GREEDY_MATCHES = 6  # of PROBLEMS: Q4_1 weights in llama.cpp vs the same weights dequantized to fp32 in HF


@pytest.fixture(scope="module")
def model_dir() -> str:
    from sharpen.backends.models import resolve_model

    return str(resolve_model("smollm2-135m"))


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    s = LlamaCppServer(builtin_gguf(), tmp_path_factory.mktemp("llamacpp") / "serve.log").start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def backend(server):
    from sharpen.backends.openai import OpenAIBackend

    b = OpenAIBackend(server.spec + ";in_flight=2")
    yield b
    b.close()


@pytest.fixture(scope="module")
def hf(model_dir):
    from sharpen.backends.hf import HFBackend

    return HFBackend(model_dir, seed=0)


@pytest.fixture(scope="module")
def problems():
    from sharpen.core.tasks import load_task

    task = load_task("gym:chain_sum", {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1})
    return task, task.problems("test", PROBLEMS)


def test_greedy_text_matches_the_hf_backend_and_usage_is_the_servers(backend, hf, server, problems):
    task, probs = problems
    prompts = [backend.chat_prompt(task.messages(p)) for p in probs]
    assert backend.llamacpp and backend.logprobs_available and backend.sampling == "standard"
    params = SamplingParams(n=1, temperature=0.0, max_tokens=48, stop_at="answer")
    before = backend.meter.snapshot()
    ours, theirs = backend.generate(prompts, params), hf.generate(prompts, params)
    used = backend.meter.snapshot() - before
    same = sum(a[0].text == b[0].text for a, b in zip(ours, theirs, strict=True))
    print(f"greedy texts equal to the HF backend's: {same}/{len(prompts)}")
    assert same >= MIN_GREEDY_MATCHES, [(a[0].text, b[0].text) for a, b in zip(ours, theirs, strict=True)]
    # the server tokenizes the prompt as we do (GGUF vocabulary vs the converted tokenizer; no BOS added)
    for p in prompts[:2]:
        req = urllib.request.Request(f"{server.base}/extras/tokenize", json.dumps({"input": p}).encode(),
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert json.load(r)["tokens"] == backend.tokenizer(p, add_special_tokens=False)["input_ids"]
    assert used.prompt_tokens == sum(backend.count_tokens(p) for p in prompts)  # the server's own count
    assert used.generated_tokens == sum(r[0].num_tokens for r in ours) > 0
    for a, b in zip(ours, theirs, strict=True):
        c, h = a[0], b[0]
        assert math.isfinite(c.logprob) and c.logprob < 0
        if c.text == h.text and c.finish_reason == h.finish_reason == "eos":
            # llama.cpp counts and scores the tokens before EOS, HF EOS as well: one token and its
            # log-prob apart (0.1-0.5 nats on this model, with the Q4_1 vs fp32 rounding)
            assert c.num_tokens == h.num_tokens - 1 and abs(c.logprob - h.logprob) < 1.0, (c, h)


def test_steps_stop_at_the_delimiter_and_eos_is_told_apart(backend, hf, problems):
    task, probs = problems
    prompts = [backend.chat_prompt(task.messages(p)) for p in probs[:4]]
    params = SamplingParams(n=1, temperature=0.0, max_tokens=32, stop_at="step")
    ours, theirs = backend.generate(prompts, params), hf.generate(prompts, params)
    for a, b in zip(ours, theirs, strict=True):
        c = a[0]
        assert c.finish_reason in ("step", "eos", "length")
        assert (c.finish_reason == "step") == c.text.endswith("\n") and "\n" not in c.text[:-1]
        if c.text == b[0].text:
            assert c.finish_reason == b[0].finish_reason
    # a whole solution step by step: the last row ends with EOS (the delimiter cut, EOS never shown)
    prompt, reasons = prompts[0], []
    for _ in range(8):
        c = backend.generate([prompt], params)[0][0]
        reasons.append(c.finish_reason)
        prompt += c.text
        if c.finish_reason != "step":
            break
    assert reasons[-1] == "eos" and set(reasons[:-1]) <= {"step"}, reasons


def test_each_row_samples_from_its_own_seed(backend, problems):
    task, probs = problems
    prompt = backend.chat_prompt(task.messages(probs[0]))
    params = SamplingParams(n=3, temperature=1.0, max_tokens=10, stop_at="answer")
    rows = [c.text for c in backend.generate([prompt], params, seeds=[11])[0]]
    assert rows == [c.text for c in backend.generate([prompt], params, seeds=[11])[0]]  # reproducible
    assert len(set(rows)) > 1
    flat = backend.generate([prompt] * 3, SamplingParams(n=1, temperature=1.0, max_tokens=10, stop_at="answer"),
                            seeds=[row_seed(11, j) for j in range(3)])
    assert [r[0].text for r in flat] == rows  # a row's text depends on its seed only


def test_mcts_with_policy_priors_and_the_self_scorer_run_through_it(backend, server, problems):
    from sharpen.api import make_process
    from sharpen.search.algorithms.mcts import mcts
    from sharpen.search.process import SearchSettings
    from sharpen.search.scorers import make_scorer

    task, probs = problems
    process = make_process(backend, task, SearchSettings(step_tokens=16, rollout_tokens=24))
    lp = backend.next_token_logprobs([backend.chat_prompt([{"role": "user", "content": "Is 2 + 2 = 4? Yes or No?"}])],
                                     ["Yes", "No"])[0]
    assert max(lp.values()) > -10 and all(v <= 0 for v in lp.values())  # from the server's top 20
    scorer = make_scorer("self", process)  # needs log-probs: accepted here
    tree = mcts(process, scorer, probs[0], 48, seed=0, k=2)  # default priors: the policy's step log-probs
    assert len(tree.nodes) > 2 and tree.usage["generated_tokens"] > 0
    assert all(math.isfinite(n.logprob) and n.logprob <= 0 for n in tree.nodes[1:])
    priors = [n.prior for n in tree.nodes[1:] if not n.meta.get("rollout") and not n.meta.get("complete")]
    assert all(0 < p <= 1 for p in priors) and any(abs(p - 0.5) > 0.01 for p in priors)  # the policy's, not 1/k
    log = server.log.read_text()
    assert "prefix-match hit" in log  # llama-cpp-python reused the shared prompt's KV (it reports no cached count)


def test_logprobs_off_asks_for_none(server, problems):
    from sharpen.api import make_process
    from sharpen.backends.openai import OpenAIBackend
    from sharpen.search.scorers import make_scorer

    task, probs = problems
    b = OpenAIBackend(server.spec + ";logprobs=off")
    assert b.llamacpp and b.logprobs_available is False
    c = b.generate([b.chat_prompt(task.messages(probs[0]))], SamplingParams(n=1, temperature=0, max_tokens=8,
                                                                           stop_at="step"))[0][0]
    assert math.isnan(c.logprob) and c.finish_reason in ("step", "length")
    with pytest.raises(BackendError, match=r"self.*;logprobs=off.*fix:"):
        make_scorer("self", make_process(b, task))
    b.close()


def test_a_server_without_logprobs_refuses_policy_priors(model_dir, tmp_path, problems):
    from sharpen.api import make_process
    from sharpen.backends.openai import OpenAIBackend
    from sharpen.search.algorithms.mcts import mcts
    from sharpen.search.scorers import make_scorer

    task, probs = problems
    s = LlamaCppServer(builtin_gguf(), tmp_path / "serve.log", extra=["--logits_all", "false"]).start()
    try:
        b = OpenAIBackend(s.spec + ";retries=0")
        assert b.llamacpp and b.logprobs_available is False
        with pytest.raises(BackendError, match=r"log-probabilities.*--logits_all false.*priors=uniform"):
            mcts(make_process(b, task), make_scorer("rollout", make_process(b, task)), probs[0], 32, seed=0)
        c = b.generate([b.chat_prompt(task.messages(probs[0]))], SamplingParams(n=1, temperature=0, max_tokens=8))
        assert c[0][0].num_tokens > 0 and math.isnan(c[0][0].logprob)
        with pytest.raises(BackendError, match=r"does not serve model 'other'.*smollm2-135m.*fix:") as e:
            OpenAIBackend(s.spec.replace("#smollm2-135m", "#other"))
        assert "\n" not in str(e.value)
        s.kill()
        with pytest.raises(BackendError, match="cannot reach the server") as e:
            b.generate([b.chat_prompt(task.messages(probs[0]))], SamplingParams(n=1, max_tokens=4))
        assert "\n" not in str(e.value)
        b.close()
    finally:
        s.stop()
