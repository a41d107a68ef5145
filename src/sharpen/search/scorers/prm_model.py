"""A trained process reward model at inference: the input format a PRM reads (Math-Shepherd,
arXiv 2312.08935: the context, then each step followed by the step delimiter, the label at the step's
last token) and `PRMModel`, which scores step boundaries. `sharpen.train.prm` trains one in this
format; the `prm:<path>` scorer and `sharpen.train.metrics.prm_auroc` load and run it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sharpen.backends.models import load_tokenizer
from sharpen.core.errors import ModelError, TaskError

DELIMITER = "\n"
"""The step delimiter of label rows without a `delimiter` column and of PRMs whose format file
does not name one."""


CONTEXTS = ("prompt", "question")


def context_text(context: str, prompt: str | None, question: str | None) -> str:
    """What a PRM with `context` reads before the steps: the rendered prompt (the question when there
    is none), or the question and a newline."""
    if context == "question":
        if question is None:
            raise TaskError("this PRM reads the bare question, which these rows lack "
                            "(fix: rebuild the labels with `sharpen build labels`, which records it)")
        return question + "\n"
    return prompt or question or ""


def prm_format(delimiter: str = DELIMITER, context: str = "prompt") -> dict[str, Any]:
    """The contents of sharpen_prm.json for a PRM trained on steps ending with `delimiter`, reading
    `context` ("prompt" or "question") before them."""
    return {
        "kind": "sharpen-prm",
        "version": 1,
        "context": context,
        "input": ("question + '\\n'" if context == "question" else "prompt")
        + " + ''.join(step + delimiter for step in steps)",
        "label_position": "the last token of each step (the one holding its delimiter's last character)",
        "labels": {"0": "step leads away from the answer", "1": "step keeps the answer reachable"},
        "score": "softmax(logits)[..., 1] at each step's last token",
        "delimiter": delimiter,
    }


PRM_FORMAT = prm_format(DELIMITER)


def encode(
    tok: Any, prompt: str, steps: Sequence[str], max_length: int | None = None, delimiter: str = DELIMITER
) -> tuple[list[int], list[int]]:
    """Token ids of prompt + every step followed by `delimiter` and, for each step, the index of its
    last token: the one holding the delimiter's last character, or the token before it when that one
    also holds the next step's first word (-1 when the step was cut off by `max_length`)."""
    text = prompt
    starts, ends = [], []
    for s in steps:
        starts.append(len(text))
        text += s + delimiter
        ends.append(len(text) - 1)  # the delimiter's last character
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    positions: list[int] = []
    t = 0
    for start, e in zip(starts, ends, strict=True):
        while t < len(offsets) and offsets[t][1] <= e:
            t += 1
        if t < len(offsets) and offsets[t][0] <= e and text[e + 1 : offsets[t][1]].strip():
            # the token holding the delimiter's end also holds the next step's first word (a delimiter
            # ending in a space, " Answer"): the last token before it, which sees nothing of that step
            positions.append(t - 1 if t > 0 and offsets[t - 1][1] > start else -1)
        else:
            positions.append(t if t < len(offsets) and offsets[t][0] <= e else -1)
    if max_length is not None and len(ids) > max_length:
        ids = ids[:max_length]
        positions = [p if p < max_length else -1 for p in positions]
    return ids, positions


