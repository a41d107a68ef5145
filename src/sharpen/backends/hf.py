"""In-process HF transformers backend: batched decoding (its own loop, in which finished rows leave
the batch, or `model.generate`) with per-row stopping at a step delimiter or at the end of the
answer line, and token log-probabilities recorded on the fly."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import DynamicLayer

from sharpen.backends.base import (
    BackendBase,
    Completion,
    LocalTokenizer,
    SamplingParams,
    prompt_seeds,
    row_seed,
)
from sharpen.backends.kv_cache import ATTENTION, SharedPrefixCache, _GrowingCache, _GrowingLayer
from sharpen.backends.models import cache_arg
from sharpen.core.errors import ConfigError, ModelError
from sharpen.core.meter import UsageMeter


class _LogprobRecorder(LogitsProcessor):
    """Placed first, so it sees raw logits. At each step it looks up the log-probability of the
    token chosen at the previous step; `finish` picks up the last one."""

    def __init__(self, prompt_len: int):
        self.prompt_len = prompt_len
        self.prev: torch.Tensor | None = None
        self.picked: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prev is not None:
            self.picked.append(self.prev.gather(1, input_ids[:, -1:]).squeeze(1))
        self.prev = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        if self.prev is not None and sequences.shape[1] - self.prompt_len > len(self.picked):
            self.picked.append(self.prev.gather(1, sequences[:, -1:]).squeeze(1))
        if not self.picked:
            return torch.zeros(sequences.shape[0], 0)
        return torch.stack(self.picked, dim=1)


class _DelimiterStop(StoppingCriteria):
    """Per-row stop. Only rows whose newest token contains the delimiter are inspected (a
    vectorised lookup), so the check costs almost nothing on the other steps."""

    def __init__(self, backend: HFBackend, params: SamplingParams, prompt_len: int, prefixes: list[str]):
        self.mask = backend._delimiter_mask(params.delimiter)
        self.tok = backend.tokenizer
        self.params = params
        self.prompt_len = prompt_len
        self.prefixes = prefixes  # text each row generated in earlier stages
        self.stopped_at = [-1] * len(prefixes)  # number of generated tokens when the row stopped

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kw) -> torch.BoolTensor:
        hit = self.mask[input_ids[:, -1]]
        done = torch.zeros_like(hit)
        for row in torch.nonzero(hit).flatten().tolist():
            if self.stopped_at[row] < 0:
                self.stops_at_delimiter(row, input_ids[row, self.prompt_len :].tolist())
        for row, at in enumerate(self.stopped_at):
            if at >= 0:
                done[row] = True
        return done

    def stops_at_delimiter(self, row: int, gen_ids: list[int]) -> bool:
        """`row`'s newest token holds the delimiter: whether the row stops there (every step when
        `stop_at="step"`, else once its answer line is complete); records where it stopped."""
        if self.params.stop_at == "step" or self._answer_line_done(row, gen_ids):
            self.stopped_at[row] = len(gen_ids)
            return True
        return False

    def _answer_line_done(self, row: int, gen_ids: list[int]) -> bool:
        text = self.prefixes[row] + self.tok.decode(gen_ids, skip_special_tokens=True)
        lines = text.split(self.params.delimiter)[:-1]  # completed lines only
        prefix = self.params.answer_prefix.lower()
        return any(line.strip().lower().startswith(prefix) for line in lines)


def sample_rows(scores: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row, row i drawn from its own `generators[i]` by inverting its distribution's
    CDF at one uniform draw of that stream, so a row's token depends only on its own distribution
    and stream, never on its batch-mates. One number per row and step: an exponential race over the
    whole vocabulary (49,152 draws a row) took a fifth of a 256-row decode's time here."""
    probs = torch.softmax(scores.float(), dim=-1)
    rows, vocab = probs.shape
    u = torch.cat([torch.rand(1, generator=g, device=probs.device, dtype=torch.float64) for g in generators])
    # two levels (blocks of 256 tokens, then the tokens of the chosen block), in float64, so the
    # search costs two small cumulative sums instead of one over the whole vocabulary
    width = 256
    padded = (torch.nn.functional.pad(probs, (0, -vocab % width)) if vocab % width else probs).view(rows, -1, width)
    block_cdf = padded.sum(dim=-1).double().cumsum(dim=-1)
    target = u * block_cdf[:, -1]
    block = torch.searchsorted(block_cdf, target[:, None], right=True).clamp_(max=block_cdf.shape[1] - 1)
    before = torch.where(block > 0, block_cdf.gather(1, (block - 1).clamp(min=0)), torch.zeros_like(target[:, None]))
    inner = padded.gather(1, block[:, :, None].expand(-1, -1, width)).squeeze(1).double().cumsum(dim=-1)
    # the first token whose cumulative probability passes the target: never one of probability 0
    pick = torch.searchsorted(inner, target[:, None] - before, right=True).clamp_(max=width - 1)
    return (block * width + pick).squeeze(1).clamp_(max=vocab - 1)


