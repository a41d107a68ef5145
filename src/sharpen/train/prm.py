"""A process reward model (PRM) as token classification (Math-Shepherd, arXiv 2312.08935): the
input is the prompt followed by the steps, each followed by the step delimiter of the trees the
labels came from (the `delimiter` column of `sharpen.train.data.step_labels`, "\\n" for label sets built
without one); the label of a step (its Monte Carlo value >= threshold) sits on the step's last
token, the one holding its delimiter's last character (the one before it when that token also
holds the next step's first word); every other position is -100. Trained
with transformers' `Trainer` on `AutoModelForTokenClassification` (num_labels=2) over the policy's
backbone.

`PRMModel.load(path).score(prompts, steps_lists)` gives P(label=1) at each step boundary: the
`prm:<path>` scorer (`sharpen.search.scorers.PRMScorer`) and `sharpen.train.metrics.prm_auroc` call it. The
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

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainingArguments

from sharpen.backends.models import load_tokenizer, resolve_model
from sharpen.core.errors import ConfigError, TaskError
from sharpen.core.io import atomic_write_json
from sharpen.search.scorers.prm_model import (  # noqa: F401 - the format it trains in, re-exported
    CONTEXTS,
    DELIMITER,
    PRM_FORMAT,
    PRMModel,
    context_text,
    encode,
    prm_format,
)
from sharpen.train.common import (
    SharpenArgs,
    fit,
    quiet,
    save_outputs,
    write_summary,
)
from sharpen.train.data import load_dataset_dir

LABEL_COLUMNS = ("prompt", "prefix_steps", "step", "path_labels", "path_values", "leaf")


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
