"""KV caches for the HF backend's decode loop.

`GrowingLayer` appends into a buffer with room to spare instead of concatenating at every step.

`SharedPrefixCache` keeps the prompt prefix that every row of a call shares (the system prompt and
few-shot examples) once, not once per row, and only each row's own positions per row; attention
over it (`shared_prefix_attention`, registered with transformers as `ATTENTION`) scores a query
against the shared prefix and the row's own keys in one softmax, as cascade attention does (FlashInfer,
vLLM's prefix sharing). A row's KV cache holds only the prompt tokens after the shared prefix and
what it generates, so a decode step reads, and dropping finished rows copies, that much less
(measured: docs/results/serving.md). Same attention as sdpa's up to float rounding
(tests/test_backend.py compares logits and sampled tokens).
"""

from __future__ import annotations

from contextvars import ContextVar

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "sharpen_shared_prefix"


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` that appends into a buffer with room to spare (grown `chunk` positions at a
    time) instead of concatenating the whole cache at every step: `keys` and `values` are views of
    the buffer's first positions (what the concatenations cost: docs/results/serving.md). Whatever
    replaces `keys` (cropping, a parent's reordering) is copied into a new buffer at the next update."""

    chunk = 64

    def _own_length(self) -> int:
        """Positions held in this layer's own tensors."""
        return DynamicLayer.get_seq_length(self)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length, n = self._own_length(), key_states.shape[-2]
        buf = getattr(self, "_buf", None)
        if buf is None or self.keys is not self._view or length + n > buf[0].shape[-2] \
                or buf[0].shape[0] != key_states.shape[0]:
            shape = (*key_states.shape[:-2], length + n + self.chunk, key_states.shape[-1])
            buf = (key_states.new_empty(shape), value_states.new_empty(shape))
            if length:
                buf[0][..., :length, :] = self.keys
                buf[1][..., :length, :] = self.values
            self._buf = buf
        buf[0][..., length : length + n, :] = key_states
        buf[1][..., length : length + n, :] = value_states
        self.keys, self.values = buf[0][..., : length + n, :], buf[1][..., : length + n, :]
        self._view = self.keys
        return self.keys, self.values

    @classmethod
    def over(cls, keys: torch.Tensor, values: torch.Tensor, length: int) -> GrowingLayer:
        """A layer whose cache is the first `length` positions of these buffers (the rest: room to grow)."""
        layer = cls()
        layer.lazy_initialization(keys, values)
        layer._buf = (keys, values)
        layer.keys, layer.values = keys[..., :length, :], values[..., :length, :]
        layer._view = layer.keys
        return layer

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows `indices` (repeats allowed), copied into a new buffer with `chunk` positions
        of room: only the cached positions are copied, not the old buffer's spare ones."""
        length = self._own_length()
        if length == 0:
            return
        keys, values = self.keys.index_select(0, indices), self.values.index_select(0, indices)
        shape = (*keys.shape[:-2], length + self.chunk, keys.shape[-1])
        buf = (keys.new_empty(shape), values.new_empty(shape))
        buf[0][..., :length, :], buf[1][..., :length, :] = keys, values
        self._buf = buf
        self.keys, self.values = buf[0][..., :length, :], buf[1][..., :length, :]
        self._view = self.keys


class GrowingCache(DynamicCache):
    """A `DynamicCache` of `GrowingLayer`s."""

    def __init__(self) -> None:
        super().__init__()
        self.layer_class_to_replicate = GrowingLayer


# The shared prefix of the layer whose `update` just ran, for the attention call that follows it in
# the same attention module: (the keys `update` returned, prefix keys, prefix values). Attention
# checks it is handed those very keys, so a cache of another kind never meets a stale prefix.
PENDING: ContextVar[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None] = ContextVar("PENDING", default=None)


class SharedPrefixLayer(GrowingLayer):
    """One layer of `SharedPrefixCache`: the shared prefix's keys and values, (1, kv heads, P, dim),
    and each row's own positions after it, (rows, kv heads, S, dim). Its length is P + S, so masks
    and positions are those of the whole sequence; `update` returns the row's own keys only."""

    def __init__(self, prefix_keys: torch.Tensor, prefix_values: torch.Tensor) -> None:
        super().__init__()
        self.prefix_keys, self.prefix_values = prefix_keys, prefix_values

    def get_seq_length(self) -> int:
        return self.prefix_keys.shape[-2] + self._own_length()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        PENDING.set((keys, self.prefix_keys, self.prefix_values))
        return keys, values

    def crop(self, max_length: int) -> None:  # transformers' cropping cuts whole sequences: not here
        raise NotImplementedError("a shared-prefix KV cache cannot be cropped")


class SharedPrefixCache(DynamicCache):
    """The KV cache of rows that all start with one prefix, kept once (per layer: keys, values of
    shape (1, kv heads, P, dim)). Needs the model's attention set to `ATTENTION` while it is used
    (`HFBackend` does this around its own decode loop)."""

    def __init__(self, prefix: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        self.layers = [SharedPrefixLayer(k, v) for k, v in prefix]


def shared_prefix_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float | None = None,
                            dropout: float = 0.0, **kwargs):
    """Attention of `query` (rows, heads, q, dim) over a shared prefix and each row's own `key` and
    `value` (rows, kv heads, S, dim), in one softmax; sdpa's for any other cache. The mask (sdpa's
    boolean mask over all P + S positions, or None) applies to both parts."""
    pending = PENDING.get()
    if pending is None or pending[0] is not key:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    PENDING.set(None)
    _, pk, pv = pending
    rows, heads, q, dim = query.shape
    if kwargs.get("softcap") is not None or kwargs.get("sliding_window") is not None or dropout:
        # what this function does not do: sdpa over the prefix copied into every row
        key = torch.cat([pk.expand(rows, -1, -1, -1), key], dim=2)
        value = torch.cat([pv.expand(rows, -1, -1, -1), value], dim=2)
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    kv_heads, p, vdim = pk.shape[1], pk.shape[2], value.shape[-1]
    group = heads // kv_heads
    scaling = dim**-0.5 if scaling is None else scaling
    # in float32 whatever the model's dtype, as sdpa's kernels accumulate
    qf, pk, pv, key, value_f = query.float(), pk[0].float(), pv[0].float(), key.float(), value.float()
    # query heads h = k * group + j use kv head k (transformers' repeat_kv): rows of (j, q) per kv head
    qg = qf.reshape(rows, kv_heads, group * q, dim)
    # the prefix, the same for every row: one matrix product per kv head over all rows' queries
    s_pre = torch.bmm(qg.transpose(0, 1).reshape(kv_heads, rows * group * q, dim), pk.transpose(1, 2))
    s_pre = s_pre.view(kv_heads, rows, group * q, p).transpose(0, 1)
    scores = torch.cat([s_pre, torch.matmul(qg, key.transpose(-1, -2))], dim=-1) * scaling
    length = scores.shape[-1]
    if attention_mask is None:  # no padding: causal over the row's own positions (the prefix is before them)
        i = torch.arange(q, device=query.device)[:, None] + (length - q)
        attention_mask = (torch.arange(length, device=query.device)[None, :] <= i)[None, None]
    if attention_mask.dtype == torch.bool:
        visible = attention_mask[..., -length:]
        visible = visible.unsqueeze(2).expand(visible.shape[0], 1, group, q, length).reshape(-1, 1, group * q, length)
        scores = scores.masked_fill(~visible, float("-inf"))
    else:  # an additive float mask
        add = attention_mask[..., -length:].float()
        scores = scores + add.unsqueeze(2).expand(add.shape[0], 1, group, q, length).reshape(-1, 1, group * q, length)
    probs = torch.softmax(scores, dim=-1)
    out_pre = torch.bmm(probs[..., :p].transpose(0, 1).reshape(kv_heads, rows * group * q, p), pv)
    out = out_pre.view(kv_heads, rows, group * q, vdim).transpose(0, 1) + torch.matmul(probs[..., p:], value_f)
    out = out.reshape(rows, heads, q, vdim).transpose(1, 2).contiguous().to(query.dtype)
    return out, None


AttentionInterface.register(ATTENTION, shared_prefix_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)
