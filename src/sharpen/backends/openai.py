"""A backend over an OpenAI-compatible `/v1/completions` server: vLLM, SGLang, llama.cpp's server,
`transformers serve`.

    --model openai:http://HOST:PORT/v1#MODEL_NAME[;tokenizer=DIR_OR_HF_ID][;in_flight=16][;timeout=120][;logprobs=off]

- Prompts are rendered here with the model's own chat template (a tokenizer loaded locally: the
  `tokenizer` option, else MODEL_NAME when it is a built-in name or a local dir), so search sees the
  same prompt strings as with the in-process HF backend.
- Every sampled row is its own request with its own seed (`row_seed`), also where a server honours
  `n`: a row's text then depends on its seed only, never on which rows share a call, as with the HF
  backend. Requests go out concurrently (at most `in_flight` at once) from one background event loop.
- Stopping: `stop_at="step"` sends the delimiter as a stop string. `finish_reason: "stop"` alone does
  not say whether the delimiter or EOS ended the row. A server that keeps the stop string in the text
  (`transformers serve`) or reports `stop_reason` (vLLM) tells; for one that strips it and says
  nothing, the row counts as a finished step (the answer-line rule still ends a solution, and an empty
  continuation is EOS). `stop_at="answer"` lets the row run to EOS or `max_tokens` and
  cuts the text after its first complete answer line; the tokens counted are those the server says
  it generated.
- Sampling: `temperature`, `top_p` and `seed` as the API defines them. `transformers serve` samples
  only when the model's generation config sets `do_sample`; `;sampling=auto` (the default) finds out
  at start-up and then sends its `generation_config` field instead (`;sampling=standard` or
  `;sampling=generation_config` fixes the choice). That config sets `top_k: 0`: transformers fills an
  unset field with its global default, and top-k 50 would truncate what the HF backend samples in
  full. A server that never samples refuses sampled calls.
  `transformers serve` seeds torch's process-global generator per request, so its sampled rows are
  reproducible only one request at a time (`;in_flight=1`); vLLM and SGLang seed each request alone.
- Log-probabilities: asked for (`logprobs`) and summed when the server returns them. A server that
  returns none (`transformers serve`) or refuses them (a llama.cpp server started with
  `--logits_all false`) leaves `logprobs_available` False; features that need them (the `self`
  scorer, MCTS priors) refuse with a one-line error unless a fallback is chosen. `;logprobs=off` never
  asks (llama-cpp-python ranks the whole vocabulary in Python for each generated token it returns
  log-probabilities for, which doubled its time per token here), and features that need them refuse.
- Usage: the server's `usage` (prompt, completion and, where reported, cached prompt tokens) goes into
  the one `UsageMeter`, so budgets and reports count the server's tokens.
- llama.cpp (llama-cpp-python's `python -m llama_cpp.server`, or `llama-server`; told apart by the
  `owned_by` of GET /v1/models: "me", "llamacpp"): its sampler adds top-k 40, min-p 0.05 and, in
  llama-cpp-python, a repeat penalty of 1.1 unless told otherwise, so every request sends `top_k=0`,
  `min_p=0`, `repeat_penalty=1` and `top_p` (its chain applies top-p before the temperature, HF after
  it: the same only at `top_p=1`), and `cache_prompt=true` (llama-server's prompt reuse;
  llama-cpp-python always reuses the prefix it shares with the previous request, and `--cache true`
  keeps more KV states, but reports no cached tokens). It strips the stop string and reports
  `finish_reason: "stop"` for it and for EOS alike; its log-probability `tokens` still hold the token
  that carried the stop string (EOS never appears), which tells the two apart. Its completion tokens
  leave out EOS (the HF backend counts it). It serves its one model under any name, so the name after
  '#' is checked against GET /v1/models. llama-cpp-python decodes one request at a time (`in_flight`
  only queues). Its rows were the same for the same seeds whatever came before and at any
  `in_flight`, except with `--cache true`: a KV state restored from that cache changed sampled rows
  (two MCTS searches on the same seeds grew different trees), so use that cache for speed, not
  where runs must repeat.
- Failures: the `openai` client retries 429, 5xx and dropped connections with exponential backoff;
  each request has a timeout; a server that is down, a wrong model name or a rejected request is a
  one-line `BackendError`. A call whose rows partly fail waits for the others, records the usage of
  those that finished (the server billed them), then raises the first failure.
- Resources: the backend holds a client and an event-loop thread until `close()` (or the end of a
  `with` block); whoever loads it closes it.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from sharpen.backends.base import (
    BackendBase,
    Completion,
    LocalTokenizer,
    SamplingParams,
    prompt_seeds,
    row_seed,
)
from sharpen.backends.servers import PREFIX, ServerSpec, is_server_spec  # noqa: F401 - re-exported
from sharpen.core.errors import BackendError, ConfigError
from sharpen.core.meter import UsageMeter


def _seed31(seed: int) -> int:
    """Servers take a 32-bit signed seed at most (vLLM, llama.cpp): fold the 63-bit row seed."""
    return (seed ^ (seed >> 31)) & 0x7FFFFFFF


class OpenAIBackend(BackendBase, LocalTokenizer):
    """The `Backend` protocol over `/v1/completions` (see the module docstring). It holds a client
    (a connection pool) and an event-loop thread: `close()` it, or use it in a `with` block."""

    def __init__(self, spec: str | ServerSpec, seed: int = 0, probe: bool = True, **_hf_options: Any):
        import random

        self.spec = spec if isinstance(spec, ServerSpec) else ServerSpec.parse(spec)
        self.name = f"{PREFIX}{self.spec.base_url}#{self.spec.model}"
        self.meter = UsageMeter()
        self._rng = random.Random(seed)
        self.tokenizer = self._load_tokenizer()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sharpen-openai", daemon=True)
        self._thread.start()
        self._client: Any = None
        self.logprobs_available: bool | None = None
        self.llamacpp = False  # a llama.cpp server (see the module docstring), found by `probe`
        self.sampling: str | None = None if self.spec.sampling == "auto" else self.spec.sampling
        try:
            self._client = self._call(self._make_client())
            if probe:
                self.probe()
        except BaseException:
            self.close()  # a backend that failed to start leaves no thread or connection behind
            raise

    # -- setup ------------------------------------------------------------------------------
    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        from sharpen.backends.models import resolve_model

        source = self.spec.tokenizer or self.spec.model
        try:
            path = resolve_model(source)
        except Exception:  # noqa: BLE001 - any failure: say which tokenizer and how to name one
            raise ConfigError(
                f"no local tokenizer for {source!r} (fix: add ;tokenizer=DIR_OR_HF_ID to the openai: spec, "
                "a model dir or built-in name with the served model's tokenizer and chat template)"
            ) from None
        tok = AutoTokenizer.from_pretrained(str(path))
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        return tok

    async def _make_client(self) -> Any:
        try:
            from openai import AsyncOpenAI
        except ImportError:
            raise ConfigError("the openai: backend needs the openai package (fix: pip install 'sharpen[serve]')") from None
        self._sem = asyncio.Semaphore(self.spec.in_flight)
        return AsyncOpenAI(base_url=self.spec.base_url, api_key=os.environ.get("OPENAI_API_KEY", "EMPTY"),
                           max_retries=self.spec.retries, timeout=self.spec.timeout)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        """Close the client's connections and stop the event loop thread; a second call does nothing."""
        if self._loop.is_running() and self._thread.is_alive():
            try:
                if self._client is not None:
                    asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result(timeout=5)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout=5)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()

    def probe(self) -> None:
        """A few tiny requests: the server is up and serves this model name; whether it returns
        log-probabilities; whether it is llama.cpp's; and how to make it sample. `transformers serve`
        samples only when the model's generation config says `do_sample` (it never turns sampling on
        for a temperature): `sampling=auto` then sends a `generation_config` with `do_sample` on, if
        that makes two seeds differ where the standard fields did not."""
        self._probe_logprobs()
        self._find_llamacpp()
        if self.sampling is None:
            self.sampling = "standard" if self._samples("standard") else (
                "generation_config" if self._samples("generation_config") else "none")

    def _tiny(self, logprobs: int | None, retries: int | None = None) -> Any:
        return self._call(self._request("x", max_tokens=1, temperature=0.0, seed=0, stop=None, logprobs=logprobs,
                                        retries=retries))

    def _probe_logprobs(self) -> None:
        """Whether the server returns log-probabilities (never asked with `;logprobs=off`); as the first
        request, it also fails for a server that is down or does not serve the model."""
        if self.spec.logprobs == "off":
            self.logprobs_available = False
            self._tiny(None)
            return
        try:  # once, without retries: a server may refuse `logprobs` (HTTP 500 from llama-cpp-python)
            resp = self._tiny(1, retries=0)
        except BackendError as e:
            if "logprob" in str(e).lower():
                self.logprobs_available = False
                self._tiny(None)
                return
            resp = self._tiny(1)  # another failure: again, with the client's retries
        self.logprobs_available = _token_logprobs(resp.choices[0]) is not None

    def _find_llamacpp(self) -> None:
        """Whether GET /v1/models says llama.cpp (`owned_by` "me": llama-cpp-python, "llamacpp":
        llama-server); if so, that it serves the model named after '#' (it would answer under any name)."""
        async def listed() -> list[Any]:
            return (await self._client.models.list()).data

        try:
            models = self._call(listed())
        except Exception:  # noqa: BLE001 - a server without GET /v1/models is simply not llama.cpp's
            return
        self.llamacpp = any(getattr(m, "owned_by", None) in ("me", "llamacpp") for m in models)
        names = [m.id for m in models]
        if self.llamacpp and self.spec.model not in names:
            raise BackendError(
                f"the llama.cpp server at {self.spec.base_url} does not serve model {self.spec.model!r} (it serves "
                f"{', '.join(map(repr, names))} and would answer with that under any name) (fix: the name it "
                "serves after '#', see GET /v1/models; `--model_alias NAME` when starting it names it)")

    def _samples(self, mode: str) -> bool:
        """Whether two seeds at temperature 2 give two different texts under sampling `mode`."""
        prompt = self.chat_prompt([{"role": "user", "content": "Say any word."}])
        old, self.sampling = self.sampling, mode

        async def two() -> list[Any]:
            return await asyncio.gather(*(self._request(prompt, 8, 2.0, seed, None, None) for seed in (1, 2)))

        try:
            a, b = self._call(two())
        finally:
            self.sampling = old
        return a.choices[0].text != b.choices[0].text

    # -- the Backend protocol -------------------------------------------------------------
    def generate(self, prompts: list[str], params: SamplingParams, seeds: Sequence[int] | None = None
                 ) -> list[list[Completion]]:
        if params.temperature > 0 and self.sampling == "none":
            raise BackendError(
                f"the server at {self.spec.base_url} returns the same text for every seed at temperature > 0: it does "
                "not sample (fix: a server that samples, e.g. vLLM; for `transformers serve`, a model dir whose "
                "generation_config.json sets do_sample: true)")
        pseeds = prompt_seeds(params, len(prompts), seeds, self._rng)
        rows = [(i, p, row_seed(pseeds[i], j)) for i, p in enumerate(prompts) for j in range(params.n)]
        t0 = time.perf_counter()

        async def all_rows() -> list[Any]:
            return await asyncio.gather(*(self._row(p, params, s) for _, p, s in rows), return_exceptions=True)

        settled = self._call(all_rows())
        done: list[tuple[Completion, int, int]] = [d for d in settled if not isinstance(d, BaseException)]
        if len(done) < len(settled):  # the rows that finished were billed: their usage is recorded all the same
            self.meter.record(sum(d[1] for d in done), sum(d[0].num_tokens for d in done), time.perf_counter() - t0,
                              calls=1, cached_tokens=sum(d[2] for d in done))
            raise next(d for d in settled if isinstance(d, BaseException))
        out: list[list[Completion]] = [[] for _ in prompts]
        for (i, _, _), (c, _, _) in zip(rows, done, strict=True):
            out[i].append(c)
        self.meter.record(sum(d[1] for d in done), sum(d[0].num_tokens for d in done), time.perf_counter() - t0,
                          calls=1 if rows else 0, cached_tokens=sum(d[2] for d in done))
        return out

    def next_token_logprobs(self, prompts: list[str], candidates: list[str]) -> list[dict[str, float]]:
        """From the top log-probabilities of one greedy token; a candidate outside the top 20 gets
        -inf. Needs a server that returns log-probabilities."""
        self.require_logprobs("the `self` scorer (P(Yes) of a judgement)")
        t0 = time.perf_counter()

        async def one(p: str) -> Any:
            return await self._request(p, max_tokens=1, temperature=0.0, seed=0, stop=None, logprobs=20)

        async def every() -> list[Any]:
            return await asyncio.gather(*(one(p) for p in prompts), return_exceptions=True)

        settled = self._call(every())
        resps = [r for r in settled if not isinstance(r, BaseException)]
        if len(resps) < len(settled):  # the judgements that finished were billed: their usage is recorded
            self.meter.record(sum(_usage(r)[0] for r in resps), len(resps), time.perf_counter() - t0, calls=1)
            raise next(r for r in settled if isinstance(r, BaseException))
        out = []
        for r in resps:
            top = _top_logprobs(r.choices[0]) or {}
            out.append({c: max((v for t, v in top.items() if t.strip() == c.strip()), default=-math.inf)
                        for c in candidates})
        self.meter.record(sum(_usage(r)[0] for r in resps), len(resps), time.perf_counter() - t0, calls=1)
        return out

    def require_logprobs(self, feature: str) -> None:
        if self.logprobs_available is None:
            self.probe()
        if not self.logprobs_available and self.spec.logprobs == "off":
            raise BackendError(f"{feature} needs token log-probabilities, and the spec says ;logprobs=off "
                               "(fix: drop ;logprobs=off, or a feature that needs none: e.g. --arg priors=uniform "
                               "for mcts, another --scorer)")
        if not self.logprobs_available:
            raise BackendError(
                f"{feature} needs token log-probabilities, and the server at {self.spec.base_url} returns none "
                "(`transformers serve` ignores `logprobs`, a llama.cpp server started with --logits_all false refuses "
                "them) (fix: a server that returns them, such as vLLM, SGLang or llama.cpp's, or a feature that needs "
                "none: e.g. --arg priors=uniform for mcts, another --scorer)"
            )

    # -- requests -------------------------------------------------------------------------
    async def _request(self, prompt: str, max_tokens: int, temperature: float, seed: int,
                       stop: list[str] | None, logprobs: int | None, top_p: float = 1.0,
                       retries: int | None = None) -> Any:
        import openai

        kw: dict[str, Any] = {"model": self.spec.model, "prompt": prompt, "max_tokens": max_tokens,
                              "temperature": temperature, "seed": seed}
        if top_p < 1.0 or self.llamacpp:
            kw["top_p"] = top_p
        if self.llamacpp:  # its own sampler defaults off: the distribution is the model's at `temperature`
            kw["extra_body"] = {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0, "cache_prompt": True}
        if stop:
            kw["stop"] = stop
        if logprobs is not None and self.logprobs_available is not False:
            kw["logprobs"] = logprobs
        if self.sampling == "generation_config" and temperature > 0:
            import json

            tok = self.tokenizer
            kw["extra_body"] = {"generation_config": json.dumps({
                "do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0, "max_new_tokens": max_tokens,
                "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id})}
        where = self.spec.base_url
        client = self._client if retries is None else self._client.with_options(max_retries=retries)
        async with self._sem:
            try:
                return await client.completions.create(**kw)
            except openai.APITimeoutError:
                raise BackendError(f"the server at {where} did not answer within {self.spec.timeout:g} s, "
                                   f"{self.spec.retries} retries (fix: a larger ;timeout=SECONDS, or a less loaded server)") from None
            except openai.APIConnectionError:
                raise BackendError(f"cannot reach the server at {where} (fix: start it, e.g. `transformers serve MODEL "
                                   "--port PORT` or `vllm serve MODEL`, or correct the URL in --model openai:URL#MODEL)") from None
            except openai.APIStatusError as e:
                detail = _detail(e)
                if e.status_code in (400, 404) and (self.spec.model in detail or "model" in detail.lower()):
                    raise BackendError(f"the server at {where} does not serve model {self.spec.model!r}: {detail} "
                                       "(fix: the name it serves after '#', see GET /v1/models)") from None
                raise BackendError(f"the server at {where} refused a request (HTTP {e.status_code}): {detail} "
                                   "(fix: check the server's log)") from None

    async def _row(self, prompt: str, params: SamplingParams, seed: int) -> tuple[Completion, int, int]:
        """One sampled row: the completion, its prompt tokens and the cached share of them."""
        stop = [params.delimiter] if params.stop_at == "step" and params.delimiter else None
        resp = await self._request(prompt, params.max_tokens, max(0.0, params.temperature), _seed31(seed), stop,
                                   logprobs=1, top_p=params.top_p)
        choice = resp.choices[0]
        text = choice.text or ""
        prompt_tokens, completion_tokens, cached = _usage(resp)
        if choice.finish_reason == "length":
            reason = "length"
        elif params.stop_at == "step":
            extra = getattr(choice, "model_extra", None) or {}  # vLLM's `stop_reason`: None when EOS ended the row
            at_stop = _ended_at_stop_string(choice, text, params.delimiter) if self.llamacpp else None
            if params.delimiter in text:  # a server that keeps the stop string (`transformers serve`)
                text, reason = text[: text.index(params.delimiter) + len(params.delimiter)], "step"
            elif at_stop is not None:  # llama.cpp: its tokens say
                text, reason = (text + params.delimiter, "step") if at_stop else (text, "eos")
            elif not text.strip() or ("stop_reason" in extra and extra["stop_reason"] is None):
                reason = "eos"
            else:  # stripped, and the server does not say by what: taken as the delimiter
                reason = "step"
                text += params.delimiter
        else:
            reason = "eos"
        if params.stop_at == "answer":
            cut = _answer_cut(text, params)
            if cut is not None:
                text, reason = cut, "answer"
        lps = _token_logprobs(choice)
        logprob = float(sum(lps)) if lps is not None else math.nan
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return Completion(text, ids, completion_tokens or len(ids), reason, logprob), prompt_tokens, cached


def _answer_cut(text: str, params: SamplingParams) -> str | None:
    """`text` up to and including its first complete answer line, or None when it has none."""
    prefix = params.answer_prefix.lower()
    pos = 0
    for line in text.split(params.delimiter)[:-1]:
        pos += len(line) + len(params.delimiter)
        if line.strip().lower().startswith(prefix):
            return text[:pos]
    return None


def _ended_at_stop_string(choice: Any, text: str, delimiter: str) -> bool | None:
    """For a llama.cpp server, which cuts the stop string from `text` but keeps the token that carried
    it in its log-probability `tokens` (and never EOS): whether the stop string ended the row; None
    when the tokens do not tell (none returned, or they do not spell out `text`)."""
    lp = getattr(choice, "logprobs", None)
    tokens = getattr(lp, "tokens", None) if lp is not None else None
    if tokens is None:
        return None
    spelled = "".join(tokens)
    if not spelled.startswith(text):
        return None
    return spelled[len(text):].startswith(delimiter)


def _usage(resp: Any) -> tuple[int, int, int]:
    u = getattr(resp, "usage", None)
    if u is None:
        return 0, 0, 0
    details = getattr(u, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) or 0 if details is not None else 0
    return int(u.prompt_tokens or 0), int(u.completion_tokens or 0), int(cached)


def _token_logprobs(choice: Any) -> list[float] | None:
    lp = getattr(choice, "logprobs", None)
    values = getattr(lp, "token_logprobs", None) if lp is not None else None
    if not values:
        return None
    return [v for v in values if v is not None]


def _top_logprobs(choice: Any) -> dict[str, float] | None:
    lp = getattr(choice, "logprobs", None)
    tops = getattr(lp, "top_logprobs", None) if lp is not None else None
    if not tops:
        return None
    return dict(tops[0] or {})


def _detail(e: Any) -> str:
    """The server's own words from an error response (FastAPI's `detail`, OpenAI's `error.message`)."""
    body = getattr(e, "body", None)
    msg = None
    if isinstance(body, dict):
        err = body.get("error")
        msg = body.get("detail") or body.get("message") or (err.get("message") if isinstance(err, dict) else err)
    return " ".join(str(msg or getattr(e, "message", e)).split())
