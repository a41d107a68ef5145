"""A process reward model (PRM) as token classification (Math-Shepherd, arXiv 2312.08935): the
input is the prompt followed by the steps, each followed by the step delimiter of the trees the
labels came from (the `delimiter` column of `sharpen.data.step_labels`, "\\n" for label sets built
without one); the label of a step (its Monte Carlo value >= threshold) sits on the step's last
token, the one holding its delimiter's last character (the one before it when that token also
holds the next step's first word); every other position is -100. Trained
with transformers' `Trainer` on `AutoModelForTokenClassification` (num_labels=2) over the policy's
backbone.

`PRMModel.load(path).score(prompts, steps_lists)` gives P(label=1) at each step boundary: the
`prm:<path>` scorer (`sharpen.scorers.PRMScorer`) and `sharpen.train.metrics.prm_auroc` call it. The
delimiter the PRM was trained with is recorded in sharpen_prm.json and used when scoring, and so is
its context: the policy's rendered prompt (`context="prompt"`, the default: system prompt and worked
examples included) or the bare question and a newline (`context="question"`, as Math-Shepherd's PRM
reads a problem). The question context is ~5x shorter on chain_sum (about 25 tokens against 126), so
training and every scoring pass cost a fraction; callers pass both texts to `PRMModel.context_of`,
which picks the one the PRM reads.

Output: out/checkpoint-N/, out/merged/ (model + tokenizer + sharpen_prm.json), out/sharpen_train.json.
With LoRA the adapter is merged (the classification head is trained in full) and also kept in out/adapter/.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainingArguments

from sharpen.data import load_dataset_dir
from sharpen.errors import ConfigError, ModelError, TaskError
from sharpen.io import atomic_write_json
from sharpen.models import resolve_model
from sharpen.train.common import (
    SharpenArgs,
    fit,
    load_tokenizer,
    quiet,
    save_outputs,
    write_summary,
)

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
LABEL_COLUMNS = ("prompt", "prefix_steps", "step", "path_labels", "path_values", "leaf")


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


@dataclass
class PRMTrainConfig(SharpenArgs, TrainingArguments):
    """`sharpen train prm`: transformers' `TrainingArguments` with sharpen's fields (`SharpenArgs`)
    and these. `model` is the backbone (usually the policy); `data` a step-labels dataset dir."""

    soft: bool = False
    """Train on the Monte Carlo value itself (Math-Shepherd's soft label): cross-entropy against the
    target distribution [1 - v, v] at each step, instead of the hard label `v >= threshold`."""
    max_length: int | None = 1024
    """Longest tokenised sequence (prompt + steps); longer rows are truncated."""
    context: str = "prompt"
    """What the PRM reads before the steps: "prompt" (the policy's rendered prompt) or "question"
    (the bare question and a newline: a fraction of the tokens to train on and to score)."""
    ranking: float = 0.0
    """Weight of a within-problem ranking loss (the Bradley-Terry loss of a reward model, as TRL's
    `RewardTrainer` has): > 0 trains on pairs of one problem's paths whose last steps are labelled right
    and wrong, -log sigmoid(z_right - z_wrong) on the PRM's logit margin z at each path's last step,
    beside the labels' cross-entropy on both paths. A pointwise PRM can score well by telling easy
    problems from hard ones; picking among one problem's samples needs this ordering. Problems with
    no such pair are left out."""
    ranking_pairs: int = 4
    """With `ranking`: at most this many wrong paths paired with each right one (drawn with `seed`)."""
    learning_rate: float = 1e-4
    remove_unused_columns: bool = False


def _row_delimiter(row: dict) -> str:
    return row.get("delimiter") or DELIMITER


def dataset_delimiter(ds: Any) -> str:
    """The one step delimiter of a step-labels dataset's leaf rows (`DELIMITER` for label sets
    built before rows carried one). A PRM learns one input format, so mixed delimiters are refused."""
    found = {_row_delimiter(r) for r in ds if r["leaf"]}
    if len(found) > 1:
        raise TaskError(
            f"step labels with different step delimiters {sorted(found)} (fix: train a PRM on labels from "
            "trees searched with one delimiter)"
        )
    return found.pop() if found else DELIMITER


def _examples(ds: Any, tok: Any, max_length: int | None, soft: bool = False, context: str = "prompt",
              meta: bool = False) -> list[dict]:
    """One example per leaf path: every valued step on it carries its label (hard: 0/1, -100
    elsewhere) or, `soft`, its Monte Carlo value (a float in [0, 1], -100.0 elsewhere)."""
    out = []
    for r in ds:
        if not r["leaf"]:
            continue
        steps = list(r["prefix_steps"]) + [r["step"]]
        head = context_text(context, r["prompt"], r.get("question"))
        ids, pos = encode(tok, head, steps, max_length, _row_delimiter(r))
        targets = r["path_values"] if soft else r["path_labels"]
        labels: list[Any] = [-100] * len(ids)
        for p, lab in zip(pos, targets, strict=True):
            if p >= 0 and lab >= 0:
                labels[p] = float(lab) if soft else int(lab)
        if any(lab != -100 for lab in labels):
            row = {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
            if meta:  # what `ranking_examples` pairs by
                row.update(problem_id=r.get("problem_id"), final=r["path_labels"][-1])
            out.append(row)
    return out


def ranking_examples(examples: Sequence[dict], per_right: int = 4, seed: int = 0) -> list[dict]:
    """Pairs of `_examples(..., meta=True)` rows of one problem whose last steps are labelled right (1) and wrong (0):
    each right path with up to `per_right` wrong ones, drawn with `seed`; rows without a problem id
    or a label on their last step are left out. Each pair is {"right": row, "wrong": row}."""
    import random

    by: dict[str, dict[int, list[dict]]] = {}
    for e in examples:
        if e["problem_id"] is not None and e["final"] in (0, 1):
            by.setdefault(e["problem_id"], {0: [], 1: []})[int(e["final"])].append(e)
    rng = random.Random(seed)
    pairs = []
    for pid in sorted(by):
        right, wrong = by[pid][1], by[pid][0]
        for r in right:
            for w in rng.sample(wrong, min(per_right, len(wrong))):
                pairs.append({"right": r, "wrong": w})
    return pairs


def pair_collate(pad_id: int):
    """A batch of B pairs as 2B right-padded rows: the B right paths, then the B wrong ones, float
    targets (-100 where there is none)."""
    collate = soft_collate(pad_id)
    return lambda pairs: collate([p["right"] for p in pairs] + [p["wrong"] for p in pairs])


def ranking_loss(weight: float):
    """The loss of a batch from `pair_collate`: the labels' cross-entropy at every labelled position
    (`soft_label_loss`; a hard label is a target of 0 or 1) plus `weight` times the mean of
    -log sigmoid(z_right - z_wrong), z = logit(good) - logit(bad) at each path's last labelled token."""

    def loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        import torch

        logits = outputs.logits.float()
        z = logits[..., 1] - logits[..., 0]
        at = labels >= 0
        last = (at.long() * torch.arange(1, labels.shape[1] + 1, device=labels.device)).argmax(-1)
        zl = z[torch.arange(labels.shape[0], device=labels.device), last]
        half = labels.shape[0] // 2
        rank = -torch.nn.functional.logsigmoid(zl[:half] - zl[half:]).mean()
        return soft_label_loss(outputs, labels) + weight * rank

    return loss


def soft_collate(pad_id: int):
    """Right-pad input ids and float targets (-100 where there is none) into one batch."""

    def collate(rows: list[dict]) -> dict:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100.0)
        for j, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[j, :n] = torch.tensor(r["input_ids"])
            mask[j, :n] = 1
            labels[j, :n] = torch.tensor(r["labels"], dtype=torch.float32)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    return collate


