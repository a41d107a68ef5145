"""Online RL with TRL's `GRPOTrainer` (Group Relative Policy Optimization: Shao et al. 2024,
DeepSeekMath, arXiv 2402.03300). Each generation samples G = `num_generations` completions of a
prompt from the policy, rewards each, and moves the policy towards the completions that beat their
group:

    A_i = (r_i - mean(r_1..r_G)) / std(r_1..r_G)                   (TRL: scale_rewards="group")
    J(theta) = E[ 1/G sum_i 1/|o_i| sum_t min(rho_it A_i, clip(rho_it, 1 - eps, 1 + eps) A_i) ] - beta KL(pi || pi_ref)

(the paper's per-sequence 1/|o_i|; TRL 1.16's default `loss_type="dapo"` averages over all tokens of
the batch instead, and its default `beta` is 0: no reference model). On the prefix-sharing forward
(`share_prefix`): GRPO left-pads prompts and shuffles each generation batch, so a forward batch
shares a prefix only when it holds one prompt's completions (`per_device_train_batch_size ==
num_generations`); otherwise the backbone runs its plain forward.

The prompts are the task's chat messages (`prompt_rows`: the same messages the offline recipes
search from) and the reward is the task's verifier, `task.verify(problem, task.extract(completion))`
in {0, 1}. With `process_reward: prm:<path>[:agg=...]` a learned PRM's score of the completion's
steps is a second reward (weighted by TRL's `reward_weights`): a process reward beside the outcome
reward, as PRIME adds one (arXiv 2502.01456); here the PRM is one `sharpen train prm` trained
and it stays frozen, where PRIME updates an implicit PRM online.

Every sampled completion is counted (`TokenBudget`, also into sharpen's `Usage`). With
`token_budget`, training stops before a step whose generations could pass the budget if every
completion ran to `max_completion_length`, so the run never generates more than the budget; what it
did generate is in `sharpen_train.json`. The counts live in the Trainer's checkpoints
(`trainer_state.json`), so a resumed run continues them.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from trl import GRPOConfig

from sharpen.backends.models import load_tokenizer, resolve_model
from sharpen.core.errors import ConfigError, TaskError
from sharpen.core.meter import Usage
from sharpen.core.seeding import derive_seed
from sharpen.train.common import (
    SharpenArgs,
    fit,
    last_checkpoint,
    prepare_model,
    quiet,
    save_outputs,
    write_summary,
)

PROMPT_COLUMNS = ("prompt", "problem")


@dataclass
class GRPOTrainConfig(SharpenArgs, GRPOConfig):
    """`sharpen train grpo`: TRL's `GRPOConfig` (every `TrainingArguments` and GRPO option:
    `num_generations`, `max_completion_length`, `beta`, `temperature`, `num_iterations`,
    `reward_weights`, ...; `per_device_train_batch_size` counts completions, G per prompt) with
    sharpen's fields (`SharpenArgs`) and these."""

    task: str = ""
    """The task whose verifier rewards the completions (`gym:chain_sum`, `gsm8k:<file.jsonl>`, ...)."""
    task_args: dict = field(default_factory=dict)
    """A `gym:` task's arguments (`min_terms`, `max_digits`, ...)."""
    problems: int = 64
    """Without `data`: train on this many problems of the task's training split, drawn with `seed`."""
    strict_answers: bool = True
    """A completion earns the reward only with an `Answer:` line (no fallback extraction), as the
    loop's `collect.strict_format` asks of collected solutions."""
    process_reward: str = ""
    """`prm:<path>[:agg=last|min|prod|mean]`: a PRM from `sharpen train prm` scores the completion's
    steps (lines) as a second reward beside the verifier's (weights: `reward_weights`, 1 each by
    default). Empty: the verifier alone."""
    sampler: str = "sharpen"
    """Who samples the completions. `sharpen`: the HF backend search and eval use, over the policy
    as it trains (a prompt's KV is computed once for its G samples, finished rows leave the batch,
    a completion ends with its `Answer:` line as the offline recipes' do; the policy generates in
    eval mode: no LoRA dropout); `trl`: TRL's own `model.generate` (each completion runs to EOS or
    `max_completion_length`)."""
    merged_sampling: bool = True
    """With `sampler: sharpen` and a LoRA policy: draw from a plain copy of the model whose weights
    are the base's plus the LoRA update (W + B A alpha/r), refreshed before each generation, instead
    of through the adapter layers (as TRL's vLLM path syncs merged weights to its server). The same
    policy with fewer operations per token; it holds one more copy of the weights. False: sample
    through the adapters. A policy that merging does not cover (DoRA, adapters on other layer kinds,
    trainable weights outside the adapters) is sampled through its adapters either way."""
    token_budget: int | None = None
    """Generated (completion) tokens allowed in all: training stops before a step whose generations
    could pass it at `max_completion_length` each. None: `max_steps` alone decides."""
    advantage: str = "outcome"
    """Credit per token (`sharpen.train.step_credit`): `outcome` (GRPO's group-relative advantage on
    every token), `mc` (each step's tokens get V(s_t) - V(s_{t-1}) from `credit_rollouts`
    continuations per step boundary, VinePPO/SPO; their tokens count against `token_budget`) or
    `pav` (outcome + `credit_alpha` x a prover PRM's clipped progress, PAV)."""
    credit_rollouts: int = 4
    """`mc`: continuations sampled from each inner step boundary to value it."""
    credit_reuse: bool = False
    """`mc`: the completions that pass through a state are samples of the policy from it too (what follows
    the state in each is drawn from the policy there), so they count as that state's first rollouts and
    only what `credit_rollouts` still lacks is sampled; a state `credit_rollouts` completions of the group
    reach costs no rollout. False: every state gets `credit_rollouts` rollouts of its own."""
    credit_prover: str = ""
    """`pav`: the prover's value model, a PRM directory from `sharpen train prm`."""
    credit_alpha: float = 1.0
    """`pav`: the weight of the prover's progress beside the outcome advantage."""
    credit_clip: float = 0.5
    """`pav`: the progress of one step is clipped to +-this."""
    step_delimiter: str = "\n"
    """What ends a step of a completion for step credit (the delimiter search and the PRMs use)."""
    dynamic_sampling: int = 0
    """DAPO's dynamic sampling (arXiv 2503.14476), with `sampler: sharpen`: a prompt whose G completions
    all earn the same verifier reward (every one right or every one wrong: no advantage, no gradient)
    is replaced by another prompt of the training set, drawn with the run's seed, and sampled again, up
    to this many times; the last group drawn is trained on. The replaced groups' tokens count against
    `token_budget` like any other (`dropped_tokens` in the summary). 0: off."""

    def __post_init__(self) -> None:
        if self.sampler not in ("sharpen", "trl"):
            raise ConfigError(f"sampler={self.sampler!r} is not a GRPO sampler (fix: sampler=sharpen or sampler=trl)")
        from sharpen.train.step_credit import MODES

        if self.advantage not in MODES:
            raise ConfigError(f"advantage={self.advantage!r} is not a mode (fix: one of {', '.join(MODES)})")
        if not 1 <= self.credit_rollouts <= 64:
            raise ConfigError(f"credit_rollouts={self.credit_rollouts} (fix: 1 to 64 continuations a step boundary)")
        if not self.credit_alpha >= 0 or not self.credit_clip > 0:
            raise ConfigError(f"credit_alpha={self.credit_alpha}, credit_clip={self.credit_clip} "
                              "(fix: credit_alpha >= 0 and credit_clip > 0)")
        if not self.step_delimiter:
            raise ConfigError("step_delimiter is empty (fix: the delimiter steps end with, e.g. a newline)")
        if not 0 <= self.dynamic_sampling <= 16:
            raise ConfigError(f"dynamic_sampling={self.dynamic_sampling} (fix: 0 to 16 replacement prompts a group)")
        if self.dynamic_sampling and (self.sampler != "sharpen" or self.advantage != "outcome" or self.process_reward):
            raise ConfigError("dynamic_sampling replaces prompts inside sharpen's sampler and rewards them with the "
                              "verifier alone (fix: sampler=sharpen, advantage=outcome and no process_reward, or "
                              "dynamic_sampling=0)")
        super().__post_init__()


