"""Training forward passes that run the prefix every row of a batch shares once, not once per row.

Every training row of a task starts with the same system prompt and few-shot examples: on
chain_sum that is 120 of the ~170 tokens of a DPO row, and a DPO batch of 8 pairs has 16 rows.
TRL runs the model over each whole row. `share_prefix` wraps the backbone (the transformer
without its LM head) so that, when all rows of a call begin with the same tokens, it runs that
prefix once at batch 1, copies its KV cache out to the rows, and runs only each row's own tokens.

This is exact, not an approximation: the rows attend to the same keys and values as before, and
since the copies are views of one computation, the backward pass sums every row's gradient into
the prefix (the same total the per-row forward gives). `tests/test_prefix.py` checks that the
log-probs and the LoRA gradients match the plain forward.

The policy's LoRA adapters are active in the prefix too, so the prefix is recomputed on every
call (it cannot be cached across steps); what is saved is the (rows - 1) copies of it.
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Iterator
from typing import Any

from sharpen.backends.models import cache_arg

MIN_SHARED = 16
"""A shorter common prefix is not worth a second forward call."""

_UNSPLITTABLE = ("position_ids", "past_key_values", "cache", "inputs_embeds", "cache_position",
                 "output_hidden_states", "output_attentions")
"""Forward arguments that, when set, mean the call is not a plain full-sequence pass."""


def shared_prefix_len(input_ids: Any, attention_mask: Any | None) -> int:
    """Leading positions where every row has the same token and is not padding, leaving every
    row at least one token of its own (right padding: a row's real tokens start at position 0)."""
    import torch

    if input_ids.dim() != 2 or input_ids.size(0) < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(dim=0)
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            return 0
        same &= attention_mask.bool().all(dim=0)
        shortest = int(attention_mask.sum(dim=1).min())
    else:
        shortest = input_ids.size(1)
    n = int(torch.cumprod(same.int(), dim=0).sum())
    return max(0, min(n, shortest - 1))


def share_prefix(backbone: Any, min_shared: int = MIN_SHARED) -> Any:
    """Wrap `backbone.forward` (a transformers base model, e.g. `LlamaModel`) in place; calls it
    cannot split (no shared prefix, positions or a cache given, gradient checkpointing, hidden
    states requested) run unchanged. Returns the backbone."""
    if getattr(backbone, "_sharpen_shares_prefix", False):
        return backbone
    original = backbone.forward
    cache_kw = cache_arg(type(backbone).forward)

    @functools.wraps(type(backbone).forward)
    def forward(self: Any, *args: Any, input_ids: Any = None, attention_mask: Any = None, **kwargs: Any) -> Any:
        plain = functools.partial(original, *args, input_ids=input_ids, attention_mask=attention_mask)
        if (args or input_ids is None or any(kwargs.get(k) is not None and kwargs.get(k) is not False for k in _UNSPLITTABLE)
                or (self.training and getattr(self, "gradient_checkpointing", False))):
            return plain(**kwargs)
        p = shared_prefix_len(input_ids, attention_mask)
        if p < min_shared:
            return plain(**kwargs)
        import torch
        from transformers import DynamicCache

        self._sharpen_shared_calls += 1
        rows = input_ids.size(0)
        kw = {k: v for k, v in kwargs.items() if k != "use_cache"}
        head = original(input_ids=input_ids[:1, :p],
                        attention_mask=None if attention_mask is None else attention_mask[:1, :p],
                        use_cache=True, **kw)
        cache = DynamicCache()
        for i, layer in enumerate(getattr(head, cache_kw).layers):
            cache.update(layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1), i)
        tail = original(input_ids=input_ids[:, p:], attention_mask=attention_mask, use_cache=True,
                        **{cache_kw: cache}, **kw)
        tail.last_hidden_state = torch.cat(
            [head.last_hidden_state.expand(rows, -1, -1), tail.last_hidden_state], dim=1)
        setattr(tail, cache_kw, None)
        return tail

    backbone.forward = types.MethodType(forward, backbone)
    backbone._sharpen_shares_prefix = True
    backbone._sharpen_shared_calls = 0  # calls that did split (tests read it)
    return backbone


def backbone_of(model: Any) -> Any:
    """The transformer under the LM head, through a peft wrapper if there is one."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.base_model


def _always(device: Any) -> bool:
    return True


@contextlib.contextmanager
def completion_positions_only(enabled: bool = True) -> Iterator[None]:
    """While active, TRL's fused LM head projects only the positions that have a label (the
    completion) on every device. TRL does that on CUDA/XPU but projects every position elsewhere, to
    keep tile shapes fixed for compilers (Neuron); on CPU that pushes the whole prompt through the
    49k-token vocabulary for nothing. Same values: the skipped positions are masked to 0 either way.

    TRL has no public switch for this (TRL 1.16: `trl.trainer.utils._use_triton(device)` decides,
    read at call time by the fused head's forward), so the module function is swapped for the
    duration of the block and TRL's own restored after it. A no-op when `enabled` is False or TRL
    no longer has that function."""
    try:
        from trl.trainer import utils
    except ImportError:  # pragma: no cover
        utils = None
    original = getattr(utils, "_use_triton", None)
    if not enabled or original is None:
        yield
        return
    utils._use_triton = _always
    try:
        yield
    finally:
        utils._use_triton = original


def score_completion_positions_only(trainer: Any) -> Any:
    """Confine `completion_positions_only` to one trainer: its loss (training and evaluation) and
    reference log-prob passes run inside it, nothing else in the process does. (Build the trainer
    inside `completion_positions_only()` too when it precomputes reference log-probs, which TRL
    does in the constructor.) Returns the trainer."""

    def confined(method: Any) -> Any:
        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            with completion_positions_only():
                return method(*args, **kwargs)

        return call

    for name in ("compute_loss", "compute_ref_log_probs"):
        method = getattr(trainer, name, None)
        if method is not None and not getattr(method, "_sharpen_completion_only", False):
            wrapped = confined(method)
            wrapped._sharpen_completion_only = True
            setattr(trainer, name, wrapped)
    return trainer