def soft_label_loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
    """Cross-entropy of the two-class head against [1 - v, v] at every labelled position (the BCE of
    P(good) on the Monte Carlo value v), averaged over labelled positions."""
    import torch

    logp = torch.log_softmax(outputs.logits.float(), dim=-1)
    at = labels >= 0
    v = labels[at]
    return -(v * logp[..., 1][at] + (1 - v) * logp[..., 0][at]).mean()


def build_trainer(cfg: PRMTrainConfig, dataset: Any | None = None) -> Any:
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import (
        AutoModelForTokenClassification,
        DataCollatorForTokenClassification,
        Trainer,
        set_seed,
    )

    if cfg.context not in CONTEXTS:
        raise ConfigError(f"context={cfg.context!r} is not one of {', '.join(CONTEXTS)} "
                          "(fix: --arg context=prompt or --arg context=question)")
    if cfg.ranking < 0:
        raise ConfigError(f"ranking={cfg.ranking} is negative (fix: --arg ranking=1, or 0 for no ranking loss)")
    path = resolve_model(cfg.model)
    if dataset is None:
        dataset = load_dataset_dir(cfg.data, LABEL_COLUMNS)
    tok = load_tokenizer(path)
    delimiter = dataset_delimiter(dataset)
    rows = _examples(dataset, tok, cfg.max_length, soft=cfg.soft, context=cfg.context, meta=cfg.ranking > 0)
    if not rows:
        raise TaskError(
            f"{cfg.data} has no labelled steps (fix: build labels from trees scored by the oracle)"
        )
    if cfg.ranking > 0:
        rows = ranking_examples(rows, cfg.ranking_pairs, cfg.seed)
        if not rows:
            raise TaskError(f"{cfg.data} has no problem with both a right and a wrong path to rank "
                            "(fix: label more samples per problem, or train without --arg ranking)")
    set_seed(cfg.seed)  # the new head's initial weights come from the seed, not from whatever ran before
    model = AutoModelForTokenClassification.from_pretrained(
        path,
        num_labels=2,
        dtype=torch.float32,
        id2label={0: "bad", 1: "good"},
        label2id={"bad": 0, "good": 1},
    )
    model.config.pad_token_id = tok.pad_token_id
    if cfg.lora:
        lora_cfg = cfg.peft_config("TOKEN_CLS")
        if lora_cfg.target_modules == "all-linear" or lora_cfg.target_modules == {"all-linear"}:
            # the head ("score") is trained in full (peft's modules_to_save for TOKEN_CLS), so no adapter on it
            lora_cfg.target_modules = sorted(
                {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
                - {"score", "classifier"}
            )
        model = get_peft_model(model, lora_cfg)
    trainer = Trainer(
        model=model,
        args=cfg,
        train_dataset=Dataset.from_list(rows),
        data_collator=(pair_collate(tok.pad_token_id or 0) if cfg.ranking > 0
                       else soft_collate(tok.pad_token_id or 0) if cfg.soft else DataCollatorForTokenClassification(tok)),
        processing_class=tok,
        compute_loss_func=ranking_loss(cfg.ranking) if cfg.ranking > 0 else soft_label_loss if cfg.soft else None,
    )
    trainer.sharpen_prm_delimiter = delimiter  # recorded in sharpen_prm.json by `train_prm`
    return trainer


def train_prm(cfg: PRMTrainConfig) -> Path:
    """Train, resuming from the newest checkpoint; returns out/merged."""
    out = Path(cfg.output_dir)
    trainer = quiet(build_trainer(cfg))
    metrics, _ = fit(trainer, out, cfg.resume)
    merged = save_outputs(trainer, out, cfg.lora,
                          extra=lambda d: atomic_write_json(d / "sharpen_prm.json",
                                                            prm_format(trainer.sharpen_prm_delimiter, cfg.context)))
    metrics["pairs" if cfg.ranking > 0 else "sequences"] = len(trainer.train_dataset)
    write_summary(out, "prm", cfg, metrics)
    return merged


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
