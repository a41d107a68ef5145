"""Prefill and the prompt-prefix KV cache of the HF backend: a prefix every row shares is computed
once and kept (the last 8), then copied out to the rows (`_expanded_prefix`) or, in the decode loop,
kept once for all of them (`SharedPrefixCache`, see kv_cache.py); identical rows are prefilled once."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
from transformers import DynamicCache

from sharpen.backends.kv_cache import ATTENTION, GrowingCache, SharedPrefixCache


def common_prefix_len(rows: list[list[int]]) -> int:
    """Tokens every row starts with, leaving each row at least one token of its own."""
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    for i in range(max(0, n)):
        t = first[i]
        if any(r[i] != t for r in rows):
            return i
    return max(0, n)


class PrefillMixin:
    """`HFBackend`'s prefill and prefix-cache methods (they use its model, tokenizer and settings)."""

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
        if self._growing:  # every cache here is of `GrowingLayer`s (also `SharedPrefixCache`'s own positions)
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
            cache = GrowingCache() if self._growing else DynamicCache()
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
        return GrowingCache() if self._growing else None
