"""Row-level continuous batching for the HF backend (`sharpen serve`): one decode loop that new
requests' rows join while it runs and that hands each request its completions as soon as its own rows
are done: iteration-level scheduling (Yu et al., 2022, "Orca: A Distributed Serving System for
Transformer-Based Generative Models"), as vLLM schedules."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from sharpen.backends.base import Completion, SamplingParams
from sharpen.backends.hf_prefill import common_prefix_len
from sharpen.backends.hf_rows import DelimiterStop
from sharpen.backends.kv_cache import GrowingCache, GrowingLayer
from sharpen.core.errors import ModelError


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
    stop_row: int  # its index in the decode's `DelimiterStop`
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


class ContinuousBatchingMixin:
    """`HFBackend`'s continuous batching (it uses its model, tokenizer, prefill and settings)."""

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
        stop = DelimiterStop(self, replace(params, n=1), 0, [])
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
                            stop: DelimiterStop):
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
        new = GrowingCache()
        for i in range(len(parts_kv[0])):
            k0 = parts_kv[0][i][0]
            shape = (len(out_rows), k0.shape[1], width + GrowingLayer.chunk, k0.shape[3])
            bufs = (k0.new_empty(shape), k0.new_empty(shape))
            start = 0
            for part in parts_kv:
                for buf, t in zip(bufs, part[i], strict=True):
                    n, length = t.shape[0], min(t.shape[2], width)
                    buf[start : start + n, :, : width - length].zero_()  # left padding: masked, kept finite
                    buf[start : start + n, :, width - length : width] = t[:, :, t.shape[2] - length :]
                start += part[i][0].shape[0]
            new.layers.append(GrowingLayer.over(*bufs, width))
        return out_rows, new, mask

    def _prefill_rows(self, prompts: list[list[int]]) -> tuple[list, torch.Tensor, int]:
        """The KV cache of every prompt but its last token (fed at the first decode step), each prompt
        once however many rows repeat it, the shared prefix from `_expanded_prefix`: per layer
        (rows, heads, positions, dim), left-padded; the mask of those positions; the prompt tokens."""
        distinct: dict[tuple[int, ...], int] = {}
        owner = [distinct.setdefault(tuple(x), len(distinct)) for x in prompts]
        uniq = [list(x) for x in distinct]
        shared = common_prefix_len(uniq) if self.prefix_cache else 0
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
