"""`sharpen serve`: test-time search behind an OpenAI-compatible endpoint (FastAPI + uvicorn).

    POST /v1/chat/completions   the last user message is the problem; a `search` object in the body
                                (`algo`, `budget`, `scorer`, `seed`, and the algorithm's options) picks
                                the search, server defaults otherwise. The reply is a chat completion
                                whose message is the chosen solution, `usage` with the tokens actually
                                spent (generated, and forward: policy + verifier), and a `sharpen` field
                                (answer, vote counts, tree id).
    GET  /v1/trees/{id}         the search tree of a reply (`sharpen view` renders it)
    GET  /v1/models, /health, /metrics (Prometheus text)

Requests from many clients are searched together: a worker thread runs one `LockstepBatcher` that
admits queued requests (up to `wave` searched at once), so their backend calls share batched forward
passes: merged calls by default; with `--continuous-batching` a search's samples join the decode
already running and are handed back as soon as they are done, so its next call joins the same
decode too (`HFBackend.continuous`; slower than merged calls on this 2-core CPU so far). The queue is bounded
(beyond it: 429 with Retry-After); a request over the budget cap or malformed gets a 400 with a
one-line message; a request past its timeout gets a 504, and a search whose client disconnected or
timed out stops at its next backend call. With an API key, requests without it get a 401 and no work.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request  # at module level: FastAPI resolves the handlers' (string) annotations here

from sharpen.errors import ConfigError, SharpenError
from sharpen.tasks import Problem, Task


class GenericMathTask(Task):
    """The default task of `sharpen serve`: the worked-examples prompt, answers from the
    `Answer:` line, numeric vote keys. No reference answers: nothing is verified."""

    name = "math"

    def verify(self, problem: Problem, answer: str | None) -> bool:
        return False


@dataclass
class ServeConfig:
    algo: str = "vote"
    scorer: str | None = None
    budget: int = 256
    max_budget: int = 4096
    queue: int = 64
    wave: int = 64
    timeout: float = 600.0
    api_key: str | None = None
    keep_trees: int = 1000
    continuous: bool = False  # row-level continuous batching (HFBackend.continuous): slower here so far


@dataclass
class _Job:
    problem: Problem
    algo: str
    scorer: str | None
    budget: int
    seed: int
    options: dict[str, Any]
    deadline: float
    future: Future = field(default_factory=Future)
    cancelled: bool = False

    def stop(self) -> bool:
        return self.cancelled or time.monotonic() > self.deadline


class SearchService:
    """The queue and the worker that searches waves of requests together."""

    def __init__(self, process: Any, cfg: ServeConfig, start: bool = True):
        from sharpen.scorers import make_scorer

        self.process = process
        self.cfg = cfg
        self._make_scorer = make_scorer
        self._scorers: dict[str | None, Any] = {None: None}
        self._queue: collections.deque[_Job] = collections.deque()
        self._cv = threading.Condition()
        self.running = 0
        self.trees: collections.OrderedDict[str, dict] = collections.OrderedDict()
        self._thread = threading.Thread(target=self._work, name="sharpen-serve", daemon=True)
        if start:
            self._thread.start()

    def start(self) -> SearchService:
        if not self._thread.is_alive():
            self._thread.start()
        return self

    # -- requests ---------------------------------------------------------------------------
    def check(self, algo: str, scorer: str | None, budget: int, options: dict[str, Any]) -> None:
        """A one-line ConfigError for a search the server will not run."""
        from sharpen.registry import get_algorithm, parse_scorer

        entry = get_algorithm(algo)
        entry.parse(options)
        if budget < 1 or budget > self.cfg.max_budget:
            raise ConfigError(f"budget {budget} is outside 1..{self.cfg.max_budget} (fix: a budget within the server's cap)")
        if entry.needs_scorer and scorer in (None, "none"):
            raise ConfigError(f"{algo} needs a scorer (fix: search.scorer, e.g. rollout or prm:<path>)")
        if scorer not in (None, "none"):
            parsed = parse_scorer(scorer)
            if parsed.name == "oracle":
                raise ConfigError("the oracle scorer needs reference answers, which a request does not have "
                                  "(fix: another scorer, e.g. rollout or prm:<path>)")
            self.scorer(scorer)

    def scorer(self, spec: str | None) -> Any:
        if spec not in self._scorers:
            self._scorers[spec] = self._make_scorer(spec, self.process)
        return self._scorers[spec]

    def submit(self, job: _Job) -> bool:
        """Queue a job; False when the queue is full."""
        with self._cv:
            if len(self._queue) + self.running >= self.cfg.queue:
                return False
            self._queue.append(job)
            self._cv.notify_all()
        return True

    @property
    def depth(self) -> int:
        return len(self._queue) + self.running

    # -- the worker -------------------------------------------------------------------------
    def _work(self) -> None:
        from sharpen.batching import LockstepBatcher

        LockstepBatcher(self.process.backend, continuous=self.cfg.continuous).serve(self._take)

    def _take(self, block: bool) -> list[tuple[Any, Any, Any]]:
        """The queued requests that fit beside the running ones (at most `wave` searched at once);
        with `block`, waits for one."""
        with self._cv:
            if block:
                self._cv.wait_for(lambda: bool(self._queue))
            room = max(0, self.cfg.wave - self.running)
            jobs = [self._queue.popleft() for _ in range(min(room, len(self._queue)))]
            self.running += len(jobs)
        taken = []
        for j in jobs:
            if self._drop_if_stopped(j):
                self._finished(j, None, None)
            else:
                taken.append((self._job(j), j.stop, lambda r, e, j=j: self._finished(j, r, e)))
        return taken

    def _finished(self, job: _Job, result: Any, error: BaseException | None) -> None:
        with self._cv:
            self.running -= 1
        if not job.future.done():  # a request dropped before its search started has its answer already
            job.future.set_exception(error) if error is not None else job.future.set_result(result)

    def _drop_if_stopped(self, job: _Job) -> bool:
        if job.stop():
            from sharpen.batching import SearchCancelled

            job.future.set_exception(SearchCancelled("stopped before it started"))
            return True
        return False

    def _job(self, job: _Job):
        from sharpen.batching import fork_search
        from sharpen.registry import get_algorithm

        entry = get_algorithm(job.algo)

        def run(proxy: Any) -> Any:  # an exception reaches `_finished` through the batcher
            process, scorer = fork_search(self.process, self.scorer(job.scorer), proxy)
            tree = entry.fn(process, scorer, job.problem, job.budget, seed=job.seed, **job.options)
            tree.scorer = job.scorer if entry.needs_scorer else None
            return tree

        return run

    def keep(self, tree_id: str, tree: dict) -> None:
        self.trees[tree_id] = tree
        while len(self.trees) > self.cfg.keep_trees:
            self.trees.popitem(last=False)


def _error(status: int, message: str, kind: str = "invalid_request_error", headers: dict | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status, headers=headers)


def create_app(service: SearchService, model_name: str) -> Any:
    """The FastAPI app serving `service`'s searches."""
    from fastapi import Depends, FastAPI
    from fastapi.responses import JSONResponse, PlainTextResponse
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    from sharpen.batching import SearchCancelled

    cfg, process = service.cfg, service.process
    registry = CollectorRegistry()
    requests = Counter("sharpen_requests", "chat completion requests by HTTP status", ["status"], registry=registry)
    tokens = Counter("sharpen_generated_tokens", "generated tokens spent by searches", registry=registry)
    forward = Counter("sharpen_forward_tokens", "forward tokens (policy + verifier) of searches", registry=registry)
    latency = Histogram("sharpen_request_seconds", "latency of answered chat completions", registry=registry,
                        buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256))
    depth = Gauge("sharpen_queue_depth", "requests queued or being searched", registry=registry)
    depth.set_function(lambda: service.depth)

    class Unauthorized(Exception):
        pass

    async def check_key(request: Request) -> None:
        # a dependency, not an HTTP middleware: Starlette's BaseHTTPMiddleware hides client disconnects
        # from `request.is_disconnected()`, which stops the search of a client that left
        if cfg.api_key and request.url.path != "/health":
            if request.headers.get("authorization", "") != f"Bearer {cfg.api_key}":
                raise Unauthorized()

    app = FastAPI(title="sharpen serve", version="1", dependencies=[Depends(check_key)])
    app.state.service = service

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, exc: Unauthorized) -> Any:
        requests.labels("401").inc()
        return _error(401, "missing or wrong API key (fix: Authorization: Bearer <key>, the --api-key "
                           "the server was started with)", "authentication_error")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "queue": service.depth}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "sharpen",
                                            "created": 0}]}

    @app.get("/metrics")
    async def metrics() -> Any:
        return PlainTextResponse(generate_latest(registry).decode(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/trees/{tree_id}")
    async def tree(tree_id: str) -> Any:
        t = service.trees.get(tree_id)
        if t is None:
            return _error(404, f"no tree {tree_id!r} (fix: a tree id from a reply's sharpen.tree_id; the server "
                               f"keeps the last {cfg.keep_trees})", "not_found_error")
        return JSONResponse(t)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        t0 = time.monotonic()
        try:
            body = await request.json()
        except ValueError:
            requests.labels("400").inc()
            return _error(400, "the body is not valid JSON (fix: send a JSON object)")
        try:
            job = _parse(body, cfg, service)
        except SharpenError as e:
            requests.labels("400").inc()
            return _error(400, str(e))
        if not service.submit(job):
            requests.labels("429").inc()
            return _error(429, f"the server's queue is full ({cfg.queue} requests) (fix: retry after a second)",
                          "rate_limit_error", headers={"Retry-After": "1"})
        wrapped = asyncio.wrap_future(job.future)
        while not wrapped.done():
            try:
                await asyncio.wait_for(asyncio.shield(wrapped), timeout=0.25)
            except TimeoutError:
                if await request.is_disconnected():
                    job.cancelled = True
                    requests.labels("499").inc()
                    return _error(499, "client disconnected")
                if job.stop():
                    job.cancelled = True
                    requests.labels("504").inc()
                    return _error(504, f"the search took longer than {cfg.timeout:g} s (fix: a smaller budget)",
                                  "timeout_error")
            except (SearchCancelled, Exception):  # noqa: BLE001 - read below
                break
        exc = wrapped.exception() if wrapped.done() else None
        if isinstance(exc, SearchCancelled):
            requests.labels("504").inc()
            return _error(504, f"the search took longer than {cfg.timeout:g} s (fix: a smaller budget)", "timeout_error")
        if isinstance(exc, SharpenError):
            requests.labels("400").inc()
            return _error(400, str(exc))
        if exc is not None:
            requests.labels("500").inc()
            return _error(500, f"search failed: {type(exc).__name__}: {exc}", "server_error")
        tree = wrapped.result()
        reply = _reply(tree, job, model_name, process)
        service.keep(reply["sharpen"]["tree_id"], tree.to_dict())
        requests.labels("200").inc()
        tokens.inc(reply["usage"]["completion_tokens"])
        forward.inc(reply["usage"]["forward_tokens"])
        latency.observe(time.monotonic() - t0)
        return JSONResponse(reply)

    return app


SEARCH_KEYS = {"algo", "budget", "scorer", "seed"}


def _parse(body: Any, cfg: ServeConfig, service: SearchService) -> _Job:
    import random

    if not isinstance(body, dict):
        raise ConfigError("the body must be a JSON object (fix: {\"messages\": [...]})")
    if body.get("stream"):
        raise ConfigError("streaming is not supported (fix: stream: false)")
    if body.get("n", 1) != 1:
        raise ConfigError("n must be 1: a search returns one answer (fix: drop n)")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ConfigError("messages must be a non-empty list (fix: [{\"role\": \"user\", \"content\": \"What is 2 + 3?\"}])")
    users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    question = users[-1] if users else None
    if not isinstance(question, str) or not question.strip():
        raise ConfigError("no user message with text content (fix: a message with role user and the problem as content)")
    search = body.get("search") or {}
    if not isinstance(search, dict):
        raise ConfigError("search must be an object (fix: {\"algo\": \"vote\", \"budget\": 256})")
    algo = search.get("algo", cfg.algo)
    scorer = search.get("scorer", cfg.scorer)
    budget = search.get("budget", cfg.budget)
    seed = search.get("seed", body.get("seed"))
    if not isinstance(algo, str) or not isinstance(budget, int) or isinstance(budget, bool):
        raise ConfigError("search.algo must be a name and search.budget an integer (fix: e.g. {\"algo\": \"vote\", \"budget\": 256})")
    if scorer is not None and not isinstance(scorer, str):
        raise ConfigError("search.scorer must be a scorer spec string (fix: e.g. \"rollout\" or \"prm:<path>\")")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ConfigError("seed must be an integer (fix: e.g. \"seed\": 0)")
    options = {k: v for k, v in search.items() if k not in SEARCH_KEYS}
    service.check(algo, scorer, budget, options)
    seed = random.randrange(2**31) if seed is None else seed
    pid = uuid.uuid4().hex[:12]
    return _Job(Problem(pid, question.strip(), ""), algo, scorer, budget, seed, options,
                deadline=time.monotonic() + cfg.timeout)


def _reply(tree: Any, job: _Job, model_name: str, process: Any) -> dict[str, Any]:
    votes: collections.Counter = collections.Counter()
    for n in tree.nodes:
        if n.terminal and n.answer is not None:
            key = process.task.vote_key(n.answer)
            if key is not None:
                votes[key] += 1
    text = tree.text(tree.chosen[-1], process.delimiter) if tree.chosen else ""
    u = tree.usage
    generated = int(u.get("generated_tokens", 0))
    prompt = int(u.get("prompt_tokens", 0))
    verifier = int(u.get("verifier_tokens", 0))
    tree_id = uuid.uuid4().hex
    return {
        "id": f"chatcmpl-{tree_id[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop" if tree.chosen else "length"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated,
                  "forward_tokens": prompt + generated + verifier, "verifier_tokens": verifier},
        "sharpen": {"answer": tree.answer, "votes": dict(votes.most_common()), "tree_id": tree_id,
                    "algo": job.algo, "scorer": job.scorer, "budget": job.budget, "seed": job.seed,
                    "nodes": len(tree.nodes)},
    }


def serve(model: str = "smollm2-135m", task: str | None = None, scorer: str | None = None, host: str = "127.0.0.1",
          port: int = 8000, api_key: str | None = None, cfg: ServeConfig | None = None, settings: Any = None,
          task_args: dict[str, Any] | None = None, batch: int = 256, dtype: str = "auto") -> None:
    """Load the model and task, then serve until interrupted."""
    import uvicorn

    from sharpen.api import load_model, make_process
    from sharpen.models import check_model
    from sharpen.tasks import load_task

    cfg = cfg or ServeConfig()
    cfg.scorer = scorer if scorer is not None else cfg.scorer
    cfg.api_key = api_key
    check_model(model)
    the_task = load_task(task, task_args or {}) if task else GenericMathTask()
    process = make_process(load_model(model, max_batch=batch, dtype=dtype), the_task, settings)
    service = SearchService(process, cfg, start=False)
    service.check(cfg.algo, cfg.scorer, cfg.budget, {})  # the defaults, before the port is bound
    uvicorn.run(create_app(service.start(), model), host=host, port=port, log_level="warning")