def prompt_rows(task: Any, problems: list, round: int = 0) -> Any:
    """One GRPO prompt per problem: the task's chat messages, and the problem itself (JSON) for
    the verifier."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": task.messages(p), "problem": json.dumps(p.to_dict()),
                               "problem_id": p.id, "round": round} for p in problems])


def completion_text(completion: Any) -> str:
    """A completion as TRL hands it to a reward function: text, or (chat prompts) a list of messages."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion)


def worst_case_text(cfg: GRPOTrainConfig) -> str:
    """The first optimizer step's worst case, with how it is made, for an error message."""
    budget = TokenBudget.for_config(cfg)
    per_generation, first = budget.per_generation, budget.worst_case()
    return (f"one optimizer step's worst case, {first // per_generation} generation(s) of {cfg.generation_batch_size} "
            f"completions x max_completion_length {cfg.max_completion_length} x (1 + dynamic_sampling "
            f"{cfg.dynamic_sampling}) = {first}")


class TokenBudget(TrainerCallback, ExportableState):
    """Counts what the policy generates (the verifier reward reports every generation) and stops
    training before a step that could pass `limit` generated tokens: `per_generation` is a
    generation's worst case (generation batch x max_completion_length), and TRL generates at every
    `generate_every`-th micro-step counted from the (re)start, at the first always. `micro_step`, set
    by `build_trainer`, reads that count from the trainer (TRL's own counter): an epoch whose micro-steps
    do not fill its last optimizer step shifts where the next steps start."""

    def __init__(self, limit: int | None = None, per_generation: int = 0, generate_every: int = 1,
                 accumulation: int = 1):
        self.limit, self.per_generation = limit, per_generation
        self.generate_every, self.accumulation = generate_every, accumulation
        self.usage: dict[str, Any] = Usage().to_dict()
        self.completions = self.correct = 0
        self.credit_tokens = 0  # generated by step credit's rollouts (also in usage's generated_tokens)
        self.dropped_tokens = 0  # generated for groups dynamic sampling replaced (also in generated_tokens)
        self.stopped_at: int | None = None
        self.micro_step: Callable[[], int] = lambda: 0  # micro-steps trained since the (re)start (build_trainer)
        self._pending = 0  # the worst case of the generations the current optimizer step has still to make
        self._t0: float | None = None
        self._sampled: float | None = None

    @classmethod
    def for_config(cls, cfg: GRPOTrainConfig) -> TokenBudget:
        """The budget of a run of `cfg`: a generation's worst case is every completion, and each group's
        replacements, to `max_completion_length`."""
        per_generation = cfg.generation_batch_size * cfg.max_completion_length * (1 + cfg.dynamic_sampling)
        return cls(cfg.token_budget, per_generation, cfg.steps_per_generation * cfg.num_iterations,
                   cfg.gradient_accumulation_steps)

    def state(self) -> dict:
        return {"args": {"limit": self.limit, "per_generation": self.per_generation,
                         "generate_every": self.generate_every, "accumulation": self.accumulation},
                "attributes": {"usage": self.usage, "completions": self.completions, "correct": self.correct,
                               "credit_tokens": self.credit_tokens, "dropped_tokens": self.dropped_tokens,
                               "stopped_at": self.stopped_at}}

    @property
    def generated(self) -> int:
        return int(self.usage["generated_tokens"])

    def sampled(self, seconds: float) -> None:
        """The sampler's own time for the generation the reward will report next (sampler=sharpen)."""
        self._sampled = (self._sampled or 0.0) + seconds

    def record(self, prompt_tokens: int, completion_tokens: int, correct: int, completions: int) -> None:
        """One generation, reported by the reward. Its seconds: the sampling time sharpen's sampler
        measured (`sampled`); with TRL's sampler, the time from the step's start (TRL generates at a
        step's first micro-step) or the last generation in the step, which also holds the loss
        forward and backward of the micro-batches in between."""
        now = time.perf_counter()
        seconds = self._sampled if self._sampled is not None else now - (self._t0 or now)
        self._t0, self._sampled = now, None
        self._add(prompt_tokens=prompt_tokens, generated_tokens=completion_tokens, calls=1, seconds=seconds)
        self._pending = max(0, self._pending - self.per_generation)
        self.completions += completions
        self.correct += correct

    def room(self) -> int | None:
        """Generated tokens that may be spent now, beside the worst case of the generations the current
        optimizer step has still to make (its later micro-steps'): what step credit's rollouts may use
        without taking the room the step-end check kept for those generations. None: no limit."""
        return None if self.limit is None else self.limit - self.generated - self._pending

    def add_credit(self, prompt_tokens: int, generated: int) -> None:
        """Tokens of step credit's rollouts: generated tokens like the completions' (the cap covers both)."""
        self._add(prompt_tokens=prompt_tokens, generated_tokens=generated, calls=1)
        self.credit_tokens += generated

    def add_dropped(self, prompt_tokens: int, generated: int) -> None:
        """Tokens of groups dynamic sampling replaced: generated tokens the cap covers, trained on by nothing."""
        self._add(prompt_tokens=prompt_tokens, generated_tokens=generated, calls=1)
        self.dropped_tokens += generated

    def add_verifier_tokens(self, n: int) -> None:
        self._add(verifier_tokens=n)

    def _add(self, **counts: Any) -> None:
        self.usage = (Usage(**self.usage) + Usage(**counts)).to_dict()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if isinstance(saved, dict):  # resumed: the counts as of the checkpoint
            for k, v in saved.get("attributes", {}).items():
                setattr(self, k, v)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._t0 = time.perf_counter()
        self._pending = self.worst_case(self.micro_step())

    def worst_case(self, m0: int = 0) -> int:
        """Tokens an optimizer step could generate whose first micro-step is the `m0`-th since the (re)start
        (it has at most `accumulation` micro-steps); 0: the first step."""
        return self.per_generation * sum(m % self.generate_every == 0 for m in range(m0, m0 + self.accumulation))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.limit is not None and self.generated + self.worst_case(self.micro_step()) > self.limit:
            control.should_training_stop = True
            control.should_save = True  # a resumed run finds this step's checkpoint and stops there
            self.stopped_at = state.global_step


