"""`sharpen serve` as a real server process, called with the official `openai` client."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from servers import SharpenServer  # noqa: E402

openai = pytest.importorskip("openai")
pytestmark = [pytest.mark.server, pytest.mark.integration]
ARGS = ["--model", "smollm2-135m", "--budget", "48", "--step-tokens", "16", "--rollout-tokens", "24"]
Q = [{"role": "user", "content": "What is 3 + 4 - 2?"}]
PLUGIN = '''
from sharpen.search.registry import Options, algorithm


@algorithm("boom", Options, needs_scorer=False)
def boom(process, scorer, problem, budget_tokens, seed=0, **options):
    """Fails inside the server."""
    raise RuntimeError("secret internal detail /srv/private/weights")


@algorithm("upstream", Options, needs_scorer=False)
def upstream(process, scorer, problem, budget_tokens, seed=0, **options):
    """The model server behind this one fails: its address and reply are the operator's, not the client's."""
    from sharpen.core.errors import BackendError

    raise BackendError("the model server at http://10.0.0.5:8000/v1 failed: secret upstream detail")
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Two scorers: rollout (the default) and quick (rollout:k=1)."""
    s = SharpenServer([*ARGS, "--max-budget", "100000", "--scorer", "rollout", "--scorer", "quick=rollout:k=1"],
                      tmp_path_factory.mktemp("serve") / "log").start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A server with an API key read from a file and a queue of 1."""
    d = tmp_path_factory.mktemp("guarded")
    (d / "key").write_text("sekret\n")
    s = SharpenServer([*ARGS, "--api-key-file", str(d / "key"), "--queue", "1"], d / "log").start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    """A server with its API key from the environment, a 2 s timeout, a 4096-byte body limit and a
    plugin algorithm `boom` that raises inside the search."""
    d = tmp_path_factory.mktemp("strict")
    (d / "boom_plugin.py").write_text(PLUGIN)
    path = os.pathsep.join(filter(None, [str(d), os.environ.get("PYTHONPATH")]))
    s = SharpenServer([*ARGS, "--timeout", "2", "--max-body", "4096", "--scorer", "rollout"], d / "log",
                      env={"SHARPEN_API_KEY": "from-env", "SHARPEN_PLUGINS": "boom_plugin", "PYTHONPATH": path}).start()
    yield s
    s.stop()


def client(s: SharpenServer, key: str = "none", **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{s.base}/v1", api_key=key, max_retries=0, **kw)


def get(url: str, key: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def post(url: str, data: bytes, key: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def raw_post(s: SharpenServer, headers: dict[str, str], body, chunked: bool = False) -> tuple[int, dict]:
    """POST /v1/chat/completions with exactly these headers (a Content-Length that need not match
    the body, or a chunked body without one)."""
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=20)
    try:
        if chunked:
            conn.request("POST", "/v1/chat/completions", body=body, headers=headers, encode_chunked=True)
        else:
            conn.putrequest("POST", "/v1/chat/completions", skip_accept_encoding=True)
            for k, v in headers.items():
                conn.putheader(k, v)
            conn.endheaders(body)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def requests_total(s: SharpenServer, key: str | None = None) -> dict[str, float]:
    """sharpen_requests_total by HTTP status, from /metrics."""
    text = get(f"{s.base}/metrics", key)[1]
    return {m[0]: float(m[1]) for m in re.findall(r'sharpen_requests_total\{status="(\d+)"\} ([0-9.]+)', text)}


def wait_for_empty_queue(s: SharpenServer, key: str | None = None, within: float = 60) -> float:
    """Seconds until /health reports no request queued or searched (`within` at most)."""
    t0 = time.time()
    while time.time() - t0 < within and json.loads(get(f"{s.base}/health", key)[1])["queue"] > 0:
        time.sleep(0.2)
    assert json.loads(get(f"{s.base}/health", key)[1])["queue"] == 0
    return time.time() - t0


def test_a_request_gets_a_searched_answer_with_usage_and_its_tree(server):
    r = client(server).chat.completions.create(model="smollm2-135m", messages=Q,
                                               extra_body={"search": {"algo": "vote", "budget": 48, "seed": 1}})
    extra = r.model_extra["sharpen"]
    assert r.choices[0].message.role == "assistant" and isinstance(r.choices[0].message.content, str)
    assert extra["algo"] == "vote" and extra["budget"] == 48 and sum(extra["votes"].values()) >= 1
    assert 0 < r.usage.completion_tokens <= 48 + 24  # within the budget's bound
    assert r.usage.model_extra["forward_tokens"] >= r.usage.total_tokens
    status, body = get(f"{server.base}/v1/trees/{extra['tree_id']}")
    tree = json.loads(body)
    assert status == 200 and tree["answer"] == extra["answer"] and tree["algo"] == "vote"
    assert get(f"{server.base}/v1/models")[0] == 200 and get(f"{server.base}/health")[0] == 200
    status, text = get(f"{server.base}/metrics")
    assert status == 200 and 'sharpen_requests_total{status="200"}' in text and "sharpen_queue_depth" in text


@pytest.mark.parametrize("body, words", [
    ({"messages": Q, "search": {"algo": "nope"}}, "unknown algorithm"),
    ({"messages": Q, "search": {"algo": "bon", "scorer": "bogus"}}, "scorer"),
    ({"messages": Q, "search": {"budget": 10**9}}, "outside 1..100000"),
    ({"messages": []}, "messages must be a non-empty list"),
    ({"messages": Q, "search": {"algo": "bon", "scorer": "oracle"}}, "one of rollout, quick or none"),
    ({"messages": Q, "search": {"algo": "mcts", "kk": 2, "scorer": "rollout"}}, "kk"),
    ({"messages": Q, "search": {"budget": "lots"}}, "option budget='lots'"),
    ({"messages": Q, "search": {"algo": ["vote"]}}, "option algo="),
])
def test_bad_requests_get_a_400_with_one_line_and_the_server_keeps_serving(server, body, words):
    with pytest.raises(openai.BadRequestError) as e:
        client(server).chat.completions.create(model="m", messages=body["messages"],
                                               extra_body={k: v for k, v in body.items() if k != "messages"})
    message = e.value.body["message"]
    assert words in message and "\n" not in message
    assert post(f"{server.base}/v1/chat/completions", b"{not json")[0] == 400
    r = client(server).chat.completions.create(model="m", messages=Q, extra_body={"search": {"budget": 16}})
    assert r.choices[0].message.content is not None


def test_api_key_and_a_full_queue(guarded):
    with pytest.raises(openai.AuthenticationError):
        client(guarded).chat.completions.create(model="m", messages=Q)
    with pytest.raises(openai.AuthenticationError):
        client(guarded, "wrong").chat.completions.create(model="m", messages=Q)
    assert get(f"{guarded.base}/v1/models")[0] == 401 and get(f"{guarded.base}/v1/models", "sekret")[0] == 200
    assert get(f"{guarded.base}/v1/models", "sékret")[0] == 401  # a non-ASCII header: refused, not a 500
    for path in ("/docs", "/redoc", "/openapi.json"):  # the docs behind the key too
        assert get(f"{guarded.base}{path}")[0] == 401 and get(f"{guarded.base}{path}", "sekret")[0] == 200, path
    assert "/v1/chat/completions" in json.loads(get(f"{guarded.base}/openapi.json", "sekret")[1])["paths"]

    def one(_: int) -> tuple[int, str | None]:
        try:
            client(guarded, "sekret").chat.completions.create(model="m", messages=Q, extra_body={"search": {"budget": 200}})
            return 200, None
        except openai.RateLimitError as e:
            return 429, e.response.headers.get("retry-after")

    with ThreadPoolExecutor(3) as pool:  # a failure in a request's thread fails the test here
        results = list(pool.map(one, range(3)))
    statuses = [status for status, _ in results]
    assert statuses.count(429) >= 1 and statuses.count(200) >= 1
    assert all(retry == "1" for status, retry in results if status == 429), results
    assert requests_total(guarded, "sekret")["401"] == 7  # chat calls, GETs and the docs: no work done


def test_a_client_that_disconnects_stops_its_search(server):
    before = requests_total(server)
    c = client(server, timeout=1.0)
    with pytest.raises(openai.APITimeoutError):  # still searching after 1 s
        c.chat.completions.create(model="m", messages=Q,
                                  extra_body={"search": {"algo": "mcts", "scorer": "rollout", "budget": 50000}})
    wait_for_empty_queue(server)  # not the minutes 50,000 tokens would take
    after = requests_total(server)
    assert after.get("499", 0) == before.get("499", 0) + 1  # counted as a client that left ...
    assert after.get("200", 0) == before.get("200", 0) and after.get("500", 0) == before.get("500", 0)  # ... only


def test_a_request_names_only_a_scorer_the_server_started_with(server):
    r = client(server).chat.completions.create(model="m", messages=Q,
                                               extra_body={"search": {"algo": "bon", "scorer": "quick", "budget": 24}})
    assert r.model_extra["sharpen"]["scorer"] == "quick"
    messages = set()
    for spec in ("self", "rollout:k=2", "prm:/etc", "prm:/no/such/dir", "../../etc/passwd", 3):
        t0 = time.time()
        with pytest.raises(openai.BadRequestError) as e:
            client(server).chat.completions.create(model="m", messages=Q,
                                                   extra_body={"search": {"algo": "bon", "scorer": spec}})
        assert time.time() - t0 < 10  # refused, nothing loaded
        messages.add(e.value.body["message"])
    named = [m for m in messages if "names no scorer" in m]
    assert len(named) == 1 and "one of rollout, quick or none" in named[0] and "\n" not in named[0]
    assert not any(word in m for m in messages for word in ("/etc", "/no/such", "passwd", "self"))
    assert requests_total(server).get("500", 0) == 0


def test_a_body_past_the_limit_is_refused_before_it_is_parsed(server, strict):
    json_headers = {"Content-Type": "application/json"}
    status, body = raw_post(server, {**json_headers, "Content-Length": "2000000"}, b"{}")  # declared: not read
    assert status == 413 and "1000000 bytes" in body["error"]["message"]
    pad = json.dumps({"messages": Q, "pad": "x" * 1_050_000}).encode()
    chunks = (pad[i:i + 65536] for i in range(0, len(pad), 65536))
    status, body = raw_post(server, json_headers, chunks, chunked=True)  # no length: the bytes received count
    assert status == 413 and "--max-body" in body["error"]["message"] and "\n" not in body["error"]["message"]
    status, body = post(f"{strict.base}/v1/chat/completions", json.dumps({"messages": Q, "pad": "x" * 5000}).encode(),
                        "from-env")
    assert status == 413 and "4096 bytes" in body["error"]["message"]
    assert requests_total(server)["413"] == 2


def test_a_prompt_past_the_context_window_is_a_400_before_it_is_searched(server):
    pattern = r"the prompt is (\d+) tokens and a row of this server's searches may add (\d+): past the model's " \
              r"context window of (\d+) tokens"

    def ask(n: int) -> tuple[int, int, int]:
        t0 = time.time()
        with pytest.raises(openai.BadRequestError) as e:
            client(server, timeout=30).chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x " * n + "What is 3 + 4?"}])
        assert time.time() - t0 < 10 and "\n" not in e.value.body["message"]
        found = re.search(pattern, e.value.body["message"])
        assert found, e.value.body["message"]
        return tuple(int(x) for x in found.groups())  # type: ignore[return-value]

    prompt, row, context = ask(9000)
    assert context == 8192 and row >= 6 * 16 and prompt > context
    # a prompt that fits the window by itself, but not with the longest row a search may add
    prompt2, _, _ = ask(9000 - (prompt - (context - row // 2)))
    assert context - row < prompt2 <= context
    assert json.loads(get(f"{server.base}/health")[1])["queue"] == 0


def test_the_api_key_from_the_environment(strict):
    with pytest.raises(openai.AuthenticationError):
        client(strict).chat.completions.create(model="m", messages=Q)
    assert get(f"{strict.base}/v1/models", "from-env")[0] == 200 and get(f"{strict.base}/docs")[0] == 401


def test_a_search_past_the_timeout_gets_a_504_and_stops(strict):
    t0 = time.time()
    with pytest.raises(openai.APIStatusError) as e:
        client(strict, "from-env", timeout=60).chat.completions.create(
            model="m", messages=Q, extra_body={"search": {"algo": "mcts", "budget": 4000}})
    assert e.value.status_code == 504 and 2 <= time.time() - t0 < 30
    message = e.value.body["message"]
    assert "longer than 2 s" in message and "(fix:" in message and "\n" not in message
    wait_for_empty_queue(strict)  # stopped at its next backend call, not after 4,000 tokens
    assert requests_total(strict, "from-env")["504"] == 1


@pytest.mark.parametrize("algo,logged", [("boom", "RuntimeError: secret internal detail"),
                                         ("upstream", "BackendError: the model server at http://10.0.0.5")])
def test_a_failure_inside_the_server_is_a_500_that_names_only_a_request_id(strict, algo, logged):
    """An error of the server's own (a bug, or the model server behind it failing) is a 500 naming a
    request id; what it says goes to the server's log, never to the client."""
    with pytest.raises(openai.InternalServerError) as e:
        client(strict, "from-env").chat.completions.create(model="m", messages=Q, extra_body={"search": {"algo": algo}})
    message = e.value.body["message"]
    found = re.fullmatch(r"internal error \(request id ([0-9a-f]+)\)", message)
    assert e.value.status_code == 500 and found, message
    assert e.value.response.headers["x-request-id"] == found.group(1)
    assert "secret" not in e.value.response.text and "Error" not in e.value.response.text.replace("InternalServer", "")
    assert "10.0.0.5" not in e.value.response.text
    log = strict.log.read_text()
    assert f"request {found.group(1)}" in log and logged in log  # the server's log
    assert get(f"{strict.base}/health")[0] == 200


