"""`sharpen serve`: test-time search behind an OpenAI-compatible endpoint (FastAPI + uvicorn).

    POST /v1/chat/completions   the last user message is the problem; a `search` object in the body
                                (`algo`, `budget`, `scorer`, `seed`, and the algorithm's options) picks
                                the search, server defaults otherwise; `scorer` names one of the
                                scorers the server was started with (`--scorer NAME=SPEC`, all built
                                before the port is bound: a request never loads a model). The reply is a chat completion
                                whose message is the chosen solution, `usage` with the tokens actually
                                spent (generated, and forward: policy + verifier), and a `sharpen` field
                                (answer, vote counts, tree id).
    GET  /v1/trees/{id}         the search tree of a reply (`sharpen view` renders it)
    GET  /v1/models, /health, /metrics (Prometheus text), /docs, /redoc, /openapi.json

Requests from many clients are searched together: a worker thread runs one `LockstepBatcher` that
admits queued requests (up to `wave` searched at once), so their backend calls share batched forward
passes: merged calls by default; with `--continuous-batching` a search's samples join the decode
already running and are handed back as soon as they are done, so its next call joins the same
decode too (`HFBackend.continuous`; its speed against merged calls: docs/results/serving.md). The queue is bounded
(beyond it: 429 with Retry-After); a body over `max_body` bytes gets a 413 before it is parsed; a
request over the budget cap, malformed, or whose prompt and the search's longest row would not fit
the model's context window gets a 400 with a one-line message; a request past its timeout gets a
504, and a search whose client disconnected or timed out stops at its next backend call. With an API
key, every route but /health (the docs included) answers 401 to a request without it, and does no
work. A failure inside the server is a 500 whose message is only a request id; the exception and
its traceback go to the server's log (logger `sharpen.serve`) under that id.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hmac
import ipaddress
import json
import logging
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from sharpen.backends.base import LocalTokenizer
from sharpen.backends.models import DEFAULT_MODEL
from sharpen.core.errors import BackendError, ConfigError, SharpenError
from sharpen.core.tasks import Problem, Task
from sharpen.search.registry import Options

if TYPE_CHECKING:
    from fastapi import Request

log = logging.getLogger("sharpen.serve")


class GenericMathTask(Task):
    """The default task of `sharpen serve`: the worked-examples prompt, answers from the
    `Answer:` line, numeric vote keys. No reference answers: nothing is verified."""

    name = "math"

    def verify(self, problem: Problem, answer: str | None) -> bool:
        return False


class _PromptMeter(LocalTokenizer):
    """Prompts rendered and counted as the backend does, on a copy of its tokenizer."""

    def __init__(self, tokenizer: Any):
        import copy

        self.tokenizer = copy.deepcopy(tokenizer)


def longest_row(process: Any) -> int:
    """The most tokens a search of `process` may add to a prompt in one row: steps of at most
    `step_tokens` down to `max_depth` (a node there is terminal), or a completion of at most
    `rollout_tokens` from the deepest non-terminal node, each step with its delimiter."""
    depth, step, rollout = process.max_depth, process.step_tokens, process.rollout_tokens
    return max(depth * step, (depth - 1) * step + rollout) + depth


class ServeConfig(Options):
    """The server's search defaults and limits; `sharpen serve` has one option per described field
    (`sharpen.cli_options`)."""

    algo: str = Field("vote", description="default algorithm of a request without search.algo")
    scorers: dict[str, str] = Field(default_factory=dict)  # short name -> scorer spec; the first is the default
    budget: int = Field(256, description="default generated-token budget per request")
    max_budget: int = Field(4096, description="largest budget a request may ask for")
    queue: int = Field(64, description="requests queued or searched at once; beyond: 429")
    wave: int = 64
    timeout: float = Field(600.0, description="seconds a request may take; beyond: 504, search stopped")
    host: str = Field("127.0.0.1", description="address to bind (127.0.0.1: this machine only; another needs an API "
                      "key or --insecure)")
    port: int = Field(8000, ge=0, le=65535, description="port to bind")
    api_key: str | None = Field(None, description="require Authorization: Bearer KEY (visible in ps: prefer "
                                "--api-key-file or the environment variable SHARPEN_API_KEY)")
    api_key_file: Path | None = Field(None, description="a file whose first line is the API key")
    insecure: bool = Field(False, description="serve on a non-loopback --host without an API key")
    batch: int = Field(256, ge=1, description="rows per forward pass of the backend: the merged requests' samples "
                       "(256, as vLLM's max_num_seqs: 32 vote requests of 8)")
    dtype: str = Field("auto", description="weights' precision: auto (float32 on CPU, bfloat16 on GPU), float32, "
                       "bfloat16 (faster on CPUs with AVX-512 BF16, but a request's answer can then depend on its "
                       "batch-mates), float16")
    keep_trees: int = 1000
    continuous: bool = Field(False, description="row-level continuous batching: a request's samples join the decode "
                             "already running and leave it when done (its speed against merged calls: "
                             "docs/results/serving.md)")
    max_body: int = Field(1_000_000, description="largest request body in bytes; beyond: 413")

    def checked(self) -> ServeConfig:
        """This config, or a one-line ConfigError for limits no server can keep."""
        if self.queue < 1 or self.budget < 1 or self.max_budget < self.budget or self.timeout <= 0 or self.max_body < 1:
            raise ConfigError("--queue, --budget, --max-body >= 1, --max-budget >= --budget, --timeout > 0 "
                              "(fix: positive values)")
        return self

    @property
    def default_scorer(self) -> str:
        """The scorer of a request that names none: the first one given, else `none`."""
        return next(iter(self.scorers), "none")


LOOPBACK_NAMES = {"localhost"}


def is_loopback(host: str) -> bool:
    """Whether `host` binds this machine only (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in LOOPBACK_NAMES


def parse_scorers(specs: list[str] | None) -> dict[str, str]:
    """`NAME=SPEC` (or a bare `SPEC`, named after its scorer kind, e.g. `rollout`) for each
    `--scorer`: short name -> spec, in the order given. Each spec is checked without loading
    anything; a scorer that reads reference answers (oracle) is refused."""
    import re

    from sharpen.search.registry import parse_scorer

    out: dict[str, str] = {}
    for item in specs or []:
        head, eq, tail = item.partition("=")
        named = bool(eq) and re.fullmatch(r"[A-Za-z0-9_.-]+", head) is not None
        name, spec = (head, tail) if named else ("", item)
        parsed = parse_scorer(spec)
        name = name or parsed.name
        if parsed.entry.collect_only:
            raise ConfigError(f"--scorer {item}: the {parsed.name} scorer needs reference answers, which a request "
                              "does not have (fix: another scorer, e.g. rollout or prm:<path>)")
        if name == "none" or name in out:
            raise ConfigError(f"--scorer {item}: the name {name!r} is " + ("reserved for no scorer" if name == "none"
                              else "given twice") + " (fix: NAME=SPEC with a name of its own, e.g. fast=rollout:k=2)")
        out[name] = spec
    return out


def read_api_key(api_key: str | None, api_key_file: Path | None, env: dict[str, str]) -> str | None:
    """The server's API key: `--api-key`, else the first line of `--api-key-file`, else the
    environment variable SHARPEN_API_KEY; None when none is set."""
    if api_key is not None and api_key_file is not None:
        raise ConfigError("both --api-key and --api-key-file are given (fix: one of them)")
    if api_key_file is not None:
        if not api_key_file.is_file():
            raise ConfigError(f"--api-key-file {api_key_file} is not a file (fix: a file holding the key on its first line)")
        lines = api_key_file.read_text(errors="replace").strip().splitlines()
        api_key = lines[0].strip() if lines else ""
        if not api_key:
            raise ConfigError(f"--api-key-file {api_key_file} is empty (fix: write the key on its first line)")
        return api_key
    if api_key is None:
        api_key = env.get("SHARPEN_API_KEY")
    if api_key is not None and not api_key.strip():
        raise ConfigError("the API key is empty (fix: a non-empty --api-key, --api-key-file or SHARPEN_API_KEY)")
    return api_key.strip() if api_key is not None else None


def check_binding(host: str, api_key: str | None, insecure: bool) -> None:
    """Refuse to serve on an address other machines can reach without an API key, unless `insecure`."""
    if not api_key and not insecure and not is_loopback(host):
        raise ConfigError(f"--host {host} can be reached from other machines and no API key is set (fix: "
                          "--api-key-file PATH or SHARPEN_API_KEY, or --insecure to serve without a key)")


@dataclass
class _Job:
    problem: Problem
    spec: Any  # a `SearchSpec` whose scorer is a name of `SearchService.scorers`
    seed: int
    deadline: float
    future: Future = field(default_factory=Future)
    cancelled: bool = False

    def stop(self) -> bool:
        return self.cancelled or time.monotonic() > self.deadline


TRIM_EVERY = 32  # finished requests between two hand-backs of the allocator's free memory


def release_free_memory() -> bool:
    """Hand the free memory in the C allocator's arenas back to the OS (glibc's `malloc_trim`).
    Rows of every length pass through torch and the tokenizer in a long-lived server, and glibc
    keeps what they freed in its per-thread arenas, where the resident set still counts it: without
    this a soak's RSS grows by a third of its in-use memory. False where there is no glibc."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _malloc_trim() -> Any:
    """glibc's `malloc_trim`, looked up once; None where the C library has none."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


class SearchService:
    """The queue and the worker that searches waves of requests together."""

    def __init__(self, process: Any, cfg: ServeConfig, start: bool = True):
        from sharpen.search.scorers import make_scorer

        self.process = process
        self.cfg = cfg
        # every scorer a request may name, built here (before the port is bound), never per request
        self.scorers: dict[str, Any] = {"none": None}
        self.scorers.update({name: make_scorer(spec, process) for name, spec in cfg.scorers.items()})
        self.context = getattr(process.backend, "context_length", None)
        tokenizer = getattr(process.backend, "tokenizer", None)
        # a tokenizer of its own: the searches' threads use the backend's while requests are measured
        self._measure = _PromptMeter(tokenizer) if self.context and tokenizer is not None else None
        self._queue: collections.deque[_Job] = collections.deque()
        self._cv = threading.Condition()
        self.running = 0
        self.finished = 0  # requests finished since start; the allocator's free memory is handed back every TRIM_EVERY
        self._trimmed_at = 0
        self.trees: collections.OrderedDict[str, dict] = collections.OrderedDict()
        self._thread = threading.Thread(target=self._work, name="sharpen-serve", daemon=True)
        if start:
            self._thread.start()

    def close(self) -> None:
        """Release the scorers' backends and the process's backend (a server client's thread and pool)."""
        from sharpen.backends.base import close_all

        close_all(*self.scorers.values(), self.process.backend)

    def start(self) -> SearchService:
        if not self._thread.is_alive():
            self._thread.start()
        return self

    # -- requests ---------------------------------------------------------------------------
    def check(self, algo: str, scorer: str, budget: int, options: dict[str, Any]) -> Any:
        """The `SearchSpec` of a request, or a one-line ConfigError for a search the server will not
        run. `scorer` is a name of `self.scorers`; nothing is loaded or built here."""
        from sharpen.search.spec import SearchSpec

        spec = SearchSpec(algorithm=algo, scorer=scorer, budget=budget, options=options)  # the algorithm, its options
        if budget < 1 or budget > self.cfg.max_budget:
            raise ConfigError(f"budget {budget} is outside 1..{self.cfg.max_budget} (fix: a budget within the server's cap)")
        if scorer not in self.scorers:
            raise ConfigError(f"search.scorer names no scorer of this server (fix: {self._scorer_names()})")
        if spec.entry.needs_scorer and self.scorers[scorer] is None:
            raise ConfigError(f"{algo} needs a scorer (fix: {self._scorer_names()})")
        return spec

    def _scorer_names(self) -> str:
        named = [n for n in self.scorers if n != "none"]
        if not named:
            return "this server has no scorer: an algorithm that needs none, e.g. vote; scorers are set at start-up " \
                   "with sharpen serve --scorer NAME=SPEC"
        return f"search.scorer one of {', '.join(named)} or none"

    def check_prompt(self, problem: Problem) -> None:
        """A one-line ConfigError when the problem's prompt and the longest row a search of this
        process may generate would not fit the model's context window."""
        if self._measure is None:
            return
        prompt = self._measure.count_tokens(self._measure.chat_prompt(self.process.task.messages(problem)))
        row = longest_row(self.process)
        if prompt + row > self.context:
            raise ConfigError(f"the prompt is {prompt} tokens and a row of this server's searches may add {row}: "
                              f"past the model's context window of {self.context} tokens (fix: a problem of at most "
                              f"{max(0, self.context - row - (prompt - self._measure.count_tokens(problem.question)))} "
                              "tokens)")

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
        from sharpen.search.batching import LockstepBatcher

        LockstepBatcher(self.process.backend, continuous=self.cfg.continuous).serve(self._take)

    def _take(self, block: bool) -> list[tuple[Any, Any, Any]]:
        """The queued requests that fit beside the running ones (at most `wave` searched at once);
        with `block`, waits for one. Between merged calls (no forward pass running), every
        TRIM_EVERY finished requests and whenever the server falls idle, the allocator's free memory
        goes back to the OS (`release_free_memory`)."""
        if self.finished - self._trimmed_at >= TRIM_EVERY or (block and self.finished > self._trimmed_at):
            self._trimmed_at = self.finished
            release_free_memory()
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
            self.finished += 1
        if not job.future.done():  # a request dropped before its search started has its answer already
            job.future.set_exception(error) if error is not None else job.future.set_result(result)

    def _drop_if_stopped(self, job: _Job) -> bool:
        if job.stop():
            from sharpen.search.batching import SearchCancelled

            job.future.set_exception(SearchCancelled("stopped before it started"))
            return True
        return False

    def _job(self, job: _Job):
        from sharpen.search.batching import fork_search

        def run(proxy: Any) -> Any:  # an exception reaches `_finished` through the batcher
            process, scorer = fork_search(self.process, self.scorers[job.spec.scorer], proxy)
            return job.spec.tree(process, scorer, job.problem, job.seed)

        return run

    def keep(self, tree_id: str, tree: dict) -> None:
        self.trees[tree_id] = tree
        while len(self.trees) > self.cfg.keep_trees:
            self.trees.popitem(last=False)


def _outcome_unread(fut: asyncio.Future) -> None:
    """A request answered before its search ended (its client left, or it timed out): the search's
    outcome, usually `SearchCancelled`, is read when it comes, so asyncio does not log it as lost."""
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())


