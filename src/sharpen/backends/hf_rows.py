"""Per-row hooks of the HF backend's decoders: each row samples from its own random stream
(`sample_rows`; `RowSampler` inside `model.generate`), stops at a step delimiter or at the end of its
answer line (`DelimiterStop`), and under `model.generate` has its token log-probabilities recorded
as they are chosen (`LogprobRecorder`)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessor, StoppingCriteria

from sharpen.backends.base import SamplingParams


class LogprobRecorder(LogitsProcessor):
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


class DelimiterStop(StoppingCriteria):
    """Per-row stop. Only rows whose newest token contains the delimiter are inspected (a
    vectorised lookup), so the check costs almost nothing on the other steps."""

    def __init__(self, backend: Any, params: SamplingParams, prompt_len: int, prefixes: list[str]):
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
    and stream, never on its batch-mates. One number per row and step, where an exponential race
    draws one per vocabulary entry (profile: docs/results/serving.md)."""
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


class RowSampler(LogitsProcessor):
    """Placed last in `generate`'s processors (run greedy): samples each row from its own stream
    (`sample_rows`) and leaves only the drawn token, so `generate` and the decode loop draw alike."""

    def __init__(self, generators: list[torch.Generator]):
        self.generators = generators

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        tokens = sample_rows(scores, self.generators)
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(scores.shape[0], device=scores.device), tokens] = 0.0
        return out
