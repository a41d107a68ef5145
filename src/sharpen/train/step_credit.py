"""Step credit in the GRPO loss: per-token advantages from the values of a completion's steps.

GRPO gives every token of a completion the same advantage, its group-relative outcome
(`A_i = (r_i - mean r) / std r`). Here a completion is cut into steps at the step delimiter (the
one search and the PRMs use, "\\n" by default) and each step's tokens get that step's advantage
(`advantage` in `GRPOTrainConfig`):

- `outcome`: TRL's advantage, unchanged.
- `mc` (VinePPO, Kazemnejad et al., arXiv 2410.01679; SPO-chain, arXiv 2505.23564): the value of
  the state after step t, V(s_t), is the share of `credit_rollouts` continuations from it that
  verify (a state that several completions of a prompt pass through is valued once, for all of
  them; with `credit_reuse` the completions that pass through a state count as its first rollouts, their
  outcomes, a completion's own among them, averaged in as GRPO's group mean averages its own); V(s_0) is the group's mean reward (its G completions are G rollouts from the prompt) and
  the last state's value is the completion's own reward. Step t gets

      A_t = (V(s_t) - V(s_{t-1})) / scale,   scale = the group's reward std (TRL's), or 1 where it is 0

  so the steps' advantages add up to the outcome advantage where the group has spread, and a group
  whose completions all score the same still gets credit wherever a step raised or lowered the
  chance of finishing right. The rollouts are sampled like the completions (sharpen's sampler, the
  policy as it is at this step), and **their tokens count against the round's token cap**: a
  boundary whose rollouts could pass the cap gets no value, and its step shares the advantage of
  the next valued state (`merged` steps), so credit falls back to the outcome where the cap ends it.
- `pav` (process advantage verifiers, Setlur et al., arXiv 2410.08146): the outcome advantage plus
  `credit_alpha` x the progress of a prover's value, V_mu(s_t) - V_mu(s_{t-1}), with V_mu a PRM
  from `sharpen train prm` (`credit_prover`; trained on `oracle:k:prover=` labels it is the prover
  policy's value). The progress is clipped to +-`credit_clip` (Gao et al., arXiv 2410.15115, against
  a policy that farms the PRM); V_mu(s_0) is the group's mean of V_mu(s_1). The PRM's forward
  passes are counted as verifier tokens, not generated ones.

`StepCreditTrainer` is TRL's `GRPOTrainer` with the advantages of each generation replaced: TRL
1.16's loss takes (B, T) advantages from a subclass (`_compute_loss` unsqueezes only 1-d ones);
the override is of `_generate_and_score_completions`, so the TRL range is pinned (pyproject).
Per step it logs `step_credit/disagree` (the share of steps whose advantage has the opposite sign
of their completion's outcome), `step_credit/valued` (the share of inner boundaries valued within
the cap), `step_credit/shared` (1 - distinct states / inner boundaries that can still generate: the
share of those boundaries whose state an earlier completion of the same prompt already reached, so
no rollouts of their own: `mc_states`) and `step_credit/rollout_tokens`.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sharpen.core.errors import ConfigError

MODES = ("outcome", "mc", "pav")


def token_steps(prefix_texts: Sequence[str], delimiter: str) -> list[int]:
    """The step of each token, numbered 0, 1, ... in order: `prefix_texts[j]` is the decoded text of
    tokens 0..j. A token belongs to the step whose delimiters are complete before it, so the token
    that ends a step (holds its delimiter) is that step's last."""
    raw, before = [], ""
    for text in prefix_texts:
        raw.append(before.count(delimiter))
        before = text
    ranks: dict[int, int] = {}
    return [ranks.setdefault(r, len(ranks)) for r in raw]


def step_ends(steps: Sequence[int]) -> list[int]:
    """The index of each step's last token (`steps` from `token_steps`)."""
    ends: dict[int, int] = {}
    for j, s in enumerate(steps):
        ends[s] = j
    return [ends[s] for s in sorted(ends)]