class MergedCopy:
    """A plain (adapter-free) copy of a LoRA-wrapped policy whose weights are refreshed from it:
    each adapted `Linear` gets `base weight + delta` (peft's `get_delta_weight`: B A alpha/r) and
    every other weight is copied once (frozen while the adapters train). The training model is
    never modified (peft's in-place `merge_adapter` / `unmerge_adapter` would round its base weights
    a little on every cycle)."""

    def __init__(self, model: Any, pairs: list[tuple[Any, Any]]):
        self.model, self.pairs = model, pairs  # pairs: (the policy's LoRA layer, the copy's Linear)

    @classmethod
    def of(cls, peft_model: Any) -> MergedCopy | None:
        """The copy of `peft_model` (a peft `PeftModel`), or None when merging does not cover it."""
        import torch
        from peft.tuners.lora import Linear as LoraLinear
        from peft.tuners.lora import LoraLayer
        from transformers import AutoModelForCausalLM

        base = peft_model.get_base_model()
        layers = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
        if not layers or any(type(m) is not LoraLinear or any(m.use_dora.values()) or getattr(m, "lora_variant", None)
                             for m in layers.values()):
            return None
        if any(p.requires_grad and "lora_" not in name for name, p in base.named_parameters()):
            return None  # e.g. modules_to_save: trainable weights the copy would have to follow too
        first = next(base.parameters())
        model = AutoModelForCausalLM.from_config(base.config, dtype=first.dtype).to(first.device)
        model.eval().requires_grad_(False)
        adapted = {f"{name}.{kind}" for name in layers for kind in ("weight", "bias")}
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name not in adapted:
                    param.copy_(base.get_parameter(name))
            for name, layer in layers.items():
                bias = layer.get_base_layer().bias
                if bias is not None:
                    model.get_submodule(name).bias.copy_(bias)
        return cls(model, [(layer, model.get_submodule(name)) for name, layer in layers.items()])

    def refresh(self) -> Any:
        """The copy, with the source's adapters as they are now merged in."""
        import torch

        with torch.no_grad():
            for layer, target in self.pairs:
                weight = layer.get_base_layer().weight
                for adapter in layer.active_adapters:
                    if adapter in layer.lora_A:
                        weight = weight + layer.get_delta_weight(adapter)
                target.weight.copy_(weight)
        return self.model