class _RowSampler(LogitsProcessor):
    """Placed last in `generate`'s processors (run greedy): samples each row from its own stream
    (`sample_rows`) and leaves only the drawn token, so `generate` and the decode loop draw alike."""

    def __init__(self, generators: list[torch.Generator]):
        self.generators = generators

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        tokens = sample_rows(scores, self.generators)
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(scores.shape[0], device=scores.device), tokens] = 0.0
        return out


def _common_prefix_len(rows: list[list[int]]) -> int:
    """Tokens every row starts with, leaving each row at least one token of its own."""
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    for i in range(max(0, n)):
        t = first[i]
        if any(r[i] != t for r in rows):
            return i
    return max(0, n)


@dataclass
class RowJob:
    """One backend call's rows for `HFBackend.continuous`: one text and one stream seed a row."""

    texts: list[str]
    seeds: list[int]
    max_tokens: int
    token: Any = None  # the caller's


@dataclass(eq=False)  # a row and its job's state refer to each other
class _LiveRow:
    job: _RowJobState
    stop_row: int  # its index in the decode's `_DelimiterStop`
    generator: torch.Generator
    max_tokens: int
    next_id: int  # the token fed at the next step
    position: int  # its position id
    gen: list[int] = field(default_factory=list)
    logprob: float = 0.0
    done: bool = False
    reason: str | None = None