def mc_step_advantages(baseline: float, inner: Sequence[float | None], reward: float, scale: float) -> list[float]:
    """Per-step advantages of a completion of len(inner) + 1 steps: `inner[t]` is V(s_{t+1}), the
    value after step t+1 (None: not valued, the step is merged with the next), V(s_0) = `baseline`
    and the value after the last step is `reward`. A merged run of steps shares (V_next - V_prev) / scale."""
    values = [*inner, reward]
    out: list[float] = []
    prev, pending = baseline, 0
    for v in values:
        pending += 1
        if v is None:
            continue
        out += [(v - prev) / scale] * pending
        prev, pending = v, 0
    return out


def pav_step_advantages(outcome: float, baseline: float, values: Sequence[float], alpha: float,
                        clip: float) -> list[float]:
    """Per-step advantages: `outcome` + alpha x clip(V_mu(s_t) - V_mu(s_{t-1}), -clip, clip), with
    `values[t]` = V_mu after step t+1 and V_mu(s_0) = `baseline`."""
    out, prev = [], baseline
    for v in values:
        out.append(outcome + alpha * max(-clip, min(clip, v - prev)))
        prev = v
    return out


@dataclass
class MCState:
    """A state to value for `mc`: the prefix of completion `row` up to the end of its inner step `step`
    (token `end`), `left` tokens from `max_completion_length`; `at`: every (row, inner step) that is this
    state, the same prompt and the same prefix tokens."""

    row: int
    step: int
    end: int
    left: int
    at: list[tuple[int, int]] = field(default_factory=list)


def mc_states(contexts: Sequence[Hashable], rows: Sequence[Sequence[int]], steps: Sequence[Sequence[int]],
              max_len: int) -> list[MCState]:
    """The distinct states after each inner step of each completion that can still generate a token, in
    order of first appearance; `contexts[i]`: what completion i continues (its prompt and problem), so a
    state is a context and the prefix tokens. Completions of one prompt often share their first steps (all the more as
    the sampler sharpens); a shared state is valued once, by one set of rollouts, and every completion
    that passes through it reads that value, so the rollouts' tokens are spent on distinct states only."""
    found: dict[tuple[Hashable, tuple[int, ...]], MCState] = {}
    for i, (r, s) in enumerate(zip(rows, steps, strict=True)):
        for t, end in enumerate(step_ends(s)[:-1]):
            if max_len - (end + 1) > 0:
                key = (contexts[i], tuple(r[: end + 1]))
                found.setdefault(key, MCState(i, t, end, max_len - (end + 1))).at.append((i, t))
    return list(found.values())


def spread(step_advantages: Sequence[float], steps: Sequence[int], width: int) -> list[float]:
    """Each token's advantage (its step's), padded with 0.0 to `width`."""
    return [step_advantages[s] for s in steps] + [0.0] * (width - len(steps))


def group_stats(rewards: Sequence[float], size: int) -> tuple[list[float], list[float]]:
    """Each row's group mean reward and scale (the group's unbiased std, TRL's, or 1.0 where it is 0)."""
    import statistics

    means, scales = [], []
    for g in range(0, len(rewards), size):
        group = list(rewards[g:g + size])
        mean = sum(group) / len(group)
        std = statistics.stdev(group) if len(group) > 1 else 0.0
        means += [mean] * len(group)
        scales += [std + 1e-4 if std > 0 else 1.0] * len(group)
    return means, scales


def prm_contexts(prm: Any, tokenizer: Any, prompts: list) -> list[str]:
    """What `prm` reads before each completion's steps: a text prompt as it is, a chat prompt rendered
    with the policy's template (its last user message as the question)."""
    out = []
    for p in prompts:
        if isinstance(p, str):
            out.append(prm.context_of(p, None))
        else:
            rendered = tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
            question = next((m["content"] for m in reversed(p) if m.get("role") == "user"), None)
            out.append(prm.context_of(rendered, question))
    return out


def disagreement(step_advantages: Sequence[Sequence[float]], outcomes: Sequence[float]) -> float | None:
    """The share of steps whose advantage has the opposite sign of their completion's outcome
    (reward - group mean), over steps where both are nonzero; None when there are none."""
    n = bad = 0
    for adv, o in zip(step_advantages, outcomes, strict=True):
        for a in adv:
            if a != 0 and o != 0:
                n += 1
                bad += (a > 0) != (o > 0)
    return bad / n if n else None