class SharpenRollout:
    """TRL's `rollout_func` with sharpen's sampler: TRL hands it a generation batch's prompts, each
    repeated in a row (G times, or fewer where a process's share splits a group), and it returns as
    many completions of each from the policy as it is now. Each call's sampling seeds come from
    (seed, train or eval, optimizer step, call within the step, process, prompt). A resumed run
    draws what the uninterrupted one would have where TRL generates at every optimizer step's first
    micro-step (`steps_per_generation x num_iterations` divides `gradient_accumulation_steps`: the
    config's layout); otherwise TRL itself regenerates a resumed step's batch.

    Its completions end with their `Answer:` line, without the end-of-turn token, so TRL's
    `completions/clipped_ratio` and terminated-length metrics count them as truncated; the loss and
    the reward do not depend on it (`mask_truncated_completions` would, and is refused)."""

    UNSUPPORTED = {"top_k": (0, None), "min_p": (None, 0.0), "repetition_penalty": (1.0,),
                   "generation_kwargs": (None, {}), "use_vllm": (False,), "mask_truncated_completions": (False,),
                   "use_transformers_continuous_batching": (False,)}

    def __init__(self, cfg: GRPOTrainConfig, tokenizer: Any):
        import copy

        for name, defaults in self.UNSUPPORTED.items():
            if getattr(cfg, name, None) not in defaults:
                raise ConfigError(f"{name}={getattr(cfg, name)!r} is not supported by sampler=sharpen "
                                  f"(fix: leave {name} unset, or sampler=trl)")
        self.cfg = cfg
        self.tokenizer = copy.deepcopy(tokenizer)  # the backend left-pads; TRL's own stays as it was
        self.backend: Any = None
        self.budget: TokenBudget | None = None  # told each generation's sampling time
        self.merged: MergedCopy | None = None
        self._merged_for: Any = None  # the policy `merged` was built for (None: merging not covered)
        self._calls: dict[str, tuple[int, int]] = {}  # mode -> (step, calls so far in it)
        self.dynamic: DynamicSampling | None = None  # `dynamic_sampling`: replaces groups with no advantage

    def params(self, n: int) -> Any:
        from sharpen.backends.base import SamplingParams

        return SamplingParams(n=n, temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                              max_tokens=self.cfg.max_completion_length, stop_at="answer")

    def call_in_step(self, mode: str, step: int) -> int:
        """How many calls of `mode` optimizer step `step` made before this one (a resumed run restarts at
        a step's start, so it counts as the uninterrupted run did)."""
        last, calls = self._calls.get(mode, (-1, 0))
        call = calls if step == last else 0
        self._calls[mode] = (step, call + 1)
        return call

    def seeds(self, mode: str, step: int, process: int, n: int) -> list[int]:
        """The random stream of each of a call's `n` prompts."""
        call = self.call_in_step(mode, step)
        return [derive_seed(self.cfg.seed, int(mode == "eval"), step, call, process, i) for i in range(n)]

    def sampling_model(self, policy: Any) -> Any:
        """What generates: the merged copy of a LoRA policy (`merged_sampling`), else the policy's
        model with its adapters active."""
        if not hasattr(policy, "get_base_model"):
            return policy
        if self.cfg.merged_sampling and self._merged_for is not policy:
            self.merged, self._merged_for = MergedCopy.of(policy), policy
        return self.merged.refresh() if self.merged is not None else policy.get_base_model()

    def __call__(self, prompts: list, trainer: Any) -> dict[str, list]:
        from sharpen.backends.hf import HFBackend

        t0 = time.perf_counter()
        model = self.sampling_model(trainer.accelerator.unwrap_model(trainer.model))
        if self.backend is None or self.backend.model is not model:
            self.backend = HFBackend.from_model(model, self.tokenizer, seed=self.cfg.seed)
        self.backend.forget_prefixes()  # the weights moved since the last call
        runs = [(p, len(list(same))) for p, same in itertools.groupby(prompts)]  # (prompt, repeats)
        texts = [p if isinstance(p, str) else self.backend.chat_prompt(p) for p, _ in runs]
        mode = "train" if trainer.model.training else "eval"
        seeds = self.seeds(mode, trainer.state.global_step, trainer.accelerator.process_index, len(runs))
        completions: list[list[int]] = [[] for _ in runs]
        training = model.training
        model.eval()
        try:
            for n in sorted({k for _, k in runs}):  # one call per group size (G, unless a share split a group)
                idx = [i for i, (_, k) in enumerate(runs) if k == n]
                groups = self.backend.generate([texts[i] for i in idx], self.params(n), seeds=[seeds[i] for i in idx])
                for i, group in zip(idx, groups, strict=True):
                    completions[i] = [c.token_ids for c in group]
            problems = self.dynamic.refill(self, runs, texts, completions, seeds) if self.dynamic and mode == "train" \
                else None
        finally:
            model.train(training)
        prompt_ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        if self.budget is not None:
            self.budget.sampled(time.perf_counter() - t0)
        out = {"prompt_ids": [prompt_ids[i] for i, group in enumerate(completions) for _ in group],
               "completion_ids": [c for group in completions for c in group], "logprobs": None}
        if problems is not None:  # the reward functions verify each completion against the problem it answers
            out["problem"] = [problems[i] for i, group in enumerate(completions) for _ in group]
        return out