def _error(status: int, message: str, kind: str = "invalid_request_error", headers: dict | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status, headers=headers)


def _internal_error(exc: BaseException, what: str):
    """A 500 that names only a request id; the exception and its traceback go to the log under it."""
    request_id = uuid.uuid4().hex[:16]
    log.error("request %s: %s failed", request_id, what, exc_info=(type(exc), exc, exc.__traceback__))
    return _error(500, f"internal error (request id {request_id})", "server_error",
                  headers={"X-Request-ID": request_id})


class _BodyTooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (`_BodyTooLarge`) once its declared or received size passes `limit`
    bytes, before any of it is parsed."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _BodyTooLarge()
    return bytes(body)


def create_app(service: SearchService, model_name: str) -> Any:
    """The FastAPI app serving `service`'s searches."""
    global Request  # FastAPI resolves the handlers' (string) annotations in this module's globals
    from fastapi import Depends, FastAPI, Request
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from fastapi.responses import JSONResponse, PlainTextResponse
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect

    from sharpen.search.batching import SearchCancelled

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
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, f"Bearer {cfg.api_key}".encode()):
                raise Unauthorized()

    # the docs' routes are declared below, so that the key guards them as every other route
    app = FastAPI(title="sharpen serve", version="1", dependencies=[Depends(check_key)], docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.service = service

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> Any:
        requests.labels("500").inc()
        return _internal_error(exc, f"{request.method} {request.url.path}")

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> Any:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Any:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="sharpen serve")

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> Any:
        return get_redoc_html(openapi_url="/openapi.json", title="sharpen serve")

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
            body = json.loads(await _read_body(request, cfg.max_body))
        except _BodyTooLarge:
            requests.labels("413").inc()
            return _error(413, f"the body is over the server's limit of {cfg.max_body} bytes (fix: a shorter "
                               "request, or a server started with a larger --max-body)")
        except ClientDisconnect:
            requests.labels("499").inc()
            return _error(499, "client disconnected")
        except ValueError:
            requests.labels("400").inc()
            return _error(400, "the body is not valid JSON (fix: send a JSON object)")
        try:
            job = _parse(body, cfg, service)
            await run_in_threadpool(service.check_prompt, job.problem)
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
                    _outcome_unread(wrapped)
                    requests.labels("499").inc()
                    return _error(499, "client disconnected")
                if job.stop():
                    job.cancelled = True
                    _outcome_unread(wrapped)
                    requests.labels("504").inc()
                    return _error(504, f"the search took longer than {cfg.timeout:g} s (fix: a smaller budget)",
                                  "timeout_error")
            except (SearchCancelled, Exception):  # noqa: BLE001 - read below
                break
        exc = wrapped.exception() if wrapped.done() else None
        if isinstance(exc, SearchCancelled):
            requests.labels("504").inc()
            return _error(504, f"the search took longer than {cfg.timeout:g} s (fix: a smaller budget)", "timeout_error")
        if isinstance(exc, SharpenError) and not isinstance(exc, BackendError):  # the request's own fault
            requests.labels("400").inc()
            return _error(400, str(exc))
        if exc is not None:  # the server's: a bug, or its model server failing (its address stays in the log)
            requests.labels("500").inc()
            return _internal_error(exc, f"the {job.spec.algorithm} search")
        tree = wrapped.result()
        reply = _reply(tree, job, model_name, process)
        service.keep(reply["sharpen"]["tree_id"], tree.to_dict())
        requests.labels("200").inc()
        tokens.inc(reply["usage"]["completion_tokens"])
        forward.inc(reply["usage"]["forward_tokens"])
        latency.observe(time.monotonic() - t0)
        return JSONResponse(reply)

    return app