class PRMModel:
    """A trained PRM: `score(prompts, steps_lists)` -> P(good) at each step boundary, the input
    rendered with the delimiter it was trained with (`delimiter`) after the context it was trained
    with (`context`: pass `context_of(prompt, question)` as the prompt)."""

    def __init__(self, model: Any, tokenizer: Any, device: str = "cpu", max_length: int | None = None,
                 delimiter: str = DELIMITER, context: str = "prompt"):
        self.model, self.tokenizer, self.device, self.max_length = model, tokenizer, device, max_length
        self.delimiter, self.context = delimiter, context

    def context_of(self, prompt: str | None, question: str | None) -> str:
        """The text this PRM reads before the steps of a problem with this rendered prompt and question."""
        return context_text(self.context, prompt, question)

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str | None = None,
        max_length: int | None = 2048,
        require_format: bool = True,
        delimiter: str = DELIMITER,
    ) -> PRMModel:
        """The PRM in `path`: out/merged of `sharpen train prm`, or that out dir itself.

        Args:
            device: "cuda" when available, else "cpu", by default.
            max_length: longest input; a step cut off scores 0.0 (None: no limit).
            require_format: refuse a directory without sharpen_prm.json. False also accepts any
                token-classification model directory (its `merged/` when it has one), read with
                `delimiter`.
            delimiter: the step delimiter when the directory has no sharpen_prm.json; one that has
                records the delimiter the PRM was trained with, and that one is used.
        """
        import torch
        from transformers import AutoModelForTokenClassification

        p = Path(path)
        context = "prompt"
        if (p / "merged" / "sharpen_prm.json").exists() or (
            not require_format and (p / "merged" / "config.json").exists()
        ):
            p = p / "merged"  # the training output dir itself
        if (p / "sharpen_prm.json").exists():
            fmt = json.loads((p / "sharpen_prm.json").read_text())
            delimiter = fmt.get("delimiter", DELIMITER)
            context = fmt.get("context", "prompt")
            if (fmt.get("kind") != "sharpen-prm" or not isinstance(delimiter, str) or not delimiter
                    or context not in CONTEXTS):
                raise ModelError(f"{p}/sharpen_prm.json describes an unknown format")
        elif require_format:
            raise ModelError(
                f"{path} is not a sharpen PRM: no sharpen_prm.json (fix: pass out/merged of `sharpen train prm`)"
            )
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            tokenizer = load_tokenizer(str(p))
            model = AutoModelForTokenClassification.from_pretrained(str(p)).to(device).eval()
        except (OSError, ValueError) as e:
            raise ModelError(
                f"cannot load a PRM from {path}: {str(e).splitlines()[0]} "
                "(fix: a directory of a token-classification model trained by `sharpen train prm`)"
            ) from None
        return cls(model, tokenizer, device, max_length, delimiter, context)

    def encode(self, prompts: Sequence[str], steps_lists: Sequence[Sequence[str]]) -> list[tuple[list[int], list[int]]]:
        """`encode` of each (prompt, steps) with this PRM's delimiter and max_length: token ids and
        the position of each step's last token (-1 when cut off)."""
        if len(prompts) != len(steps_lists):
            raise ValueError("prompts and steps_lists differ in length")
        return [
            encode(self.tokenizer, p, s, self.max_length, self.delimiter)
            for p, s in zip(prompts, steps_lists, strict=True)
        ]

    def score_encoded(self, enc: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 8) -> list[list[float]]:
        """For each (token ids, positions) from `encode`: P(label=1) at each position (0.0 at -1),
        `batch_size` sequences per forward pass, right-padded. P(label=1) is the softmax's class 1,
        or the sigmoid of the logit for a single-label head."""
        import torch

        out: list[list[float]] = []
        pad = self.tokenizer.pad_token_id or 0
        for i in range(0, len(enc), batch_size):
            chunk = enc[i : i + batch_size]
            width = max(max(len(ids) for ids, _ in chunk), 1)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, (x, _) in enumerate(chunk):  # right padding: positions stay as encoded
                ids[j, : len(x)] = torch.tensor(list(x), dtype=torch.long)
                mask[j, : len(x)] = 1
            with torch.inference_mode():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            at = [(j, p) for j, (_, pos) in enumerate(chunk) for p in pos if p >= 0]
            probs: list[float] = []
            if at:  # only the step boundaries: the logits there, then their probabilities
                rows, cols = zip(*at, strict=True)
                sel = logits[list(rows), list(cols)].float()
                probs = (torch.sigmoid(sel[:, 0]) if sel.shape[-1] == 1 else torch.softmax(sel, -1)[:, 1]).tolist()
            k = iter(probs)
            for _, pos in chunk:
                out.append([next(k) if p >= 0 else 0.0 for p in pos])
        return out

    def score(
        self, prompts: Sequence[str], steps_lists: Sequence[Sequence[str]], batch_size: int = 8
    ) -> list[list[float]]:
        """For each (prompt, steps): P(label=1) at the last token of each step (0.0 for a step cut off
        by `max_length`)."""
        return self.score_encoded(self.encode(prompts, steps_lists), batch_size)
