"""The HF backend's own decode loop: `model.generate`'s loop, except that rows that stopped leave the
batch and its KV cache while the others go on."""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessor

from sharpen.backends.hf_rows import DelimiterStop, sample_rows


class DecodeLoopMixin:
    """`HFBackend`'s decode loop (it uses its model, tokenizer, KV caches and settings)."""

    def _decode(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        cache,
        processors: list[LogitsProcessor],
        stop: DelimiterStop,
        max_new: int,
        generators: list[torch.Generator] | None,
    ) -> tuple[list[list[int]], torch.Tensor]:
        """The decode loop of `model.generate`, except that rows that stopped leave the batch (and
        the KV cache) once they are `compact_at` of it, so the rows still going no longer carry them.

        Sampling (`generators` given, one per row) draws each row from its own stream
        (`sample_rows`), as `generate` does here through `RowSampler`, so both decoders draw the
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
                     generators: list[torch.Generator] | None, eos: torch.Tensor, stop: DelimiterStop):
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
