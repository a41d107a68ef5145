"""In-process HF transformers backend: model loading and batched generation in stages, each stage
decoded by `model.generate` or by the backend's own loop (hf_decode.py, in which finished rows leave
the batch), with per-row stopping at a step delimiter or at the end of the answer line and token
log-probabilities recorded on the fly (hf_rows.py); prefill and the prompt-prefix KV cache in
hf_prefill.py; row-level continuous batching for `sharpen serve` in hf_continuous.py."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    LogitsProcessor,
    LogitsProcessorList,
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
from sharpen.backends.hf_continuous import ContinuousBatchingMixin
from sharpen.backends.hf_decode import DecodeLoopMixin
from sharpen.backends.hf_prefill import PrefillMixin, common_prefix_len
from sharpen.backends.hf_rows import DelimiterStop, LogprobRecorder, RowSampler
from sharpen.backends.models import cache_arg
from sharpen.core.errors import ConfigError, ModelError
from sharpen.core.meter import UsageMeter

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


class HFBackend(BackendBase, LocalTokenizer, PrefillMixin, DecodeLoopMixin, ContinuousBatchingMixin):
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
        shared = common_prefix_len(inputs) if self.prefix_cache else 0
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
        stop = DelimiterStop(self, params, total, prefixes)
        sampler = None if params.greedy else generators
        if self.drop_finished:
            with self._attention(cache):
                ids, logprobs = self._decode(input_ids, mask, cache, processors, stop, max_new, sampler)
            return ids, logprobs, stop.stopped_at, prompt_tokens
        recorder = LogprobRecorder(total)
        if sampler is not None:
            processors.append(RowSampler(sampler))
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