def prompt_key(prompt: Any) -> str:
    """A prompt (chat messages or text) as a dict key."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


class DynamicSampling:
    """DAPO's dynamic sampling in sharpen's sampler (`dynamic_sampling`): after a generation, each full
    group whose completions all get the same verifier reward is replaced by another training prompt and
    sampled again, up to `tries` times. The replacement prompt and its sampling seed derive from the
    group's own sampling seed and the attempt, so a resumed step draws what the uninterrupted one drew.
    The replaced groups' generated tokens go to the budget as dropped tokens; the kept groups' are
    counted by the verifier reward as every generation's are."""

    def __init__(self, tries: int, dataset: Any, verifier: VerifierReward, prompt_tokens: dict[str, int],
                 budget: TokenBudget):
        self.tries, self.verifier, self.prompt_tokens, self.budget = tries, verifier, prompt_tokens, budget
        self.rows = [(row["prompt"], row["problem"]) for row in dataset.select_columns(list(PROMPT_COLUMNS))]
        self.problem_of = {prompt_key(prompt): problem for prompt, problem in self.rows}

    def uniform(self, problem: str, group: list[list[int]], tokenizer: Any) -> bool:
        texts = tokenizer.batch_decode(group, skip_special_tokens=True)
        return len(set(self.verifier.rewards([problem] * len(texts), texts))) == 1

    def refill(self, rollout: SharpenRollout, runs: list[tuple[Any, int]], texts: list[str],
               completions: list[list[list[int]]], seeds: list[int]) -> list[str]:
        """Replace the groups with no advantage in place (`texts`, `completions`); each run's problem."""
        import random

        g = rollout.cfg.num_generations
        problems = [self.problem_of[prompt_key(p)] for p, _ in runs]
        for attempt in range(1, self.tries + 1):
            flat = [i for i, (_, k) in enumerate(runs)
                    if k == g and self.uniform(problems[i], completions[i], rollout.tokenizer)]
            if not flat:
                break
            for i in flat:
                self.budget.add_dropped(self.prompt_tokens.get(problems[i], 0), sum(map(len, completions[i])))
                draw = random.Random(derive_seed(seeds[i], "replacement", attempt)).randrange(len(self.rows))
                prompt, problems[i] = self.rows[draw]
                texts[i] = prompt if isinstance(prompt, str) else rollout.backend.chat_prompt(prompt)
            groups = rollout.backend.generate([texts[i] for i in flat], rollout.params(g),
                                              seeds=[derive_seed(seeds[i], "resample", attempt) for i in flat])
            for i, group in zip(flat, groups, strict=True):
                completions[i] = [c.token_ids for c in group]
        return problems


