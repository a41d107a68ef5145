"""The OpenAI-compatible server backend against a real server: `transformers serve` on the embedded
model, started by these tests on 127.0.0.1 (no mock server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sharpen.backends.base import SamplingParams, row_seed
from sharpen.core.errors import BackendError, ConfigError

sys.path.insert(0, str(Path(__file__).parent))
from servers import TransformersServer, free_port  # noqa: E402

pytestmark = [pytest.mark.server, pytest.mark.integration]
TASK = ["--task-arg", "min_terms=2", "--task-arg", "max_terms=3", "--task-arg", "min_digits=1",
        "--task-arg", "max_digits=1"]


@pytest.fixture(scope="module")
def model_dir() -> str:
    from sharpen.backends.models import resolve_model

    return str(resolve_model("smollm2-135m"))


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    s = TransformersServer(model_dir, tmp_path_factory.mktemp("server") / "serve.log").start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def tiny_server(tiny_model_dir, tmp_path_factory):
    """The tiny random model behind `transformers serve`: fast, for behaviour that needs no sense."""
    s = TransformersServer(tiny_model_dir, tmp_path_factory.mktemp("tiny-server") / "serve.log").start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def backend(server):
    from sharpen.backends.openai import OpenAIBackend

    b = OpenAIBackend(server.spec + ";in_flight=4")
    yield b
    b.close()


@pytest.fixture(scope="module")
def problems():
    from sharpen.core.tasks import load_task

    task = load_task("gym:chain_sum", {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1})
    return task, task.problems("test", 5)


def sharpen(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "sharpen", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_greedy_text_prompts_and_usage_match_the_hf_backend(backend, model_dir, problems):
    from sharpen.backends.hf import HFBackend

    task, probs = problems
    hf = HFBackend(model_dir, seed=0)
    prompts = [hf.chat_prompt(task.messages(p)) for p in probs]
    assert prompts == [backend.chat_prompt(task.messages(p)) for p in probs]  # rendered here, same template
    params = SamplingParams(n=1, temperature=0.0, max_tokens=48, stop_at="answer")
    before = backend.meter.snapshot()
    ours, theirs = backend.generate(prompts, params), hf.generate(prompts, params)
    assert [r[0].text for r in ours] == [r[0].text for r in theirs]
    assert [task.extract(r[0].text) for r in ours] == [task.extract(r[0].text) for r in theirs]
    used = backend.meter.snapshot() - before
    assert used.generated_tokens == sum(r[0].num_tokens for r in ours) > 0
    assert used.prompt_tokens == sum(backend.count_tokens(p) for p in prompts)  # the server's own count
    assert backend.logprobs_available is False  # transformers serve ignores `logprobs`
    assert all(r[0].logprob != r[0].logprob for r in ours)  # NaN: no log-probabilities, none invented


def test_each_row_samples_from_its_own_seed(tiny_server, problems):
    """One request in flight: `transformers serve` seeds torch's process-global generator per request,
    so two requests sampling at once draw from one stream and a row is reproducible only alone."""
    from sharpen.backends.openai import OpenAIBackend

    backend = OpenAIBackend(tiny_server.spec + ";in_flight=1")
    task, probs = problems
    prompt = backend.chat_prompt(task.messages(probs[0]))
    params = SamplingParams(n=4, temperature=1.3, max_tokens=12, stop_at="answer")
    rows = [c.text for c in backend.generate([prompt], params, seeds=[11])[0]]
    assert rows == [c.text for c in backend.generate([prompt], params, seeds=[11])[0]]  # reproducible
    assert len(set(rows)) > 1  # n is fanned out with one seed per row, not n copies of one
    flat = backend.generate([prompt] * 4, SamplingParams(n=1, temperature=1.3, max_tokens=12, stop_at="answer"),
                            seeds=[row_seed(11, j) for j in range(4)])
    assert [r[0].text for r in flat] == rows  # a row's text depends on its seed only (lockstep batching)
    steps = SamplingParams(n=4, temperature=1.3, max_tokens=12, stop_at="step")
    for c in backend.generate([prompt], steps, seeds=[5])[0]:
        assert c.finish_reason in ("step", "eos", "length")
        assert "\n" not in c.text[:-1] and (c.text.endswith("\n") or c.finish_reason != "step")
    backend.close()


def test_sampling_is_not_truncated_to_the_top_50_tokens(tiny_server, tiny_model_dir, problems):
    """transformers fills unset generation fields with its global defaults, top-k 50 among them; the
    HF backend samples the whole distribution, so the server must be told top_k 0. The tiny random
    model spreads its next-token mass over ~400 tokens, most of it outside its top 50."""
    import torch

    from sharpen.backends.hf import HFBackend
    from sharpen.backends.openai import OpenAIBackend

    hf = HFBackend(tiny_model_dir, seed=0)
    task, probs = problems
    prompt = hf.chat_prompt(task.messages(probs[0]))
    with torch.inference_mode():
        ids = hf.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        probs_next = hf.model(ids).logits[0, -1].float().softmax(-1)
    top = probs_next.topk(50).indices.tolist()
    assert 1.0 - float(probs_next[top].sum()) > 0.5  # the premise: most mass lies outside the top 50
    top_text = {hf.tokenizer.decode([t]) for t in top}
    backend = OpenAIBackend(tiny_server.spec)
    # 48 draws: a draw that decodes to a partial character ('\ufffd') cannot be told from a top-50 token
    # that does too, and 24 draws once left only 5 countable ones outside (a clean-clone CI run)
    rows = backend.generate([prompt], SamplingParams(n=48, temperature=1.0, max_tokens=1, stop_at="answer"),
                            seeds=[3])[0]
    backend.close()
    outside = [c.text for c in rows if c.text and c.text not in top_text]
    assert len(outside) >= 6, [c.text for c in rows]  # with top-k 50 there would be none


def test_features_that_need_logprobs_refuse_without_them(tiny_server, problems):
    from sharpen.api import make_process
    from sharpen.backends.openai import OpenAIBackend
    from sharpen.search.algorithms.mcts import mcts
    from sharpen.search.scorers import make_scorer

    task, probs = problems
    process = make_process(OpenAIBackend(tiny_server.spec), task)
    with pytest.raises(BackendError, match=r"log-probabilities.*transformers serve.*priors=uniform"):
        mcts(process, make_scorer("rollout", process), probs[0], 64, seed=0)
    with pytest.raises(BackendError, match="self"):
        make_scorer("self", process)
    tree = mcts(process, make_scorer("rollout", process), probs[0], 24, seed=0, priors="uniform", k=2)
    assert len(tree.nodes) > 1 and tree.usage["generated_tokens"] > 0


@pytest.mark.slow
def test_sharpen_eval_and_mcts_search_through_the_server(server, tiny_server, tmp_path):
    r = sharpen(["eval", "--model", server.spec, *TASK, "--n", "2", "--samples", "0", "--out", "ev", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["n"] == 2
    r = sharpen(["search", "--model", tiny_server.spec, "--algo", "mcts", "--scorer", "rollout", "--arg", "priors=uniform",
                 "--arg", "k=2", *TASK, "--n", "2", "--budget", "24", "--step-tokens", "6", "--rollout-tokens", "8",
                 "--out", "s"], tmp_path)
    assert r.returncode == 0, r.stderr
    trees = [json.loads(x) for x in (tmp_path / "s" / "trees.jsonl").read_text().splitlines()]
    assert len(trees) == 2 and all(t["usage"]["generated_tokens"] > 0 for t in trees)


@pytest.mark.parametrize("spec, words", [
    ("openai:http://127.0.0.1:{free}/v1#m;retries=0", "cannot reach the server"),
    ("{url}#no-such-model", "does not serve model 'no-such-model'"),
    ("openai:localhost:8000#m", "must start with http://"),
    ("openai:http://127.0.0.1:8000/v1", "no model name"),
    ("openai:http://127.0.0.1:8000/v1#m;colour=red", "bad option"),
])
def test_bad_server_specs_are_one_line_errors(tiny_server, tiny_model_dir, tmp_path, spec, words):
    spec = spec.format(free=free_port(), url=f"openai:{tiny_server.url}")
    spec += f";tokenizer={tiny_model_dir}" if "#m" in spec or "no-such" in spec else ""
    r = sharpen(["eval", "--model", spec, *TASK, "--n", "1", "--out", "ev"], tmp_path)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ev" / "metrics.json").exists()


def test_mcts_with_policy_priors_on_a_server_without_logprobs_is_a_one_line_error(tiny_server, tmp_path):
    r = sharpen(["search", "--model", tiny_server.spec, "--algo", "mcts", "--scorer", "rollout", *TASK, "--n", "1",
                 "--budget", "32", "--out", "s"], tmp_path)
    assert r.returncode == 2 and "priors=uniform" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.slow  # 35 s idle: a server started, killed and started again; `pytest -m slow` runs it
def test_a_server_killed_mid_run_gives_an_error_and_the_run_resumes(tiny_model_dir, tmp_path):
    s = TransformersServer(tiny_model_dir, tmp_path / "serve.log").start()
    args = ["search", "--model", s.spec + ";retries=1;timeout=20", "--algo", "vote", *TASK, "--n", "30",
            "--budget", "40", "--rollout-tokens", "10", "--parallel", "1", "--out", "run"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "sharpen", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trees = tmp_path / "run" / "trees.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (trees.exists() and trees.read_text().strip()):
        time.sleep(0.2)
    s.kill()  # killed while the run goes on
    _, err = proc.communicate(timeout=300)
    first = trees.read_text().splitlines()
    try:
        assert proc.returncode == 2 and "cannot reach the server" in err and "Traceback" not in err, err
        assert 1 <= len(first) < 30
        s.start()  # the same port again
        r = sharpen(args, tmp_path)
        assert r.returncode == 0, r.stderr
        lines = trees.read_text().splitlines()
        assert len(lines) == 30 and lines[: len(first)] == first  # resumed: finished problems kept as they were
    finally:
        s.stop()


def _client_threads() -> int:
    import threading

    return sum(t.name == "sharpen-openai" and t.is_alive() for t in threading.enumerate())


def test_a_failed_row_keeps_the_usage_of_the_rows_that_finished(tiny_server, problems):
    """The server billed the rows that finished before another row failed: the meter counts them."""
    from sharpen.backends.openai import OpenAIBackend

    task, probs = problems
    backend = OpenAIBackend(tiny_server.spec + ";in_flight=4")
    prompt = backend.chat_prompt(task.messages(probs[0]))
    real = backend._request

    async def failing(p, *args, **kw):
        if p == "FAIL":
            raise BackendError("the server at X refused a request (HTTP 400): no (fix: check the server's log)")
        return await real(p, *args, **kw)

    backend._request = failing
    before = backend.meter.snapshot()
    with pytest.raises(BackendError, match="refused a request"):
        backend.generate([prompt, "FAIL", prompt], SamplingParams(n=1, temperature=0.0, max_tokens=6))
    used = backend.meter.snapshot() - before
    backend.close()
    assert used.prompt_tokens == 2 * backend.count_tokens(prompt)  # the two rows that finished, by the server
    assert used.generated_tokens > 0 and used.calls == 1


def test_backends_close_their_thread_and_connections_and_owners_close_them(tiny_server, tiny_model_dir, problems,
                                                                            tmp_path):
    from sharpen import api
    from sharpen.backends.openai import OpenAIBackend
    from sharpen.search.evaluate import EvalConfig
    from sharpen.search.process import SearchSettings
    from sharpen.search.scorers import OracleScorer, ProverRollouts

    start = _client_threads()
    # search, sweep and eval close the backends they load
    settings = SearchSettings(rollout_tokens=6, step_tokens=4, max_depth=2)
    targs = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
    api.search(model=tiny_server.spec, algo="vote", budget=12, n=1, settings=settings, task_args=targs)
    assert _client_threads() == start
    api.sweep(["vote"], [12], model=tiny_server.spec, n=1, settings=settings, task_args=targs, out=tmp_path / "sw")
    assert _client_threads() == start
    api.evaluate(model=tiny_server.spec, n=1, config=EvalConfig(samples=0, max_tokens=6), task_args=targs)
    assert _client_threads() == start
    with OpenAIBackend(tiny_server.spec) as backend:
        assert _client_threads() == start + 1
    assert _client_threads() == start and backend._client.is_closed()
    backend.close()  # a second close does nothing
    # a backend that fails to start leaves nothing running
    with pytest.raises(BackendError, match="cannot reach"):
        OpenAIBackend(f"openai:http://127.0.0.1:{free_port()}/v1#m;retries=0;tokenizer={tiny_model_dir}")
    assert _client_threads() == start
    # a prover's backend closes with the oracle scorer that loaded it
    task, _ = problems
    process = api.make_process(api.load_model(tiny_model_dir), task)
    scorer = OracleScorer(process, 1, collect=True, prover=ProverRollouts(tiny_server.spec))
    assert _client_threads() == start + 1
    scorer.close()
    assert _client_threads() == start


def test_server_spec_parsing():
    from sharpen.backends.openai import ServerSpec

    s = ServerSpec.parse("openai:http://h:1/v1/#org/name;in_flight=3;timeout=5;tokenizer=/t")
    assert (s.base_url, s.model, s.in_flight, s.timeout, s.tokenizer) == ("http://h:1/v1", "org/name", 3, 5.0, "/t")
    with pytest.raises(ConfigError, match="in_flight >= 1"):
        ServerSpec.parse("openai:http://h:1/v1#m;in_flight=0")
    assert ServerSpec.parse("openai:http://h:1/v1#m;logprobs=off").logprobs == "off"
    with pytest.raises(ConfigError, match="logprobs=auto or off"):
        ServerSpec.parse("openai:http://h:1/v1#m;logprobs=no")
