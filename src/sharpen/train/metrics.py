"""Held-out evaluation of what the trainers produce.

- DPO reward accuracy (Rafailov et al. 2023): the implicit reward r(x, y) = beta * (log pi(y|x) -
  log pi_ref(y|x)); accuracy = share of pairs where r(chosen) > r(rejected) (TRL's
  `rewards/accuracies`). Before training pi = pi_ref, so every reward is 0 and the accuracy is 0;
  `logp_accuracy` (log pi(chosen) > log pi(rejected), no reference) is comparable before and after.
- PRM AUROC on held-out step labels with a bootstrap 95% interval (`sharpen.core.stats`) that resamples
  problems, since one problem's steps are correlated.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sharpen.core import stats
from sharpen.core.errors import TaskError


def completion_logps(
    model: Any, tok: Any, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 8
) -> list[float]:
    """Summed log-probability of each completion given its prompt (tokenised like TRL: the
    completion starts where prompt and prompt+completion tokenisations diverge)."""
    import torch

    device = next(model.parameters()).device
    seqs: list[tuple[list[int], int]] = []
    for p, c in zip(prompts, completions, strict=True):
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        full = tok(p + c, add_special_tokens=False)["input_ids"]
        k = 0
        while k < min(len(p_ids), len(full)) and p_ids[k] == full[k]:
            k += 1
        seqs.append((full, max(k, 1)))
    out: list[float] = []
    pad = tok.pad_token_id or 0
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i : i + batch_size]
        width = max(len(s) for s, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, (s, _) in enumerate(chunk):
            ids[j, : len(s)] = torch.tensor(s)
            mask[j, : len(s)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = (
            torch.log_softmax(logits[:, :-1], dim=-1)
            .gather(2, ids[:, 1:].to(device).unsqueeze(-1))
            .squeeze(-1)
        )
        for j, (s, start) in enumerate(chunk):
            out.append(float(logp[j, start - 1 : len(s) - 1].sum()))
    return out


def dpo_reward_accuracy(
    policy_dir: str | Path, ref_dir: str | Path, pairs: Any, beta: float = 0.1, batch_size: int = 8
) -> dict[str, float]:
    """Implicit-reward accuracy of `policy_dir` against `ref_dir` on held-out pairs (a Dataset or a
    list of dicts with prompt, chosen, rejected)."""
    import torch
    from transformers import AutoModelForCausalLM

    from sharpen.backends.models import load_tokenizer, resolve_model

    rows = list(pairs)
    if not rows:
        raise TaskError("no held-out pairs to evaluate (fix: build pairs on test-split trees)")
    prompts = [r["prompt"] for r in rows]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lp: dict[str, dict[str, np.ndarray]] = {}
    for name, d in (("policy", policy_dir), ("ref", ref_dir)):
        path = resolve_model(str(d))
        tok = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
        lp[name] = {
            k: np.array(completion_logps(model, tok, prompts, [r[k] for r in rows], batch_size))
            for k in ("chosen", "rejected")
        }
        del model
    r_c = beta * (lp["policy"]["chosen"] - lp["ref"]["chosen"])
    r_r = beta * (lp["policy"]["rejected"] - lp["ref"]["rejected"])
    return {
        "n": len(rows),
        "reward_accuracy": float(np.mean(r_c > r_r)),
        "reward_margin": float(np.mean(r_c - r_r)),
        "logp_accuracy": float(np.mean(lp["policy"]["chosen"] > lp["policy"]["rejected"])),
        "ref_logp_accuracy": float(np.mean(lp["ref"]["chosen"] > lp["ref"]["rejected"])),
    }


def auroc_with_ci(
    labels: Sequence[int], scores: Sequence[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95,
    groups: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """AUROC (`sharpen.core.stats.labelled_auroc`: None with one class only) and a percentile bootstrap
    interval (`sharpen.core.stats.bootstrap_ci`; one-class resamples dropped). With `groups` (the problem
    of each step) whole problems are resampled, as a problem's steps are correlated; without, steps
    one by one, which gives too narrow an interval for steps of shared problems. `resampled` says
    which: "problem" or "step"."""
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    lo, hi = stats.bootstrap_ci(
        np.column_stack([y, s]), iters=n_boot, seed=seed, alpha=1 - level,
        stat=lambda rows: stats.labelled_auroc(rows[:, 0], rows[:, 1]), groups=groups,
    )
    out: dict[str, Any] = {
        "auroc": stats.labelled_auroc(y, s),
        "ci_low": lo,
        "ci_high": hi,
        "n": int(len(y)),
        "positives": int(y.sum()),
        "resampled": "step" if groups is None else "problem",
    }
    if groups is not None:
        out["problems"] = len(set(groups))
    return out


def score_last(prm_dir: str | Path, rows: list[dict], batch_size: int = 8) -> list[float]:
    """The PRM's score of each label row's step: its whole path (the prefix steps, then the step)
    scored in the row's context, the last value taken."""
    from sharpen.search.scorers.prm_model import PRMModel

    prm = PRMModel.load(prm_dir)
    scores = prm.score([prm.context_of(r["prompt"], r.get("question")) for r in rows],
                       [list(r["prefix_steps"]) + [r["step"]] for r in rows], batch_size)
    return [sc[-1] for sc in scores]


def prm_auroc(
    prm_dir: str | Path, labels_ds: Any, n_boot: int = 1000, seed: int = 0, batch_size: int = 8
) -> dict:
    """The PRM's score of each held-out step (its full prefix path scored, the last value taken)
    against the step's label: AUROC with a bootstrap 95% interval that resamples problems (steps one
    by one when a row has no `problem_id`), on all steps, final answers and inner steps, and the mean
    AUROC within a problem."""

    rows = list(labels_ds)
    if not rows:
        raise TaskError("no held-out step labels to evaluate (fix: build labels on test-split trees)")
    last = score_last(prm_dir, rows, batch_size)
    by_problem = all(r.get("problem_id") is not None for r in rows)  # else steps one by one

    def ci(part: list[tuple[dict, float]]) -> dict[str, Any]:
        return auroc_with_ci([r["label"] for r, _ in part], [x for _, x in part], n_boot=n_boot, seed=seed,
                             groups=[r["problem_id"] for r, _ in part] if by_problem else None)

    pairs = list(zip(rows, last, strict=True))
    out: dict[str, Any] = ci(pairs)
    # the final-answer level (terminal steps: is the solution right?) and the inner steps alone, so
    # that easy negatives such as malformed last lines cannot carry the step-level number
    for name, keep in (("final_answer", True), ("inner_steps", False)):
        part = [(r, x) for r, x in pairs if bool(r.get("terminal")) == keep]
        out[name] = ci(part) if len({r["label"] for r, _ in part}) == 2 else None
    out["within_problem"] = within_problem_auroc(rows, last)
    return out


def within_problem_auroc(rows: list[dict], scores: list[float]) -> dict | None:
    """The mean, over problems whose leaf steps hold both labels, of the AUROC of those leaf steps'
    scores within the problem: how well the PRM orders one problem's own solutions, which is what
    best-of-N and weighted vote use (pooled AUROC also rewards telling easy problems from hard ones).
    None when no problem has both labels."""
    by: dict[Any, tuple[list[float], list[float]]] = {}
    for r, x in zip(rows, scores, strict=True):
        if r.get("leaf", True) and r.get("problem_id") is not None:
            by.setdefault(r["problem_id"], ([], []))[int(r["label"]) == 1].append(x)
    per = [stats.auroc(right, wrong) for wrong, right in by.values() if right and wrong]
    return {"auroc": sum(per) / len(per), "problems": len(per)} if per else None