@dataclass(eq=False)
class _RowJobState:
    job: RowJob
    left: int
    prompt_tokens: int  # what its rows' prefill computed
    row_prompt_tokens: int  # every row's prompt tokens: what the rows cost alone
    started: float
    rows: list[_LiveRow] = field(default_factory=list)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """`auto`/None (float32 on CPU, bfloat16 on GPU), a torch dtype, or its name."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r} (fix: auto, {', '.join(DTYPES)})")
    return DTYPES[dtype]


class HFBackend(BackendBase, LocalTokenizer):
    """Batched generation with a transformers causal LM, on CPU or GPU."""

    def __init__(
        self,
        path: str | Path,
        seed: int = 0,
        max_batch: int = 32,
        stage_tokens: int = 32,
        prefix_cache: bool = True,
        drop_finished: bool = True,
        device: str | None = None,
        dtype: torch.dtype | str | None = None,
    ):
        path = str(path)
        self.name = path
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = parse_dtype(dtype)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype or (torch.bfloat16 if self.device == "cuda" else torch.float32)
            ).to(self.device)
        except (OSError, ValueError) as e:
            raise ModelError(
                f"cannot load model from {path}: {str(e).splitlines()[0]} "
                "(fix: point --model at a directory with config.json, weights and a tokenizer)"
            ) from None
        self.model.eval()
        self._setup(seed, max_batch, stage_tokens, prefix_cache, drop_finished)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, seed: int = 0, **kw: Any) -> HFBackend:
        """A backend over a model already in memory (GRPO's policy while it trains, LoRA adapters
        active). Its weights may change between calls: call `forget_prefixes()` after they do; and it
        is left in the mode it is in (generate in `eval()` mode: no dropout)."""
        self = cls.__new__(cls)
        self.name = getattr(model, "name_or_path", "") or type(model).__name__
        self.model, self.tokenizer = model, tokenizer
        self.device = str(next(model.parameters()).device)
        self._setup(seed, **kw)
        return self

    def forget_prefixes(self) -> None:
        """Drop the prompt KV kept across calls (stale once the model's weights change)."""
        self._prefix_kv.clear()

    @property
    def context_length(self) -> int | None:
        """The most tokens one row (prompt and generation) may hold: the model config's position
        limit, else the tokenizer's `model_max_length` when it is a real one; None when neither says."""
        config = self.model.config
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
            n = getattr(config, key, None)
            if isinstance(n, int) and n > 0:
                return n
        n = getattr(self.tokenizer, "model_max_length", None)
        return n if isinstance(n, int) and 0 < n < 10**8 else None

    def _setup(self, seed: int = 0, max_batch: int = 32, stage_tokens: int = 32, prefix_cache: bool = True,
               drop_finished: bool = True) -> None:
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_batch = max_batch
        self.stage_tokens = stage_tokens
        self.prefix_cache = prefix_cache
        # True: finished rows leave the batch (`_decode`); False: HF `generate`, which keeps them to the end
        self.drop_finished = drop_finished
        self._cache_kwarg = cache_arg(type(self.model).forward)
        self._prefix_kv: dict[tuple[int, ...], list] = {}
        self.meter = UsageMeter()
        self._rng = random.Random(seed)
        self._masks: dict[str, torch.Tensor] = {}
        # finished rows leave a decode's batch once they are this share of it (0: at once)
        self.compact_at = 0.5
        self.max_wait = 8  # continuous(): decode steps new rows may wait for a quarter of the batch to join
        # the appending KV cache only where every layer's cache is a plain one (no sliding window)
        try:
            self._growing = all(type(x) is DynamicLayer for x in DynamicCache(config=self.model.config).layers)
        except Exception:  # noqa: BLE001 - a config the cache cannot read: transformers' own cache
            self._growing = False
        # the prompt prefix all rows share kept once in the decode loop's KV cache (`SharedPrefixCache`),
        # where the model runs sdpa attention through transformers' attention interface; checked on
        # first use against the plain cache (`_shares_prefix`)
        cfg = self.model.config
        self.share_prefix: bool | None = (None if self._growing and getattr(cfg, "_attn_implementation", None) == "sdpa"
                                          and not getattr(cfg, "sub_configs", None) else False)

    # -- prompts: chat_prompt, count_tokens, eos_text from LocalTokenizer --------------------
    def _delimiter_mask(self, delimiter: str) -> torch.Tensor:
        if delimiter not in self._masks:
            vocab = len(self.tokenizer)
            pieces = self.tokenizer.batch_decode([[i] for i in range(vocab)])
            mask = torch.tensor([delimiter in p for p in pieces], dtype=torch.bool)
            size = self.model.get_output_embeddings().weight.shape[0]
            if size > vocab:
                mask = torch.cat([mask, torch.zeros(size - vocab, dtype=torch.bool)])
            self._masks[delimiter] = mask.to(self.device)
        return self._masks[delimiter]

    # -- generation ------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompts: list[str], params: SamplingParams, seeds=None) -> list[list[Completion]]:
        pseeds = prompt_seeds(params, len(prompts), seeds, self._rng)
        rows = [(i, p, row_seed(pseeds[i], j)) for i, p in enumerate(prompts) for j in range(params.n)]
        # similar lengths batched together: less padding (each row samples from its own stream,
        # so the grouping changes no draw)
        order = sorted(range(len(rows)), key=lambda r: len(rows[r][1]))
        out: list[list[Completion]] = [[] for _ in prompts]
        results: dict[int, Completion] = {}
        for start in range(0, len(order), self.max_batch):
            chunk = order[start : start + self.max_batch]
            batch = self._generate_batch([rows[r][1] for r in chunk], params, [rows[r][2] for r in chunk],
                                         calls=int(start == 0))  # one call per request, however it is chunked
            for r, c in zip(chunk, batch, strict=True):
                results[r] = c
        for r in range(len(rows)):
            out[rows[r][0]].append(results[r])
        return out

    @staticmethod
    def _warpers(params: SamplingParams) -> list[LogitsProcessor]:
        """The logits warpers of a sampled call (none when greedy)."""
        if params.greedy:
            return []
        warpers: list[LogitsProcessor] = [TemperatureLogitsWarper(params.temperature)]
        if params.top_p < 1.0:
            warpers.append(TopPLogitsWarper(params.top_p))
        return warpers

    def _completion(self, ids: list[int], reason: str | None, logprob: float, params: SamplingParams) -> Completion:
        """A finished row as a Completion: a step's text ends at its delimiter."""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if reason == "step" and params.delimiter in text:
            text = text[: text.index(params.delimiter) + len(params.delimiter)]
        return Completion(text, ids, len(ids), reason or "length", logprob)

    def _generate_batch(self, texts: list[str], params: SamplingParams, seeds: list[int], calls: int = 1) -> list[Completion]:
        """Generate in stages of `stage_tokens`: after each stage the rows go on from their exact
        token ids with a fresh prefill (and the finished ones are gone, also when HF `generate`,
        which keeps finished rows to the end of its call, does the decoding).

        Metered: every row's prompt tokens (what the rows cost alone, however they are chunked and
        staged) and, as `cached_tokens`, the part of them the first stage did not prefill (a prefix
        the rows share, prefilled once); a later stage's prefill of a row's own tokens is this
        backend's overhead and is not metered."""
        t0 = time.perf_counter()
        prompts = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        gen: list[list[int]] = [[] for _ in texts]
        logprob = [0.0] * len(texts)
        reason: list[str | None] = [None] * len(texts)
        prefilled: int | None = None  # the first stage's prefill
        active = list(range(len(texts)))
        eos_ids = self._eos_ids()
        # one random stream per row, kept across stages
        gens = [torch.Generator(device=self.device).manual_seed(s) for s in seeds]
        while active:
            remaining = params.max_tokens - len(gen[active[0]])
            stage = remaining if len(active) == 1 or remaining <= 1.5 * self.stage_tokens else self.stage_tokens
            new_ids, new_lp, stopped, n_prompt = self._run_stage(
                [prompts[r] + gen[r] for r in active],
                [self.tokenizer.decode(gen[r], skip_special_tokens=True) for r in active],
                params,
                stage,
                [gens[r] for r in active],
            )
            prefilled = n_prompt if prefilled is None else prefilled
            still = []
            for i, r in enumerate(active):
                ids = new_ids[i]
                eos_at = next((j for j, t in enumerate(ids) if t in eos_ids), None)
                n = len(ids)
                if stopped[i] >= 0 and (eos_at is None or stopped[i] <= eos_at):
                    n, reason[r] = stopped[i], params.stop_at
                elif eos_at is not None:
                    n, reason[r] = eos_at + 1, "eos"
                gen[r] += ids[:n]
                logprob[r] += float(new_lp[i, :n].sum()) if n else 0.0
                if reason[r] is None:
                    if len(gen[r]) >= params.max_tokens:
                        reason[r] = "length"
                    else:
                        still.append(r)
            active = still
        completions = [self._completion(ids, reason[r], logprob[r], params) for r, ids in enumerate(gen)]
        prompt_tokens = sum(len(x) for x in prompts)
        self.meter.record(
            prompt_tokens=prompt_tokens,
            generated_tokens=sum(c.num_tokens for c in completions),
            seconds=time.perf_counter() - t0,
            calls=calls,
            cached_tokens=max(0, prompt_tokens - (prefilled or 0)),
        )
        return completions

    def _run_stage(
        self, inputs: list[list[int]], prefixes: list[str], params: SamplingParams, max_new: int,
        generators: list[torch.Generator],
    ) -> tuple[list[list[int]], torch.Tensor, list[int], int]:
        pad = self.tokenizer.pad_token_id
        shared = _common_prefix_len(inputs) if self.prefix_cache else 0
        # k samples of one prompt are k identical rows: the prefix cache is built for the distinct rows
        distinct: dict[tuple[int, ...], int] = {}
        owner = [distinct.setdefault(tuple(x), len(distinct)) for x in inputs]
        dedup = self.prefix_cache and len(distinct) < len(inputs)
        shares = self.drop_finished and shared >= 16 and self._shares_prefix()
        if shares:
            cache = self._shared_prefix(inputs[0][:shared])
        else:
            cache = self._expanded_prefix(inputs[0][:shared], len(distinct) if dedup else len(inputs)) if shared >= 16 else None
        if cache is None:
            shared = 0
        input_ids, mask = self._padded(inputs, shared)
        total = input_ids.shape[1]
        if dedup and self.prefix_cache:  # (_expanded_prefix turns prefix_cache off for a cache it cannot share)
            with self._attention(cache):
                cache = self._prefill_distinct(owner, input_ids, mask, cache)
        prompt_tokens = int(mask.sum()) - shared * (len(inputs) - 1) if shared else int(mask.sum())
        processors = self._warpers(params)
        stop = _DelimiterStop(self, params, total, prefixes)
        sampler = None if params.greedy else generators
        if self.drop_finished:
            with self._attention(cache):
                ids, logprobs = self._decode(input_ids, mask, cache, processors, stop, max_new, sampler)
            return ids, logprobs, stop.stopped_at, prompt_tokens
        recorder = _LogprobRecorder(total)
        if sampler is not None:
            processors.append(_RowSampler(sampler))
        seqs = self.model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            past_key_values=cache,
            max_new_tokens=max_new,
            do_sample=False,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            logits_processor=LogitsProcessorList([recorder, *processors]),
            stopping_criteria=StoppingCriteriaList([stop]),
            pad_token_id=pad,
        )
        return seqs[:, total:].tolist(), recorder.finish(seqs), stop.stopped_at, prompt_tokens

    def _decode(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        cache,
        processors: list[LogitsProcessor],
        stop: _DelimiterStop,
        max_new: int,
        generators: list[torch.Generator] | None,
    ) -> tuple[list[list[int]], torch.Tensor]:
        """The decode loop of `model.generate`, except that rows that stopped leave the batch (and
        the KV cache) once they are `compact_at` of it, so the rows still going no longer carry them.

        Sampling (`generators` given, one per row) draws each row from its own stream
        (`sample_rows`), as `generate` does here through `_RowSampler`, so both decoders draw the
        same tokens. A smaller batch can round the logits differently (CPU attention kernels split
        work by batch size), by about 1e-5 in a log-probability, so a draw that sits on such a tie
        could differ. tests/test_backend.py compares tokens and log-probabilities with `generate`."""
        n_rows = input_ids.shape[0]
        eos = torch.tensor(sorted(self._eos_ids()), dtype=torch.long, device=self.device)
        pos = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        past = cache.get_seq_length() if cache is not None else 0
        cache = cache if cache is not None else self._new_cache()
        step_ids, step_pos, attn = input_ids[:, past:], pos[:, past:], mask
        batch = list(range(n_rows))  # the rows in the forward pass, in order
        live = list(range(n_rows))  # positions in `batch` of the rows still going
        gen: list[list[int]] = [[] for _ in range(n_rows)]
        logprobs = torch.zeros(n_rows, max_new)
        pad = self.tokenizer.pad_token_id
        for step in range(max_new):
            out = self.model(
                input_ids=step_ids,
                attention_mask=attn,
                position_ids=step_pos,
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_kwarg: cache},
            )
            cache = getattr(out, self._cache_kwarg)
            at = torch.tensor(live, device=self.device)  # the rows still going, among those in the forward
            tokens, picked, ended, hit = self._next_tokens(
                out, live, step_ids, processors, None if generators is None else [generators[batch[j]] for j in live],
                eos, stop)
            keep = []
            for k, (j, tok) in enumerate(zip(live, tokens.tolist(), strict=True)):
                row = batch[j]
                gen[row].append(tok)
                logprobs[row, step] = picked[k]
                if not ended[k] and not (hit[k] and stop.stops_at_delimiter(row, gen[row])):
                    keep.append(j)
            if not keep or step == max_new - 1:
                break
            fed = torch.full((len(batch),), pad, dtype=torch.long, device=self.device)
            fed[at] = tokens
            # finished rows leave the batch (and the KV cache) once they are half of it: copying
            # the cache whenever one row stops cost more than carrying a few rows a little longer
            if len(batch) - len(keep) >= max(1, int(len(batch) * self.compact_at)):
                idx = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(idx)
                batch = [batch[j] for j in keep]
                attn, step_pos, fed = attn[idx], step_pos[idx], fed[idx]
                live = list(range(len(batch)))
            else:
                live = keep
            attn = torch.cat([attn, attn.new_ones(len(batch), 1)], dim=1)
            step_pos = step_pos[:, -1:] + 1
            step_ids = fed[:, None]
        return gen, logprobs

    def _next_tokens(self, out: Any, at: list[int], step_ids: torch.Tensor, processors: list[LogitsProcessor],
                     generators: list[torch.Generator] | None, eos: torch.Tensor, stop: _DelimiterStop):
        """One decode step's tokens for the rows `at` of the forward pass (the rows still going; the
        others are left out): greedy, or drawn from each row's own stream (`generators`, one per row
        of `at`). Also each token's log-probability, whether it is an end-of-sequence token, and
        whether it holds the stop delimiter (only those rows need the delimiter check)."""
        logits = out.logits[:, -1].to(copy=True, dtype=torch.float32)
        seen = step_ids
        if len(at) < logits.shape[0]:
            idx = torch.tensor(at, device=self.device)
            logits, seen = logits[idx], step_ids[idx]
        scores = logits
        for proc in processors:
            scores = proc(seen, scores)
        tokens = torch.argmax(scores, dim=-1) if generators is None else sample_rows(scores, generators)
        picked = torch.log_softmax(logits, dim=-1).gather(1, tokens[:, None]).squeeze(1).tolist()
        return tokens, picked, torch.isin(tokens, eos).tolist(), stop.mask[tokens].tolist()

    # -- row-level continuous batching (`sharpen serve`) -------------------------------------
    @property
    def joins_rows(self) -> bool:
        """Whether `continuous` runs on this model: every layer's KV cache a plain one (no sliding
        window), which it pads and joins row by row."""
        return self._growing

    @torch.inference_mode()
    def continuous(self, params: SamplingParams, first: list[RowJob], admit: Callable[[], list[RowJob]],
                   deliver: Callable[[RowJob, list[Completion], int, float], None]) -> None:
        """One decode loop that calls join while it runs, as vLLM schedules: the rows of `first` start
        it; before every decode step `admit()` hands over more jobs (same sampling settings but for
        `max_tokens`, which is each job's own), whose rows are prefilled and join the running batch;
        a job is handed to `deliver(job, completions, prompt_tokens, seconds)` (`prompt_tokens`: what
        its rows' prefill computed) as soon as its own rows are done, not when the slowest row of the
        batch is. Returns when no row is left and
        `admit()` brings nothing.

        Each row draws from its own stream (`sample_rows`), as in `generate`; a row's tokens are
        those `generate` gives it (no stages here, so no re-prefill at stage boundaries; float32
        logits can round differently in another batch, see `_decode`). Joining copies the KV cache,
        so new rows wait until they are a quarter of the batch, or `max_wait` steps."""
        kw = self._cache_kwarg
        pad = self.tokenizer.pad_token_id
        eos = torch.tensor(sorted(self._eos_ids()), dtype=torch.long, device=self.device)
        processors = self._warpers(params)
        stop = _DelimiterStop(self, replace(params, n=1), 0, [])
        rows: list[_LiveRow] = []  # the rows in the forward pass, in batch order
        cache = None  # their KV cache
        mask = torch.zeros(0, 0, dtype=torch.long, device=self.device)  # cached positions of each row
        waiting: list[RowJob] = list(first)
        waited = 0
        while True:
            waiting += admit()
            live = sum(not r.done for r in rows)
            fresh = sum(len(j.texts) for j in waiting)
            finished = len(rows) - live
            take = []
            if waiting and (live == 0 or fresh >= max(1, live // 4) or waited >= self.max_wait):
                # the jobs that fit beside the live rows (one job at least when none is live)
                room = self.max_batch - live
                while waiting and (len(waiting[0].texts) <= room or (live == 0 and not take)):
                    take.append(waiting.pop(0))
                    room -= len(take[-1].texts)
            if take or (rows and finished >= max(1, int(len(rows) * self.compact_at))):
                rows, cache, mask = self._continuous_rebuild(rows, cache, mask, take, stop)
            waited = waited + 1 if waiting else 0
            if not rows:
                if waiting:
                    continue
                return
            step_ids = torch.tensor([r.next_id for r in rows], device=self.device)[:, None]
            position = torch.tensor([r.position for r in rows], device=self.device)[:, None]
            attn = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
            out = self.model(input_ids=step_ids, attention_mask=attn, position_ids=position, use_cache=True,
                             logits_to_keep=1, **{kw: cache})
            cache = getattr(out, kw)
            mask = attn
            at = [j for j, r in enumerate(rows) if not r.done]
            tokens, picked, ended, hit = self._next_tokens(
                out, at, step_ids, processors, None if params.greedy else [rows[j].generator for j in at], eos, stop)
            now = time.perf_counter()
            for k, (j, tok) in enumerate(zip(at, tokens.tolist(), strict=True)):
                r = rows[j]
                r.gen.append(tok)
                r.logprob += picked[k]
                r.next_id, r.position = tok, r.position + 1
                if ended[k]:
                    r.done, r.reason = True, "eos"
                elif hit[k] and stop.stops_at_delimiter(r.stop_row, r.gen):
                    r.done, r.reason = True, params.stop_at
                elif len(r.gen) >= r.max_tokens:
                    r.done, r.reason = True, "length"
                if r.done:
                    r.job.left -= 1
                    if r.job.left == 0:
                        self._continuous_deliver(r.job, params, deliver, now)
            for r in rows:
                if r.done:
                    r.next_id = pad

    def _continuous_rebuild(self, rows: list[_LiveRow], cache: Any, mask: torch.Tensor, take: list[RowJob],
                            stop: _DelimiterStop):
        """The batch without its finished rows, with `take`'s rows prefilled and joined: every row's
        cached positions right-aligned (padding on the left, masked out, zero), columns no row uses
        cut; the new KV cache written once, into a buffer the next steps append to."""
        keep = [j for j, r in enumerate(rows) if not r.done]
        idx = torch.tensor(keep, dtype=torch.long, device=self.device)
        parts_kv, parts_mask, out_rows = [], [], [rows[j] for j in keep]
        # the stop's per-row state for the rows that stay, re-indexed: a decode that runs as long as
        # requests keep coming holds state for the rows in its batch only
        stop.prefixes = [stop.prefixes[r.stop_row] for r in out_rows]
        stop.stopped_at = [stop.stopped_at[r.stop_row] for r in out_rows]
        for i, r in enumerate(out_rows):
            r.stop_row = i
        if keep:
            parts_kv.append([(layer.keys.index_select(0, idx), layer.values.index_select(0, idx))
                             for layer in cache.layers])
            parts_mask.append(mask.index_select(0, idx))
        t0 = time.perf_counter()
        for job in take:
            prompts = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in job.texts]
            new_kv, new_mask, n_prompt = self._prefill_rows(prompts)
            state = _RowJobState(job, len(prompts), n_prompt, sum(len(ids) for ids in prompts), t0)
            for i, ids in enumerate(prompts):
                stop.prefixes.append("")
                stop.stopped_at.append(-1)
                gen = torch.Generator(device=self.device).manual_seed(job.seeds[i])
                row = _LiveRow(state, len(stop.prefixes) - 1, gen, job.max_tokens, ids[-1], len(ids) - 1)
                state.rows.append(row)
                out_rows.append(row)
            parts_kv.append(new_kv)
            parts_mask.append(new_mask)
        if not out_rows:
            return [], None, mask[:0]
        widest = max(m.shape[1] for m in parts_mask)
        mask = torch.cat([torch.nn.functional.pad(m, (widest - m.shape[1], 0)) for m in parts_mask])
        unused = int((mask.cumsum(dim=1) == 0).all(dim=0).sum())  # leading columns no row uses
        mask = mask[:, unused:]
        width = mask.shape[1]
        new = _GrowingCache()
        for i in range(len(parts_kv[0])):
            k0 = parts_kv[0][i][0]
            shape = (len(out_rows), k0.shape[1], width + _GrowingLayer.chunk, k0.shape[3])
            bufs = (k0.new_empty(shape), k0.new_empty(shape))
            start = 0
            for part in parts_kv:
                for buf, t in zip(bufs, part[i], strict=True):
                    n, length = t.shape[0], min(t.shape[2], width)
                    buf[start : start + n, :, : width - length].zero_()  # left padding: masked, kept finite
                    buf[start : start + n, :, width - length : width] = t[:, :, t.shape[2] - length :]
                start += part[i][0].shape[0]
            new.layers.append(_GrowingLayer.over(*bufs, width))
        return out_rows, new, mask

    def _prefill_rows(self, prompts: list[list[int]]) -> tuple[list, torch.Tensor, int]:
        """The KV cache of every prompt but its last token (fed at the first decode step), each prompt
        once however many rows repeat it, the shared prefix from `_expanded_prefix`: per layer
        (rows, heads, positions, dim), left-padded; the mask of those positions; the prompt tokens."""
        distinct: dict[tuple[int, ...], int] = {}
        owner = [distinct.setdefault(tuple(x), len(distinct)) for x in prompts]
        uniq = [list(x) for x in distinct]
        shared = _common_prefix_len(uniq) if self.prefix_cache else 0
        cache = self._expanded_prefix(uniq[0][:shared], len(uniq)) if shared >= 16 else None
        if cache is None:
            shared = 0
        ids, mask = self._padded(uniq, shared)
        total = ids.shape[1]
        cache = self._prefill(ids, mask, cache)
        if cache is None:
            raise ModelError("a one-token prompt has nothing to prefill (fix: a prompt of two tokens or more)")
        rows = torch.tensor(owner, device=self.device)
        layers = [(layer.keys.index_select(0, rows), layer.values.index_select(0, rows)) for layer in cache.layers]
        n_prompt = sum(len(x) for x in prompts) - shared * (len(prompts) - 1)
        return layers, mask[rows, : total - 1], n_prompt

    def _continuous_deliver(self, state: _RowJobState, params: SamplingParams, deliver, now: float) -> None:
        completions = [self._completion(list(r.gen), r.reason, r.logprob, params) for r in state.rows]
        seconds = now - state.started
        # metered as `_generate_batch` does: every row's prompt tokens, the part not prefilled as cached
        self.meter.record(prompt_tokens=state.row_prompt_tokens, generated_tokens=sum(c.num_tokens for c in completions),
                          seconds=seconds, calls=1, cached_tokens=max(0, state.row_prompt_tokens - state.prompt_tokens))
        deliver(state.job, completions, state.prompt_tokens, seconds)

    def _padded(self, rows: list[list[int]], shared: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask laid out [shared prefix][padding][row's own tokens]: padding
        in the middle is masked out and position ids come from the mask, so every row sees exactly
        its own sequence."""
        pad = self.tokenizer.pad_token_id
        width = max(len(x) - shared for x in rows)
        ids = [x[:shared] + [pad] * (width - len(x) + shared) + x[shared:] for x in rows]
        mask = [[1] * shared + [0] * (width - len(x) + shared) + [1] * (len(x) - shared) for x in rows]
        return torch.tensor(ids, device=self.device), torch.tensor(mask, device=self.device)

    def _prefill(self, ids: torch.Tensor, mask: torch.Tensor, cache: Any):
        """Run every position but the last (fed at the first decode step) that `cache` (the shared
        prefix's, or None) does not hold; the cache after it (None: nothing to run, no cache)."""
        total = ids.shape[1]
        cached = cache.get_seq_length() if cache is not None else 0
        if total - 1 <= cached:
            return cache
        pos = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
        out = self.model(input_ids=ids[:, cached : total - 1], attention_mask=mask[:, : total - 1],
                         position_ids=pos[:, cached : total - 1], use_cache=True,
                         **{self._cache_kwarg: cache if cache is not None else self._new_cache()})
        return getattr(out, self._cache_kwarg)

    def _prefill_distinct(self, owner: list[int], input_ids: torch.Tensor, mask: torch.Tensor, cache):
        """Prefill each distinct row once (row i is a copy of distinct row `owner[i]`; `cache` holds the
        shared prefix for the distinct rows) and copy the KV cache out to every row, so generate's own
        prefill is a single token per row."""
        firsts = torch.tensor([owner.index(j) for j in range(max(owner) + 1)], device=self.device)
        cache = self._prefill(input_ids[firsts], mask[firsts], cache)
        if cache is None:
            return None
        rows = torch.tensor(owner, device=self.device)
        if self._growing:  # every cache here is of `_GrowingLayer`s (also `SharedPrefixCache`'s own positions)
            cache.batch_select_indices(rows)
            return cache
        full = DynamicCache()
        for i, layer in enumerate(cache.layers):
            full.update(layer.keys.index_select(0, rows), layer.values.index_select(0, rows), i)
        return full

    def _expanded_prefix(self, prefix: list[int], rows: int):
        """The KV cache of a prefix every row shares (the system prompt and few-shot examples),
        computed once and kept, copied out to `rows` rows: the batch prefills only its suffixes."""
        key = tuple(prefix[:-1])  # keep >= 1 uncached token per row for generate's first step
        try:
            layers = self._prefix_layers(key)
            cache = _GrowingCache() if self._growing else DynamicCache()
            for i, (k, v) in enumerate(layers):
                cache.update(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1), i)  # copied into its buffer
            return cache
        except Exception:  # a model whose cache is not a plain per-layer KV: no sharing
            self.prefix_cache = False
            return None

    def _prefix_layers(self, key: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the keys and values (1, kv heads, positions, dim) of these tokens, computed once
        and kept (the last 8 prefixes)."""
        if key not in self._prefix_kv:
            if len(self._prefix_kv) >= 8:
                self._prefix_kv.pop(next(iter(self._prefix_kv)))
            out = self.model(torch.tensor([list(key)], device=self.device), use_cache=True)
            self._prefix_kv[key] = [(layer.keys, layer.values) for layer in getattr(out, self._cache_kwarg).layers]
        return self._prefix_kv[key]

    def _shared_prefix(self, prefix: list[int]) -> SharedPrefixCache:
        """A cache holding a prefix every row shares, once (`SharedPrefixCache`): the rows' own
        positions start at its last token, fed to the prefill or the first decode step."""
        return SharedPrefixCache(self._prefix_layers(tuple(prefix[:-1])))

    @contextmanager
    def _attention(self, cache: Any):
        """The model's attention set to the shared-prefix one while `cache` is a `SharedPrefixCache`."""
        if not isinstance(cache, SharedPrefixCache):
            yield
            return
        cfg = self.model.config
        before = cfg._attn_implementation_internal
        cfg._attn_implementation_internal = ATTENTION
        try:
            yield
        finally:
            cfg._attn_implementation_internal = before

    def _shares_prefix(self) -> bool:
        """Whether the decode loop keeps the shared prefix once: the model's next-token log-probs
        through `SharedPrefixCache` must match the plain cache's (checked once, on 24 tokens of a
        prompt: within 1e-3 in float32; in a 16-bit dtype within 0.25 on the 10 likeliest tokens)."""
        if self.share_prefix is None:
            text = "Solve step by step: 3 + 4 - 2 = ? Then add 5 and state the answer on its own line. " * 4
            ids = torch.tensor([self.tokenizer(text, add_special_tokens=False)["input_ids"][:24]], device=self.device)
            key = tuple(ids[0, :12].tolist())
            try:
                with torch.inference_mode():
                    plain = torch.log_softmax(self.model(ids, use_cache=False).logits[0, -1].float(), -1)
                    cache = SharedPrefixCache(self._prefix_layers(key))
                    with self._attention(cache):
                        out = self.model(ids[:, 12:], position_ids=torch.arange(12, ids.shape[1], device=self.device)[None],
                                         use_cache=True, **{self._cache_kwarg: cache})
                    shared = torch.log_softmax(out.logits[0, -1].float(), -1)
                top = plain.topk(10).indices
                tol = 1e-3 if out.logits.dtype == torch.float32 else 0.25
                self.share_prefix = bool(ids.shape[1] == 24 and (plain[top] - shared[top]).abs().max() < tol)
            except Exception:  # noqa: BLE001 - a model whose attention or cache does not take it: the plain cache
                self.share_prefix = False
            finally:
                self._prefix_kv.pop(key, None)
        return self.share_prefix

    def _new_cache(self) -> DynamicCache | None:
        """An empty KV cache for the decode loop: the appending one where the model allows it, else
        None (the model makes its own, as `DynamicCache(config=...)`)."""
        return _GrowingCache() if self._growing else None

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    @torch.inference_mode()
    def next_token_logprobs(self, prompts: list[str], candidates: list[str]) -> list[dict[str, float]]:
        cand_ids = [self.tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in candidates]
        out: list[dict[str, float]] = []
        for start in range(0, len(prompts), self.max_batch):
            t0 = time.perf_counter()
            enc = self.tokenizer(
                prompts[start : start + self.max_batch], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.device)
            logits = self.model(**enc).logits[:, -1, :].float()
            lp = torch.log_softmax(logits, dim=-1)[:, cand_ids].tolist()
            out.extend({c: v for c, v in zip(candidates, row, strict=True)} for row in lp)
            self.meter.record(int(enc["attention_mask"].sum()), len(lp), time.perf_counter() - t0)
        return out