class VerifierReward:
    """1.0 when the completion's answer verifies against its problem's reference, else 0.0; it also
    counts each generation's tokens into `budget` (TRL calls it once per generation)."""

    __name__ = "verifier"

    def __init__(self, task: Any, strict: bool, budget: TokenBudget, prompt_tokens: dict[str, int]):
        self.task, self.strict, self.budget, self.prompt_tokens = task, strict, budget, prompt_tokens
        self._problems: dict[str, Any] = {}
        self.last: list[float] = []  # the rewards of the latest generation (step credit reads them)

    def problem(self, raw: str) -> Any:
        from sharpen.core.tasks import Problem

        if raw not in self._problems:
            self._problems[raw] = Problem(**json.loads(raw))
        return self._problems[raw]

    def rewards(self, problem: list[str], completions: list) -> list[float]:
        """Each completion's reward against its problem (JSON, as the dataset holds it); counts nothing."""
        return [float(self.task.verify(p, self.task.extract(completion_text(c), strict=self.strict)))
                for p, c in zip(map(self.problem, problem), completions, strict=True)]

    def __call__(self, prompts: list, completions: list, problem: list[str], completion_ids: list | None = None,
                 **kwargs: Any) -> list[float]:
        rewards = self.rewards(problem, completions)
        tokens = sum(map(len, completion_ids)) if completion_ids is not None else 0
        self.budget.record(sum(self.prompt_tokens.get(p, 0) for p in problem), tokens,
                           int(sum(rewards)), len(rewards))
        self.last = rewards
        return rewards


