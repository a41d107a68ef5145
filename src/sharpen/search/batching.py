"""Lockstep batching: search many problems at once without changing any algorithm or any tree.

Each problem's search runs in its own thread against a `ProxyBackend`. When every live search is
waiting on the backend, the pending calls are merged into one batched call per kind (same
sampling settings), run on the real backend in the main thread, and split back. Because a merge
happens only when *all* live searches are waiting, the composition of every batch is the same from
run to run; and because every sampled row draws from its own random stream (its tree's seed, the
call counter and the row index), a tree does not depend on its batch-mates at all: searched alone
or with 80 others, a problem gets the same tree (up to float rounding of batched kernels). Each proxy has
its own `UsageMeter`, so every search's budget counts only its own tokens.

Accounting: a search is charged what its calls cost alone, its own prompt tokens times its rows
(`prompt_tokens`) and its own rows' generated tokens, whatever it shares a call with; what sharing a
prefill saved is counted once for the batch, as `cached_tokens` of the batcher's own meter
(`LockstepBatcher.meter`). A merged call that fails is run again call by call, so only a call that
fails on its own hands its search the exception.

This turns per-problem batches of 1-8 rows into batches of tens of rows, which is where a small
model on a CPU (or any model on a GPU) gets its throughput.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from sharpen.backends.base import Backend, Completion, SamplingParams, prompt_seeds, row_seed
from sharpen.core.meter import UsageMeter

T = TypeVar("T")


class SearchCancelled(Exception):
    """Raised inside a search whose `cancelled()` became true (its client left, or its time ran out)."""


@dataclass
class _Request:
    kind: str  # "generate" | "logprobs" | "batched"
    prompts: list[Any]
    params: SamplingParams | None = None
    candidates: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()  # generate: each prompt's stream seed
    key: Any = None  # batched: requests with equal keys are merged into one call of `fn`
    fn: Callable[[list[Any]], list[Any]] | None = None
    result: Any = None
    done: bool = False


class ProxyBackend:
    """What one search sees: the backend interface, its own meter, calls merged by the batcher."""

    def __init__(self, batcher: LockstepBatcher, slot: int):
        import random

        self._batcher = batcher
        self._slot = slot
        self._rng = random.Random(slot)  # only for calls that bring no seed
        self.meter = UsageMeter()
        self.name = batcher.backend.name
        self.eos_text = getattr(batcher.backend, "eos_text", "")
        if hasattr(batcher.backend, "tokenizer"):  # a local model's tokenizer (the implicit scorer reads ids)
            self.tokenizer = batcher.backend.tokenizer

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return self._batcher.backend.chat_prompt(messages)

    def require_logprobs(self, feature: str) -> None:
        check = getattr(self._batcher.backend, "require_logprobs", None)
        if check is not None:
            check(feature)

    def count_tokens(self, text: str) -> int:
        return self._batcher.backend.count_tokens(text)

    def generate(self, prompts: list[str], params: SamplingParams, seeds=None) -> list[list[Completion]]:
        if not prompts:
            return []
        pseeds = tuple(prompt_seeds(params, len(prompts), seeds, self._rng))
        return self._batcher._submit(self._slot, _Request("generate", list(prompts), params, seeds=pseeds))

    def next_token_logprobs(self, prompts: list[str], candidates: list[str]) -> list[dict[str, float]]:
        if not prompts:
            return []
        return self._batcher._submit(self._slot, _Request("logprobs", list(prompts), candidates=tuple(candidates)))

    def batched(self, key: Any, fn: Callable[[list[Any]], list[Any]], items: list[Any]) -> list[Any]:
        """`fn(items)`, merged with every other live search's call under the same `key` into one
        call of `fn` (a verifier's forward passes over many problems' nodes at once); `fn` maps a list
        to a list of the same length, item by item, and meters nothing (the caller does)."""
        if not items:
            return []
        return self._batcher._submit(self._slot, _Request("batched", list(items), key=key, fn=fn))


class LockstepBatcher:
    def __init__(self, backend: Backend, continuous: bool = False):
        """`continuous` (with `serve`, on a backend whose `joins_rows` is true: the HF one, on most
        models): sampling calls run as one decode loop that later calls join row by row
        (`HFBackend.continuous`), and a search gets its rows as soon as they are done instead of
        when the merged call's slowest row is."""
        self.backend = backend
        self.continuous = continuous and getattr(backend, "joins_rows", False)
        # the batch level: every backend call once, its prompt tokens as charged to the searches,
        # `cached_tokens` what sharing prefills saved of them (the searches' meters carry no share of it)
        self.meter = UsageMeter()
        self._take: Callable[[bool], Any] = lambda block: None
        self._cv = threading.Condition()
        self._pending: dict[int, _Request] = {}
        self._live: set[int] = set()
        self._cancelled: dict[int, Callable[[], bool]] = {}
        self._proxies: dict[int, ProxyBackend] = {}
        self._next_slot = 0

    def run(self, jobs: list[Callable[[ProxyBackend], T]],
            cancelled: list[Callable[[], bool]] | None = None) -> list[T]:
        """Run each job (given its own proxy backend) concurrently; results in job order.
        `cancelled[i]()` true stops job i at its next backend call (it raises `SearchCancelled`),
        so a search nobody waits for any more stops spending tokens."""
        results: list[Any] = [None] * len(jobs)
        errors: list[BaseException | None] = [None] * len(jobs)

        def keep(i: int) -> Callable[[Any, BaseException | None], None]:
            def done(result: Any, error: BaseException | None) -> None:
                results[i], errors[i] = result, error
            return done

        threads = [self._start(job, cancelled[i] if cancelled else None, keep(i)) for i, job in enumerate(jobs)]
        self._loop(lambda block: None)
        for t in threads:
            t.join()
        for e in errors:
            if e is not None:
                raise e
        return results

    def serve(self, take: Callable[[bool], list[tuple[Callable[[ProxyBackend], Any], Callable[[], bool] | None,
                                                     Callable[[Any, BaseException | None], None]]]]) -> None:
        """Continuous admission: before every merged call, `take(block)` hands over new searches as
        (job, cancelled, done) triples, which join the searches already running (`block` is true
        when none is running: wait for one). `done(result, error)` receives each search's outcome.
        A search that finishes early frees its place at once: the next one need not wait for the slowest
        of its batch-mates. Runs until `take` returns None with no search running."""
        self._loop(take)

    def _start(self, job: Callable[[ProxyBackend], Any], cancelled: Callable[[], bool] | None,
               done: Callable[[Any, BaseException | None], None]) -> threading.Thread:
        with self._cv:
            slot, self._next_slot = self._next_slot, self._next_slot + 1
            proxy = self._proxies[slot] = ProxyBackend(self, slot)
            if cancelled is not None:
                self._cancelled[slot] = cancelled
            self._live.add(slot)  # live before its thread runs: no merge goes ahead without it

        def work() -> None:
            result, error = None, None
            try:
                result = job(proxy)
            except BaseException as e:  # noqa: BLE001 - handed to `done`, re-raised by `run`
                error = e
            finally:
                with self._cv:
                    self._live.discard(slot)
                    self._cancelled.pop(slot, None)
                    self._proxies.pop(slot, None)
                    self._cv.notify_all()
            done(result, error)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        return thread

    def _loop(self, take: Callable[[bool], Any]) -> None:
        self._take = take
        while True:
            new = take(not self._live)
            for job, cancelled, done in new or []:
                self._start(job, cancelled, done)
            with self._cv:
                if new is None and not self._live:
                    return
                self._cv.wait_for(lambda: not self._live or all(i in self._pending for i in self._live))
                if not self._live:
                    continue
                batch = dict(sorted(self._pending.items()))
                self._pending = {}
                proxies = {slot: self._proxies[slot] for slot in batch}
            self._execute(batch, proxies)
            with self._cv:
                for req in batch.values():
                    req.done = True
                self._cv.notify_all()

    def _submit(self, slot: int, req: _Request) -> Any:
        cancelled = self._cancelled.get(slot)
        if cancelled is not None and cancelled():
            raise SearchCancelled(f"search {slot} cancelled")
        with self._cv:
            self._pending[slot] = req
            self._cv.notify_all()
            self._cv.wait_for(lambda: req.done)
        if isinstance(req.result, BaseException):
            raise req.result
        return req.result

    def _execute(self, batch: dict[int, _Request], proxies: dict[int, ProxyBackend]) -> None:
        groups: dict[Any, list[tuple[int, _Request]]] = {}
        for slot, req in batch.items():
            if req.kind == "batched":
                key = ("batched", req.key)
            elif req.kind == "logprobs":
                key = ("logprobs", req.candidates)
            else:
                key = self._generate_key(req)
            groups.setdefault(key, []).append((slot, req))
        for key, members in groups.items():
            self._run_isolated(key, members, proxies)

    def _run_isolated(self, key: Any, members: list[tuple[int, _Request]], proxies: dict[int, ProxyBackend]) -> None:
        """Run a group's merged call; when it raises, run each member's call again on its own, so the
        exception reaches only the searches whose own call raises it (the others get the rows they get
        in the merged call: every row draws from its own stream). An interrupt (not an `Exception`)
        reaches every member."""
        try:
            self._run_group(key, members, proxies)
            return
        except Exception as e:  # noqa: BLE001 - handed to the member(s) whose own call fails
            if len(members) == 1:
                members[0][1].result = e
                return
        except BaseException as e:
            for _, req in members:
                req.result = e
            return
        for slot, req in members:
            req.result = None
            try:
                self._run_group(key, [(slot, req)], proxies)
            except BaseException as e:  # noqa: BLE001 - this search's own failure, re-raised in its thread
                req.result = e

    def _generate_key(self, req: _Request) -> tuple:
        """Sampling calls merge when their settings are equal (continuously batched, `max_tokens` is
        each row's own)."""
        return "generate", replace(req.params, n=1, seed=None, **({"max_tokens": 0} if self.continuous else {}))

    def _run_continuous(self, params: SamplingParams, members: list[tuple[int, _Request]],
                        proxies: dict[int, ProxyBackend]) -> None:
        """Sampling calls as one `backend.continuous` decode: a search whose rows are done goes on at
        once, and its next call (or a new search's first) joins the running decode; a call of another
        kind or other settings stops the joining and waits for the decode to end."""
        from sharpen.backends.hf_continuous import RowJob

        key = ("generate", params)
        open_jobs: dict[int, RowJob] = {}

        def job(slot: int, req: _Request, proxy: ProxyBackend) -> RowJob:
            n = req.params.n
            j = RowJob([p for p in req.prompts for _ in range(n)],
                       [row_seed(s, i) for s in req.seeds for i in range(n)], req.params.max_tokens,
                       token=(slot, req, proxy))
            open_jobs[id(j)] = j
            return j

        def admit() -> list[RowJob]:
            for new_job, cancelled, done in self._take(False) or []:
                self._start(new_job, cancelled, done)
            with self._cv:
                if any(r.kind != "generate" or self._generate_key(r) != key for r in self._pending.values()):
                    return []  # let the decode drain: those calls run after it
                got, self._pending = sorted(self._pending.items()), {}
                return [job(slot, req, self._proxies[slot]) for slot, req in got]

        def deliver(j: RowJob, completions: list[Completion], prompt_tokens: int, seconds: float) -> None:
            slot, req, proxy = j.token
            open_jobs.pop(id(j), None)
            n = req.params.n
            req.result = [completions[i * n : (i + 1) * n] for i in range(len(req.prompts))]
            generated = sum(c.num_tokens for c in completions)
            charged = self._prompt_tokens(req)
            proxy.meter.record(prompt_tokens=charged, generated_tokens=generated, seconds=seconds)
            self.meter.record(prompt_tokens=charged, generated_tokens=generated, seconds=seconds,
                              cached_tokens=max(0, charged - prompt_tokens))
            with self._cv:
                req.done = True
                self._cv.notify_all()

        try:
            self.backend.continuous(replace(params, max_tokens=max(r.params.max_tokens for _, r in members)),
                                    [job(slot, req, proxies[slot]) for slot, req in members], admit, deliver)
        except Exception:  # noqa: BLE001 - the calls not yet answered run again one by one (those answered keep theirs)
            for j in list(open_jobs.values()):
                slot, req, proxy = j.token
                req.result = None
                try:
                    self._run_merged("generate", replace(req.params, n=1, seed=None), [(slot, req)], {slot: proxy})
                except BaseException as e:  # noqa: BLE001 - this search's own failure, re-raised in its thread
                    req.result = e
                with self._cv:
                    req.done = True
                    self._cv.notify_all()
        except BaseException as e:  # noqa: BLE001 - an interrupt: every call not yet answered gets it
            with self._cv:
                for j in open_jobs.values():
                    j.token[1].result = e
                    j.token[1].done = True
                self._cv.notify_all()

    def _prompt_tokens(self, req: _Request) -> int:
        """What a call's prompts cost alone: each prompt's tokens times its rows."""
        rows = req.params.n if req.kind == "generate" else 1
        return sum(self.backend.count_tokens(p) for p in req.prompts) * rows

    def _run_group(self, key: Any, members: list[tuple[int, _Request]], proxies: dict[int, ProxyBackend]) -> None:
        if key[0] == "generate" and self.continuous:
            self._run_continuous(key[1], members, proxies)
            return
        if key[0] == "batched":  # the callers meter their own share
            out = members[0][1].fn([x for _, req in members for x in req.prompts])
            pos = 0
            for _, req in members:
                req.result = out[pos : pos + len(req.prompts)]
                pos += len(req.prompts)
            return
        self._run_merged(key[0], key[1], members, proxies)

    def _run_merged(self, kind: str, what: Any, members: list[tuple[int, _Request]],
                    proxies: dict[int, ProxyBackend]) -> None:
        """One backend call for every member's prompts (`what`: the sampling settings of a
        "generate", the candidates of a "logprobs"), split back; each search's meter gets its own
        prompt tokens times its rows, its own generated tokens and a share of the seconds by those,
        the batcher's meter the call once with what sharing saved as `cached_tokens`."""
        before = self.backend.meter.snapshot()
        t0 = time.perf_counter()
        if kind == "logprobs":
            flat = [p for _, req in members for p in req.prompts]
            out = self.backend.next_token_logprobs(flat, list(what))
            pos = 0
            for _, req in members:
                req.result = out[pos : pos + len(req.prompts)]
                pos += len(req.prompts)
            gen_share = [len(req.prompts) for _, req in members]
        else:
            params: SamplingParams = what
            # every sample becomes a one-sample row with its own stream (row_seed), so each search
            # gets exactly the rows it would get from the backend alone
            flat = [p for _, req in members for p in req.prompts for _ in range(req.params.n)]
            seeds = [row_seed(s, j) for _, req in members for s in req.seeds for j in range(req.params.n)]
            out = self.backend.generate(flat, replace(params, n=1, seed=None), seeds=seeds)
            pos = 0
            gen_share = []
            for _, req in members:
                res = []
                for _ in req.prompts:
                    res.append([out[pos + j][0] for j in range(req.params.n)])
                    pos += req.params.n
                req.result = res
                gen_share.append(sum(c.num_tokens for r in res for c in r))
        used = self.backend.meter.snapshot() - before  # the backend's verifier tokens are 0: verifiers meter themselves
        seconds = time.perf_counter() - t0
        total = max(1, sum(gen_share))
        charged = 0
        for (slot, req), g in zip(members, gen_share, strict=True):
            own = self._prompt_tokens(req)
            charged += own
            proxies[slot].meter.record(prompt_tokens=own, generated_tokens=g, seconds=seconds * g / total)
        # what the backend did not compute of the charged prompt tokens: a prefix shared by rows (of
        # one search or of many) prefilled once, or a server's prefix cache
        computed = used.prompt_tokens - used.cached_tokens
        self.meter.record(prompt_tokens=charged, generated_tokens=used.generated_tokens, seconds=seconds,
                          calls=used.calls, cached_tokens=max(0, charged - computed))


def fork_search(process: Any, scorer: Any, proxy: ProxyBackend) -> tuple[Any, Any]:
    """One search's view: the process on `proxy` (`process.fork`, counting on the proxy's meter)
    and the scorer bound to that process (`scorer.bind`)."""
    p = process.fork(proxy)
    return p, (scorer.bind(p) if scorer is not None else None)