def test_serve_refuses_unsafe_or_wrong_settings_before_it_binds(tmp_path):
    (tmp_path / "empty").write_text("\n")
    env = {k: v for k, v in os.environ.items() if k != "SHARPEN_API_KEY"}
    cases = {
        "--insecure": ["--host", "0.0.0.0"],
        "empty": ["--api-key-file", str(tmp_path / "empty")],
        "not a file": ["--api-key-file", str(tmp_path / "missing")],
        "unknown scorer": ["--scorer", "bogus"],
        "reference answers": ["--scorer", "oracle"],
        "given twice": ["--scorer", "a=rollout", "--scorer", "a=self"],
        "prm": ["--scorer", "prm:" + str(tmp_path / "no-prm")],  # built (and failing) before the port is bound
    }
    procs = {words: subprocess.Popen([sys.executable, "-m", "sharpen", "serve", *ARGS, *args, "--port", "1"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for words, args in cases.items()}
    try:
        for words, proc in procs.items():
            _, err = proc.communicate(timeout=120)
            lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
            assert proc.returncode == 2 and len(lines) == 1 and words in lines[0], (words, err)
            assert "Traceback" not in err and "(fix:" in lines[0], err
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()


@pytest.fixture(scope="module")
def continuous_server(tmp_path_factory):
    """A server with row-level continuous batching (`--continuous-batching`)."""
    s = SharpenServer([*ARGS, "--continuous-batching"], tmp_path_factory.mktemp("continuous") / "log").start()
    yield s
    s.stop()


@pytest.mark.parametrize("which", ["server", pytest.param("continuous_server", marks=pytest.mark.slow)])
def test_concurrent_requests_answer_as_sequential_ones_for_the_same_seeds(which, request):
    server = request.getfixturevalue(which)
    seeds = list(range(6))

    def ask(seed: int) -> tuple[str, str | None]:
        r = client(server).chat.completions.create(model="m", messages=Q,
                                                   extra_body={"search": {"algo": "vote", "budget": 40, "seed": seed}})
        return r.choices[0].message.content, r.model_extra["sharpen"]["answer"]

    sequential = [ask(s) for s in seeds]
    together: dict[int, tuple] = {}
    threads = [threading.Thread(target=lambda s=s: together.__setitem__(s, ask(s))) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [together[s] for s in seeds] == sequential


def test_the_service_closes_its_scorers_and_its_backend():
    """When `sharpen serve` stops, the backend and every scorer's own backend are closed (a server
    client's event-loop thread and connection pool, a prover's backend)."""
    from types import SimpleNamespace

    from sharpen.serve import SearchService, ServeConfig

    closed = []

    class Owned:
        def __init__(self, name):
            self.name = name

        def close(self):
            closed.append(self.name)

    service = SearchService(SimpleNamespace(backend=Owned("backend")), ServeConfig(), start=False)
    service.scorers["prover"] = Owned("prover")
    service.close()
    assert closed == ["prover", "backend"]


def test_the_worker_hands_free_memory_back_every_few_requests_and_when_idle(monkeypatch):
    """Freed buffers stay in glibc's arenas, where RSS counts them; the worker trims them between
    merged calls every TRIM_EVERY finished requests and when it falls idle (benchmarks/serve_soak.py
    measures the effect)."""
    from types import SimpleNamespace

    import sharpen.serve as serve_mod
    from sharpen.serve import TRIM_EVERY, SearchService, ServeConfig, release_free_memory

    assert release_free_memory() is (sys.platform == "linux")
    calls = []
    monkeypatch.setattr(serve_mod, "release_free_memory", lambda: calls.append(1) or True)
    service = SearchService(SimpleNamespace(backend=SimpleNamespace()), ServeConfig(), start=False)
    service._take(False)
    assert calls == []  # nothing finished yet
    service.finished = TRIM_EVERY - 1
    service._take(False)
    assert calls == []  # busy, and fewer than TRIM_EVERY finished since the last trim
    service.finished = TRIM_EVERY
    service._take(False)
    assert len(calls) == 1
    service.finished += 1
    service._queue.append(None)  # idle (`block`): one finished since the last trim is enough
    monkeypatch.setattr(service, "_drop_if_stopped", lambda j: True)
    monkeypatch.setattr(service, "_finished", lambda *a: None)
    service._take(True)
    assert len(calls) == 2