class PRMReward:
    """A learned PRM's value of the completion's steps (its lines), aggregated like the `prm`
    scorer's (`sharpen.search.scorers.PRMScorer`), on the rendered prompt the PRM was trained with."""

    __name__ = "prm"

    def __init__(self, spec: str, tokenizer: Any, budget: TokenBudget):
        from sharpen.search.registry import parse_scorer
        from sharpen.search.scorers.prm_model import PRMModel

        parsed = parse_scorer(spec)
        if parsed.name != "prm":
            raise ConfigError(f"process_reward={spec!r}: only a learned PRM is a process reward here "
                              "(fix: prm:<path>[:agg=min], a PRM from `sharpen train prm`)")
        o = parsed.options
        self.agg, self.batch, self.tokenizer, self.budget = o.agg, o.batch, tokenizer, budget
        self.prm = PRMModel.load(o.path, max_length=None, require_format=False)

    def __call__(self, prompts: list, completions: list, **kwargs: Any) -> list[float]:
        from sharpen.search.scorers import aggregate
        from sharpen.train.step_credit import prm_contexts

        rendered = prm_contexts(self.prm, self.tokenizer, prompts)
        d = self.prm.delimiter
        steps = [[s for s in completion_text(c).split(d) if s.strip()] for c in completions]
        enc = self.prm.encode(rendered, steps)
        last = self.agg == "last"
        enc = [(ids, (pos[-1:] if last else pos) if pos else [len(ids) - 1]) for ids, pos in enc]
        self.budget.add_verifier_tokens(sum(len(ids) for ids, _ in enc))
        return [aggregate(s, self.agg) for s in self.prm.score_encoded(enc, batch_size=self.batch)]


def _dataset(cfg: GRPOTrainConfig, task: Any) -> Any:
    from sharpen.train.data import load_dataset_dir

    if cfg.data:
        ds = load_dataset_dir(cfg.data, PROMPT_COLUMNS)
    else:
        ds = prompt_rows(task, task.problems("train", cfg.problems, seed=cfg.seed))
    if len(ds) == 0:
        raise TaskError(f"{cfg.data or cfg.task} has no prompts (fix: more training problems)")
    return ds


def _prompt_tokens(tok: Any, dataset: Any) -> dict[str, int]:
    """Each prompt's token count, by its row's `problem` (what a reward function is handed)."""
    return {row["problem"]: len(tok(tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True),
                                    add_special_tokens=False)["input_ids"])
            for row in dataset.select_columns(list(PROMPT_COLUMNS))}


