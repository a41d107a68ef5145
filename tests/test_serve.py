"""`sharpen serve` as a real server process, called with the official `openai` client."""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from servers import SharpenServer  # noqa: E402

openai = pytest.importorskip("openai")
pytestmark = [pytest.mark.server, pytest.mark.integration]
ARGS = ["--model", "smollm2-135m", "--budget", "48", "--step-tokens", "16", "--rollout-tokens", "24"]
Q = [{"role": "user", "content": "What is 3 + 4 - 2?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = SharpenServer([*ARGS, "--max-budget", "100000"], tmp_path_factory.mktemp("serve") / "log").start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A server with an API key and a queue of 1."""
    s = SharpenServer([*ARGS, "--api-key", "sekret", "--queue", "1"], tmp_path_factory.mktemp("guarded") / "log").start()
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


def post(url: str, data: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


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
    ({"messages": Q, "search": {"algo": "bon", "scorer": "oracle"}}, "reference answers"),
    ({"messages": Q, "search": {"algo": "mcts", "kk": 2, "scorer": "rollout"}}, "kk"),
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
    statuses: list[int] = []

    def one() -> None:
        try:
            client(guarded, "sekret").chat.completions.create(model="m", messages=Q, extra_body={"search": {"budget": 200}})
            statuses.append(200)
        except openai.RateLimitError as e:
            assert e.response.headers.get("retry-after") == "1"
            statuses.append(429)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses.count(429) >= 1 and statuses.count(200) >= 1
    _, text = get(f"{guarded.base}/metrics", "sekret")
    assert 'sharpen_requests_total{status="401"} 3.0' in text  # two chat calls and one GET, no work done


def test_a_client_that_disconnects_stops_its_search(server):
    c = client(server, timeout=1.0)
    with pytest.raises(openai.APITimeoutError):
        c.chat.completions.create(model="m", messages=Q,
                                  extra_body={"search": {"algo": "mcts", "scorer": "rollout", "budget": 50000}})
    deadline = time.time() + 60
    while time.time() < deadline and json.loads(get(f"{server.base}/health")[1])["queue"] > 0:
        time.sleep(0.5)
    assert json.loads(get(f"{server.base}/health")[1])["queue"] == 0  # not the minutes 50,000 tokens would take
    assert 'status="499"' in get(f"{server.base}/metrics")[1]


@pytest.fixture(scope="module")
def continuous_server(tmp_path_factory):
    """A server with row-level continuous batching (`--continuous-batching`)."""
    s = SharpenServer([*ARGS, "--continuous-batching"], tmp_path_factory.mktemp("continuous") / "log").start()
    yield s
    s.stop()


@pytest.mark.parametrize("which", ["server", "continuous_server"])
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
