"""`implicit:<policy>[:ref=<dir>][:beta=0.1][:agg=...]`: the implicit PRM of a trained policy,
sigmoid(beta * sum log pi/pi_ref) over the path's steps (Yuan et al. 2024, "Free Process Rewards
without Process Labels", arXiv 2412.01981)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from sharpen.core.budget import Budget, allowed_rows
from sharpen.core.errors import ConfigError, ModelError
from sharpen.core.lru import LRUDict
from sharpen.core.tree import Tree
from sharpen.search.process import Process
from sharpen.search.registry import MAX_ROWS, Options
from sharpen.search.registry import scorer as register_scorer
from sharpen.search.scorers import common
from sharpen.search.scorers.common import (
    Aggregation,
    Scorer,
    aggregate,
    call_batched,
    policy_and_base,
    unscored,
)


class ImplicitPRMScorer:
    """The implicit process reward of a trained policy (Yuan et al. 2024, "Free Process Rewards
    without Process Labels", arXiv 2412.01981): with q_t = beta * sum over the tokens of steps 1..t of
    log pi(y|x, y_<) - log pi_ref(y|x, y_<), the score of step t is sigmoid(q_t), and a node's value
    aggregates its path's step scores (`agg`; "last" = sigmoid(q) of the whole path). The steps'
    tokens are the tree's own token ids, so policy and reference must share the process's
    tokenizer. No training beyond the DPO/SFT that made the policy. One token per node is charged
    to the budget, like `prm`; the tokens both models process are the meter's verifier tokens."""

    name = "implicit"

    def __init__(self, process: Process, path: str | Path, ref: str | None = None, beta: float = 0.1,
                 agg: str = "last", batch: int = 8, device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM

        from sharpen.backends.models import resolve_model

        self.process, self.beta, self.agg, self.batch = process, beta, agg, batch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        policy, base = policy_and_base(Path(path))
        ref = ref or base
        if ref is None:
            raise ConfigError(f"implicit:{path}: no reference policy recorded (fix: implicit:{path}:ref=<base model>)")
        self.models = []
        for what, p in (("policy", policy), ("reference", ref)):
            try:
                m = AutoModelForCausalLM.from_pretrained(str(resolve_model(str(p))), dtype=torch.float32)
            except (OSError, ValueError) as e:
                raise ModelError(f"implicit scorer: cannot load the {what} from {p}: {str(e).splitlines()[0]} "
                                 "(fix: implicit:<policy dir from `sharpen train dpo`>[:ref=<model>])") from None
            self.models.append(m.to(self.device).eval())
        self.policy_path, self.ref_path = str(policy), str(ref)
        self._prompt_ids = LRUDict(common.PROMPTS_KEPT)  # per tree's prompt; bounded for a long-lived server

    def cost(self, terminal: bool, budget: Budget | None = None) -> float:
        return 1

    def bind(self, process: Process) -> ImplicitPRMScorer:
        import copy

        s = copy.copy(self)
        s.process = process
        return s

    def _log_ratios(self, rows: list[list[int]]) -> list:
        """Per row, log pi - log pi_ref of each token after the first (`batch` rows per forward)."""
        out = []
        for i in range(0, len(rows), self.batch):
            chunk = rows[i : i + self.batch]
            pol, ref = (self._token_logprobs(m, chunk) for m in self.models)
            out += [(p - r)[: len(row) - 1] for p, r, row in zip(pol, ref, chunk, strict=True)]
        return out

    def _token_logprobs(self, model, rows: list[list[int]]):
        import torch

        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, : len(r)] = torch.tensor(r)
            mask[j, : len(r)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits.float()
        lp = torch.log_softmax(logits[:, :-1], dim=-1).gather(2, ids[:, 1:, None].to(self.device)).squeeze(2)
        return lp.cpu()  # lp[j, i] = log p(token i + 1 | tokens 0..i)

    def score(self, tree: Tree, node_ids: list[int], budget: Budget | None = None) -> list[float | None]:
        todo = unscored(tree, node_ids)
        todo = todo[: allowed_rows(budget, len(todo), 1, "judge")]
        backend = getattr(self.process, "backend", None)
        if backend is None or not hasattr(backend, "tokenizer"):
            raise ConfigError("the implicit scorer needs a language-model process with a local tokenizer "
                              "(fix: choose another --scorer)")
        if tree.prompt not in self._prompt_ids:  # every node of a tree shares its prompt: tokenized once
            self._prompt_ids[tree.prompt] = backend.tokenizer(tree.prompt, add_special_tokens=False)["input_ids"]
        prompt_ids = self._prompt_ids[tree.prompt]
        if not todo or not prompt_ids:
            return [tree.nodes[n].score for n in node_ids]
        t0 = time.perf_counter()
        paths = [tree.path(n) for n in todo]
        rows = [prompt_ids + [t for m in path for t in m.token_ids] for path in paths]
        ratios = call_batched(self.process, ("implicit", id(self.models[0])), self._log_ratios, rows)  # one key for every bound copy
        for n, path, ratio in zip(todo, paths, ratios, strict=True):
            q, scores, at = 0.0, [], len(prompt_ids) - 1  # index of the first step token's log-ratio
            for m in path:
                k = len(m.token_ids)
                q += self.beta * float(ratio[at : at + k].sum())
                at += k
                scores.append(1.0 / (1.0 + math.exp(-q)))
            tree.nodes[n].score = aggregate(scores, self.agg) if scores else 0.5
        self.process.meter.record(0, len(todo), time.perf_counter() - t0,
                                  verifier_tokens=2 * sum(len(r) for r in rows))
        return [tree.nodes[n].score for n in node_ids]


class ImplicitOptions(Options):
    positional: ClassVar[tuple[str, ...]] = ("path",)
    path: str = Field(description="a policy trained by `sharpen train dpo|sft` (its out dir or merged/)")
    ref: str | None = Field(None, description="the reference policy (default: the policy's base, from its sharpen_train.json)")
    beta: float = Field(0.1, gt=0, description="beta of the implicit reward beta * log(pi / pi_ref)")
    agg: Aggregation = Field("last", description="a path's value from its step scores: last, min, prod or mean")
    batch: int = Field(8, ge=1, le=MAX_ROWS, description="paths per forward pass")


@register_scorer("implicit", ImplicitOptions)
def _implicit(process: Process, o: ImplicitOptions, collect: bool) -> Scorer:
    """An implicit PRM: beta x log(pi/pi_ref) of a trained policy, summed over steps (arXiv 2412.01981)."""
    return ImplicitPRMScorer(process, o.path, ref=o.ref, beta=o.beta, agg=o.agg, batch=o.batch)