def build_trainer(cfg: GRPOTrainConfig, dataset: Any | None = None) -> tuple[Any, TokenBudget]:
    """The configured TRL trainer and its token counter (exposed for benchmarks and tests)."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import GRPOTrainer

    from sharpen.core.tasks import load_task
    from sharpen.train.step_credit import StepCredit, trainer_class

    if not cfg.task:
        raise ConfigError("GRPO needs the task whose verifier is its reward (fix: task=gym:chain_sum or the like)")
    if cfg.token_budget is not None and cfg.world_size > 1:
        raise ConfigError("token_budget counts one process's generations (fix: leave it unset under a multi-process "
                          "launch and bound training with max_steps)")
    task = load_task(cfg.task, cfg.task_args)
    path = resolve_model(cfg.model)
    dataset = _dataset(cfg, task) if dataset is None else dataset
    tok = load_tokenizer(path)
    budget = TokenBudget.for_config(cfg)
    if cfg.token_budget is not None and cfg.token_budget < budget.worst_case():
        raise ConfigError(f"token_budget={cfg.token_budget} is below {worst_case_text(cfg)} "
                          "(fix: a larger budget, or fewer/shorter completions per step)")
    prompt_tokens = _prompt_tokens(tok, dataset)
    rewards: list[Any] = [VerifierReward(task, cfg.strict_answers, budget, prompt_tokens)]
    if cfg.process_reward:
        rewards.append(PRMReward(cfg.process_reward, tok, budget))
    model = prepare_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), cfg)
    rollout = SharpenRollout(cfg, tok) if cfg.sampler == "sharpen" else None
    if rollout is not None:
        rollout.budget = budget
        if cfg.dynamic_sampling:
            rollout.dynamic = DynamicSampling(cfg.dynamic_sampling, dataset, rewards[0], prompt_tokens, budget)
    # TRL warns that rollout_func is experimental on every trainer it builds; said once in SharpenRollout's docstring
    with mock.patch.dict(os.environ, {"TRL_EXPERIMENTAL_SILENCE": "1"}):
        trainer_cls = GRPOTrainer if cfg.advantage == "outcome" else trainer_class()
        trainer = trainer_cls(model=model, reward_funcs=rewards, args=cfg, train_dataset=dataset,
                              processing_class=tok, peft_config=cfg.peft_config(), callbacks=[budget],
                              rollout_func=rollout)
    budget.micro_step = lambda: trainer._step  # TRL's count of training micro-steps, whose multiples of
    # steps_per_generation x num_iterations generate (GRPOTrainer._prepare_inputs; the TRL range is pinned)
    if cfg.advantage != "outcome":
        trainer.step_credit = StepCredit(cfg, task, tok, rollout, budget, rewards[0])
    if rollout is not None and (trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled):
        raise ConfigError("sampler=sharpen generates with the policy's full weights in each process; DeepSpeed and "
                          "FSDP shard them (fix: sampler=trl)")
    return trainer, budget


def _stopped_at(out: Path, cfg: GRPOTrainConfig) -> int | None:
    """The step at which the token budget ends a checkpointed run of `out`: where it stopped the run, or
    the checkpoint's own step when the generations a resumed run makes at once (TRL generates at the
    first micro-step after a restart, where the uninterrupted run might have reused a batch) could pass
    the budget."""
    start = last_checkpoint(out)
    if start is None:
        return None
    state = json.loads((Path(start) / "trainer_state.json").read_text())
    saved = ((state.get("stateful_callbacks") or {}).get(TokenBudget.__name__) or {}).get("attributes", {})
    if saved.get("stopped_at") is not None:
        return saved["stopped_at"]
    generated = (saved.get("usage") or {}).get("generated_tokens", 0)
    if cfg.token_budget is not None and generated + TokenBudget.for_config(cfg).worst_case() > cfg.token_budget:
        return int(state.get("global_step", 0))
    return None


def train_grpo(cfg: GRPOTrainConfig) -> Path:
    """Train, resuming from the newest checkpoint; returns out/merged."""
    out = Path(cfg.output_dir)
    stopped = _stopped_at(out, cfg) if cfg.resume else None
    trainer, budget = build_trainer(cfg)
    quiet(trainer)
    # where the budget ends the run at the checkpoint, `fit` restores it: no step, nothing generated
    metrics, _ = fit(trainer, out, cfg.resume, stopped=stopped is not None)
    if stopped is not None:
        budget.stopped_at = stopped
    merged = save_outputs(trainer, out, cfg.lora)
    metrics |= {"prompts": len(trainer.train_dataset), "steps": trainer.state.global_step,
                "usage": budget.usage, "generated_tokens": budget.generated, "token_budget": cfg.token_budget,
                "stopped_by_budget_at": budget.stopped_at, "completions": budget.completions,
                "verified": budget.correct, "advantage": cfg.advantage, "credit_tokens": budget.credit_tokens,
                "dropped_tokens": budget.dropped_tokens}
    write_summary(out, "grpo", cfg, metrics)
    return merged