class StepCredit:
    """Computes a generation's per-token advantages for `StepCreditTrainer` (see the module)."""

    def __init__(self, cfg: Any, task: Any, tokenizer: Any, rollout: Any, budget: Any, verifier: Any):
        if cfg.process_reward:
            raise ConfigError("advantage=mc|pav and process_reward both add process credit (fix: drop one of them)")
        if cfg.advantage == "mc" and rollout is None:
            raise ConfigError("advantage=mc samples its Monte Carlo rollouts with sharpen's sampler (fix: sampler=sharpen)")
        if cfg.advantage == "pav" and not cfg.credit_prover:
            raise ConfigError("advantage=pav needs the prover's value model (fix: credit_prover=<a PRM dir from "
                              "`sharpen train prm`, e.g. trained on oracle:k:prover= labels>)")
        if cfg.world_size > 1:
            raise ConfigError("step credit runs in one process (fix: advantage=outcome under a multi-process launch)")
        self.cfg, self.task, self.tokenizer = cfg, task, tokenizer
        self.rollout, self.budget, self.verifier = rollout, budget, verifier
        self.prover = None
        if cfg.advantage == "pav":
            from sharpen.search.scorers.prm_model import PRMModel

            self.prover = PRMModel.load(cfg.credit_prover, max_length=None, require_format=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def __call__(self, trainer: Any, inputs: list[dict], out: dict) -> tuple[Any, dict[str, float]]:
        import torch

        ids, mask = out["completion_ids"], out["completion_mask"]
        rows = [ids[i][mask[i].bool()].tolist() for i in range(ids.shape[0])]
        rewards = list(self.verifier.last)
        if len(rewards) != len(rows):
            raise RuntimeError(f"step credit: {len(rewards)} rewards for {len(rows)} completions")
        means, scales = group_stats(rewards, trainer.num_generations)
        steps = [token_steps([self.decode(r[: j + 1]) for j in range(len(r))], self.cfg.step_delimiter) for r in rows]
        problems = [self.verifier.problem(x["problem"]) for x in inputs]
        stats: dict[str, float] = {}
        if self.cfg.advantage == "mc":
            inner, stats = self.mc_values(trainer, inputs, rows, steps, problems, rewards)
            per_step = [mc_step_advantages(means[i], inner[i], rewards[i], scales[i]) for i in range(len(rows))]
        else:
            outcome = out["advantages"].tolist()
            values = self.prover_values(inputs, rows, steps)
            first = [v[0] if v else 0.0 for v in values]
            size = trainer.num_generations
            base = [sum(first[g:g + size]) / len(first[g:g + size]) for g in range(0, len(first), size) for _ in range(size)]
            per_step = [pav_step_advantages(outcome[i], base[i], values[i], self.cfg.credit_alpha, self.cfg.credit_clip)
                        for i in range(len(rows))]
        width = ids.shape[1]
        advantages = torch.tensor([spread(per_step[i], steps[i], width) for i in range(len(rows))],
                                  dtype=torch.float32, device=ids.device)
        d = disagreement(per_step, [r - m for r, m in zip(rewards, means, strict=True)])
        if d is not None:
            stats["disagree"] = d
        return advantages, stats

    def mc_values(self, trainer: Any, inputs: list[dict], rows: list[list[int]], steps: list[list[int]],
                  problems: list[Any], rewards: list[float]) -> tuple[list[list[float | None]], dict[str, float]]:
        """V(s_t) after each inner step of each completion from `credit_rollouts` continuations (with
        `credit_reuse`, the completions that pass through the state count as its first ones), within
        what the token cap leaves."""
        from sharpen.backends.base import SamplingParams
        from sharpen.core.seeding import derive_seed

        cfg, k = self.cfg, self.cfg.credit_rollouts
        backend = self.rollout.backend
        prompts = [x["prompt"] if isinstance(x["prompt"], str) else backend.chat_prompt(x["prompt"]) for x in inputs]
        states = mc_states([(p, x["problem"]) for p, x in zip(prompts, inputs, strict=True)], rows, steps,
                           cfg.max_completion_length)
        inner: list[list[float | None]] = [[None] * (len(step_ends(s)) - 1) for s in steps]
        spent = 0
        step = trainer.state.global_step
        call = self.rollout.call_in_step("credit", step)  # each generation of the step draws its own streams
        model = backend.model
        training = model.training
        model.eval()
        try:
            def known(st: MCState) -> list[float]:  # outcomes of the completions through st, when they count
                return [rewards[r] for r, _ in st.at] if cfg.credit_reuse else []

            def value(st: MCState, outcomes: list[float]) -> None:  # every boundary that is st gets their mean
                for i, t in st.at:
                    inner[i][t] = sum(outcomes) / len(outcomes)

            need = [max(0, k - len(known(st))) for st in states]
            for st, n in zip(states, need, strict=True):
                if n == 0:  # reached by credit_rollouts completions already: valued without a rollout
                    value(st, known(st))
            for left, n in sorted({(st.left, n) for st, n in zip(states, need, strict=True) if n}, reverse=True):
                batch = [st for st, m in zip(states, need, strict=True) if st.left == left and m == n]
                room = self.budget.room()
                if room is not None:  # the rollouts' worst case must fit what the cap leaves
                    batch = batch[: max(0, room // (n * left))]
                if not batch:
                    continue
                params = SamplingParams(n=n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=left,
                                        stop_at="answer")
                prefixes = [self.decode(rows[st.row][: st.end + 1]) for st in batch]
                groups = backend.generate([prompts[st.row] + x for st, x in zip(batch, prefixes, strict=True)], params,
                                          seeds=[derive_seed(cfg.seed, 2, step, call, st.row, st.step) for st in batch])
                tokens = sum(c.num_tokens for g in groups for c in g)
                prompt_tokens = sum(len(self.tokenizer(prompts[st.row] + x, add_special_tokens=False)["input_ids"]) * n
                                    for st, x in zip(batch, prefixes, strict=True))
                self.budget.add_credit(prompt_tokens, tokens)
                spent += tokens
                for st, prefix, group in zip(batch, prefixes, groups, strict=True):
                    right = [self.task.verify(problems[st.row], self.task.extract(prefix + c.text, strict=cfg.strict_answers))
                             for c in group]
                    value(st, right + known(st))
        finally:
            model.train(training)
        n_inner, valued = sum(len(v) for v in inner), sum(v is not None for row in inner for v in row)
        shared = 1.0 - len(states) / n_states if (n_states := sum(len(st.at) for st in states)) else 0.0
        return inner, {"rollout_tokens": float(spent), "valued": valued / n_inner if n_inner else 1.0, "shared": shared}

    def prover_values(self, inputs: list[dict], rows: list[list[int]], steps: list[list[int]]) -> list[list[float]]:
        """V_mu after each step of each completion: the prover PRM's score at each step's end."""
        prm = self.prover
        contexts = prm_contexts(prm, self.tokenizer, [x["prompt"] for x in inputs])
        texts = []
        for r, s in zip(rows, steps, strict=True):
            starts = [0] + [e + 1 for e in step_ends(s)[:-1]]
            texts.append([self.decode(r[a: e + 1]).rstrip(prm.delimiter) for a, e in zip(starts, step_ends(s), strict=True)])
        enc = prm.encode(contexts, texts)
        self.budget.add_verifier_tokens(sum(len(e[0]) for e in enc))
        return prm.score_encoded(enc)


def trainer_class() -> type:
    """TRL's GRPOTrainer whose generations carry per-token advantages from `step_credit`."""
    from trl import GRPOTrainer

    class StepCreditTrainer(GRPOTrainer):
        step_credit: StepCredit | None = None

        def _generate_and_score_completions(self, inputs: list[dict]) -> dict:
            out = super()._generate_and_score_completions(inputs)
            if self.step_credit is not None and self.model.training:
                out["advantages"], stats = self.step_credit(self, inputs, out)
                for name, value in stats.items():
                    self._metrics["train"][f"step_credit/{name}"].append(value)
            return out

    return StepCreditTrainer