SEARCH_KEYS = {"algo", "budget", "scorer", "seed"}  # SearchRequest's fields and the seed; the rest are options


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
    from sharpen.search.spec import SearchRequest

    scorer = search.get("scorer")
    if scorer is not None and not isinstance(scorer, str):  # a name the server started with; its own message
        raise ConfigError("search.scorer must be the name of one of the server's scorers (fix: e.g. \"rollout\", or none)")
    asked = {k: search[k] for k in SearchRequest.model_fields if k in search}
    req = SearchRequest.parse({"algo": cfg.algo, "budget": cfg.budget, **asked}, "search")
    algo, budget = req.algo, req.budget
    scorer = cfg.default_scorer if req.scorer is None else req.scorer
    seed = search.get("seed", body.get("seed"))
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or abs(seed) >= 2**63):
        raise ConfigError("seed must be an integer below 2**63 in size (fix: e.g. \"seed\": 0)")
    options = {k: v for k, v in search.items() if k not in SEARCH_KEYS}
    spec = service.check(algo, scorer, budget, options)
    seed = random.randrange(2**31) if seed is None else seed
    pid = uuid.uuid4().hex[:12]
    return _Job(Problem(pid, question.strip(), ""), spec, seed, deadline=time.monotonic() + cfg.timeout)


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
                    "algo": job.spec.algorithm, "scorer": tree.scorer, "budget": job.spec.budget, "seed": job.seed,
                    "nodes": len(tree.nodes)},
    }


def serve(model: str = DEFAULT_MODEL, task: str | None = None, cfg: ServeConfig | None = None, settings: Any = None,
          task_args: dict[str, Any] | None = None) -> None:
    """Load the model (`cfg.batch` rows a forward, weights in `cfg.dtype`), the task and every scorer of
    `cfg.scorers`, check the default search, then bind `cfg.host:cfg.port` and serve until interrupted."""
    import uvicorn

    from sharpen.api import load_model, make_process
    from sharpen.backends.models import check_model
    from sharpen.core.tasks import load_task

    cfg = cfg or ServeConfig()
    check_model(model)
    the_task = load_task(task, task_args or {}) if task else GenericMathTask()
    process = make_process(load_model(model, max_batch=cfg.batch, dtype=cfg.dtype), the_task, settings)
    service = SearchService(process, cfg, start=False)
    service.check(cfg.algo, cfg.default_scorer, cfg.budget, {})  # the defaults, before the port is bound
    if not log.handlers:  # failures of requests, with their request ids, on stderr beside uvicorn's log
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        uvicorn.run(create_app(service.start(), model), host=cfg.host, port=cfg.port, log_level="warning")
    finally:  # the backend and the scorers' own backends (a prover's server client, its thread)
        service.close()
