"""Per-token advantages of the grpo recipe's step-credit modes (sharpen.train.step_credit), and the token cap they
share with outcome grpo (sharpen.train.grpo.TokenBudget), resumed runs included."""

import json
import math
from pathlib import Path

import pytest

from sharpen.train.step_credit import (
    disagreement,
    group_stats,
    mc_step_advantages,
    pav_step_advantages,
    spread,
    step_ends,
    token_steps,
)


def test_tokens_are_cut_into_steps_at_the_delimiter():
    pieces = ["2", "+", "3", "=5\n", "5", "+1=6", "\n", "Answer", ": 6"]
    prefixes = ["".join(pieces[: j + 1]) for j in range(len(pieces))]
    steps = token_steps(prefixes, "\n")
    assert steps == [0, 0, 0, 0, 1, 1, 1, 2, 2]  # a token holding the delimiter ends its step
    assert step_ends(steps) == [3, 6, 8]
    # a token holding two delimiters ("\n\n") skips no step number
    assert token_steps(["a", "a\n\n", "a\n\nb"], "\n") == [0, 0, 1]


def test_mc_advantages_by_hand():
    # V(s0) = 0.25 (the group's mean reward), V(s1) = 0.5, V(s2) not valued (cap), reward 1, scale 0.5
    assert mc_step_advantages(0.25, [0.5, None], 1.0, 0.5) == [0.5, 1.0, 1.0]
    # every inner state valued: the steps' advantages add up to the outcome advantage (r - mean) / scale
    adv = mc_step_advantages(0.375, [0.75, 0.25, 0.5], 0.0, 0.5175)
    assert adv == pytest.approx([(0.75 - 0.375) / 0.5175, -0.5 / 0.5175, 0.25 / 0.5175, -0.5 / 0.5175])
    assert sum(adv) == pytest.approx((0.0 - 0.375) / 0.5175)
    # one step: the outcome advantage itself
    assert mc_step_advantages(0.5, [], 1.0, 0.5) == [1.0]


def test_pav_advantages_by_hand():
    # outcome 1.0, V_mu(s0) = 0.5, V_mu after each step 0.7, 0.2, 0.9; alpha 0.5, progress clipped to 0.3
    assert pav_step_advantages(1.0, 0.5, [0.7, 0.2, 0.9], 0.5, 0.3) == pytest.approx([1.1, 0.85, 1.15])


def test_tokens_get_their_steps_advantage():
    assert spread([0.5, -1.0], [0, 0, 1, 1, 1], 7) == [0.5, 0.5, -1.0, -1.0, -1.0, 0.0, 0.0]


def test_group_stats_follow_trl_and_leave_flat_groups_unscaled():
    means, scales = group_stats([1, 0, 0, 0, 1, 1, 1, 1], 4)
    assert means == [0.25] * 4 + [1.0] * 4
    assert scales[0] == pytest.approx(0.5 + 1e-4) and scales[4] == 1.0  # stdev([1,0,0,0]) = 0.5
    # a flat group still gets step credit: a step that lowered the chance of finishing right is negative
    assert mc_step_advantages(1.0, [0.25], 1.0, 1.0) == [-0.75, 0.75]


def test_disagreement_counts_steps_against_their_outcome():
    assert disagreement([[0.5, -0.2], [0.0, -1.0], [0.3]], [1.0, -0.5, 0.0]) == pytest.approx(1 / 3)
    assert disagreement([[0.0]], [1.0]) is None
    assert not math.isnan(disagreement([[1.0]], [1.0]))


TASK_ARGS = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}


def _cfg(tiny_model_dir, out, **kw):
    """Two problems, two completions of at most 8 tokens each a step; a space ends a step, so the
    tiny model's random text has several steps to credit."""
    from sharpen.train.grpo import GRPOTrainConfig

    base = dict(model=tiny_model_dir, output_dir=str(out), task="gym:chain_sum", task_args=TASK_ARGS, problems=2,
                strict_answers=False, max_steps=2, save_steps=1, per_device_train_batch_size=4, num_generations=2,
                max_completion_length=8, step_delimiter=" ", learning_rate=1e-3, logging_steps=1, seed=1)
    return GRPOTrainConfig(**(base | kw))


def _summary(out):
    import json

    return json.loads((out / "sharpen_train.json").read_text())["metrics"]


def _logged(out, key):
    import json

    from sharpen.train.common import last_checkpoint

    state = json.loads((Path(last_checkpoint(out)) / "trainer_state.json").read_text())
    return [h[key] for h in state["log_history"] if key in h]


def test_step_credit_settings_are_checked(tmp_path, tiny_model_dir):
    from sharpen.core.errors import ConfigError

    with pytest.raises(ConfigError, match="advantage='vine' is not a mode"):
        _cfg(tiny_model_dir, tmp_path / "a", advantage="vine")
    with pytest.raises(ConfigError, match="credit_rollouts=0"):
        _cfg(tiny_model_dir, tmp_path / "a", advantage="mc", credit_rollouts=0)
    from sharpen.train.grpo import build_trainer

    with pytest.raises(ConfigError, match="advantage=pav needs the prover"):
        build_trainer(_cfg(tiny_model_dir, tmp_path / "a", advantage="pav"))
    with pytest.raises(ConfigError, match="sampler=sharpen"):
        build_trainer(_cfg(tiny_model_dir, tmp_path / "a", advantage="mc", sampler="trl"))


def test_mc_round_meters_its_rollouts_and_stops_at_the_cap(tmp_path, tiny_model_dir):
    """A real round of advantage=mc on the tiny model: the rollouts' tokens are generated tokens, the
    cap covers completions and rollouts together, and a cap too small for every boundary's rollouts
    leaves some boundaries unvalued instead of passing it."""
    from sharpen.train.grpo import train_grpo

    out = tmp_path / "free"
    train_grpo(_cfg(tiny_model_dir, out, advantage="mc", credit_rollouts=2))
    free = _summary(out)
    assert free["advantage"] == "mc" and free["credit_tokens"] > 0
    assert free["generated_tokens"] == free["usage"]["generated_tokens"] > free["credit_tokens"]
    assert _logged(out, "step_credit/rollout_tokens") and all(v == 1.0 for v in _logged(out, "step_credit/valued"))
    assert _logged(out, "step_credit/shared") and all(0.0 <= v < 1.0 for v in _logged(out, "step_credit/shared"))

    out = tmp_path / "capped"  # one generation's worst case (4 x 8) and one token more: no room for rollouts
    train_grpo(_cfg(tiny_model_dir, out, advantage="mc", credit_rollouts=2, token_budget=33))
    capped = _summary(out)
    assert capped["steps"] == 1 and 0 < capped["generated_tokens"] <= 33
    assert _logged(out, "step_credit/valued") == [0.0] and capped["credit_tokens"] == 0

    # two micro-steps an optimizer step, each generating: the first one's rollouts may not take the room the
    # step-end check kept for the second one's completions (2 x 4 x 8 = 64, a step's worst case, is the cap;
    # spending what is left after the first micro-step's completions on rollouts made this round generate 69)
    out = tmp_path / "accumulated"
    train_grpo(_cfg(tiny_model_dir, out, advantage="mc", credit_rollouts=2, token_budget=64, max_steps=3, problems=8,
                    gradient_accumulation_steps=2, steps_per_generation=1))
    acc = _summary(out)
    assert acc["steps"] == 1 and acc["completions"] == 8 and acc["generated_tokens"] <= 64, acc


def test_mc_counts_the_completions_through_a_state_as_its_rollouts(tmp_path, tiny_model_dir):
    """credit_reuse: every state is reached by its own completion at least, so one rollout a state costs
    nothing (each state valued by the outcomes of the completions through it); at two, each state lacks one
    rollout at most, so the first step (the same completions in both runs) rolls out fewer tokens."""
    from sharpen.train.grpo import train_grpo

    one = tmp_path / "one"
    train_grpo(_cfg(tiny_model_dir, one, advantage="mc", credit_rollouts=1, credit_reuse=True, max_steps=1))
    assert _summary(one)["credit_tokens"] == 0 and _logged(one, "step_credit/valued") == [1.0]
    assert _logged(one, "step_credit/rollout_tokens") == [0.0]
    runs = {}
    for reuse in (False, True):
        runs[reuse] = tmp_path / f"two-{reuse}"
        train_grpo(_cfg(tiny_model_dir, runs[reuse], advantage="mc", credit_rollouts=2, credit_reuse=reuse, max_steps=1))
    fresh, reused = (_logged(runs[r], "step_credit/rollout_tokens")[0] for r in (False, True))
    assert 0 < reused < fresh
    assert _logged(runs[True], "step_credit/valued") == _logged(runs[False], "step_credit/valued") == [1.0]


@pytest.mark.slow  # a third tiny training run; `pytest -m slow` runs it
def test_pav_round_reads_the_prover(tmp_path, tiny_model_dir):
    from conftest import changed_tensors, random_prm

    from sharpen.train.grpo import train_grpo

    prover = random_prm(tmp_path / "prover", tiny_model_dir)
    out = tmp_path / "pav"
    merged = train_grpo(_cfg(tiny_model_dir, out, advantage="pav", credit_prover=prover, credit_alpha=1.0))
    s = _summary(out)
    assert s["advantage"] == "pav" and s["credit_tokens"] == 0 and s["usage"]["verifier_tokens"] > 0
    assert changed_tensors(tiny_model_dir, str(merged)), "pav credit moved nothing (a random prover differs by step)"


@pytest.mark.slow  # three tiny training runs; `pytest -m slow` runs it
def test_a_resumed_mc_round_equals_an_uninterrupted_one(tmp_path, tiny_model_dir):
    from sharpen.train.grpo import train_grpo

    whole = tmp_path / "whole"
    train_grpo(_cfg(tiny_model_dir, whole, advantage="mc", credit_rollouts=2, max_steps=2))
    cut = tmp_path / "cut"
    train_grpo(_cfg(tiny_model_dir, cut, advantage="mc", credit_rollouts=2, max_steps=1))
    train_grpo(_cfg(tiny_model_dir, cut, advantage="mc", credit_rollouts=2, max_steps=2))
    a, b = _summary(whole), _summary(cut)
    assert b["resumed_from"].endswith("checkpoint-1")
    for key in ("generated_tokens", "credit_tokens", "completions", "steps"):
        assert a[key] == b[key], key
    assert _logged(whole, "step_credit/rollout_tokens") == _logged(cut, "step_credit/rollout_tokens")


def test_mc_values_a_state_several_completions_share_once():
    """Completions of one prompt that start with the same step pass through one state: it is valued
    once and every completion through it reads that value; the same tokens under another prompt, or a
    state with nothing left to generate, are not shared or not valued."""
    from sharpen.train.step_credit import mc_states

    # three completions of prompt "p", one of "q"; steps by token: [0, 0, 1, 1, 2]-style cuts
    rows = [[1, 2, 3, 4, 5], [1, 2, 3, 9, 9], [1, 7, 3, 4, 5], [1, 2, 3, 4, 5]]
    steps = [[0, 0, 1, 1, 2], [0, 0, 1, 1, 2], [0, 0, 1, 1, 2], [0, 0, 1, 1, 2]]
    prompts = ["p", "p", "p", "q"]
    states = mc_states(prompts, rows, steps, max_len=8)
    got = [(st.row, st.step, st.end, st.left, st.at) for st in states]
    assert got == [
        (0, 0, 1, 6, [(0, 0), (1, 0)]),  # "p" + [1, 2]: rows 0 and 1
        (0, 1, 3, 4, [(0, 1)]),          # "p" + [1, 2, 3, 4]
        (1, 1, 3, 4, [(1, 1)]),          # "p" + [1, 2, 3, 9]
        (2, 0, 1, 6, [(2, 0)]),          # "p" + [1, 7]
        (2, 1, 3, 4, [(2, 1)]),          # "p" + [1, 7, 3, 4]: the same tokens as row 0's after another first step
        (3, 0, 1, 6, [(3, 0)]),          # row 0's tokens under prompt "q": another state
        (3, 1, 3, 4, [(3, 1)]),
    ]
    # a boundary at the length limit has no token left to roll out and is not a state
    assert [(st.row, st.step) for st in mc_states(["p"], [[1, 2, 3, 4, 5]], [[0, 0, 1, 1, 2]], max_len=4)] == [(0, 0)]


def test_rollouts_get_what_the_steps_later_generations_leave():
    """TokenBudget.room by hand: a step of two generating micro-steps of at most 32 tokens each, cap 100."""
    from types import SimpleNamespace

    from sharpen.train.grpo import TokenBudget

    b = TokenBudget(100, per_generation=32, generate_every=1, accumulation=2)
    state = SimpleNamespace(global_step=0, stateful_callbacks={})
    b.on_train_begin(None, state, None)
    b.on_step_begin(None, state, None)
    assert b.room() == 100 - 0 - 2 * 32
    b.record(10, 30, 0, 4)  # the first micro-step's 30 tokens: the second's 32 still held back
    assert b.room() == 100 - 30 - 32
    b.add_credit(5, 20)
    b.record(10, 25, 0, 4)
    assert b.room() == 100 - 75 and b.generated == 75 and b.credit_tokens == 20
    assert TokenBudget(None, 32).room() is None
    # generating every second micro-step: a step of two micro-steps generates once
    b = TokenBudget(100, per_generation=32, generate_every=2, accumulation=2)
    b.on_train_begin(None, state, None)
    b.on_step_begin(None, state, None)
    assert b.room() == 100 - 32


def test_the_cap_holds_where_an_epoch_ends_inside_an_optimizer_step(tmp_path, tiny_model_dir):
    """12 prompts x 2 completions, 4 a micro-step: an epoch of 6 micro-steps, so with 4 an optimizer step
    its second step has 2, and the next epoch's steps start 2 micro-steps earlier than 4 x step. TRL
    generates at every third micro-step it trains (0, 3 | 6, 9 | ...); a cap of three generations' worst
    case (3 x 12 x 8 = 288) must stop the round before its third step, which generates twice (counting
    4 x step, the check saw one generation there, and the round generated past the cap)."""
    from sharpen.train.grpo import train_grpo

    out = tmp_path / "epochs"
    train_grpo(_cfg(tiny_model_dir, out, problems=12, max_steps=4, gradient_accumulation_steps=4,
                    steps_per_generation=3, token_budget=288))
    s = _summary(out)
    assert s["generated_tokens"] <= 288 and s["stopped_by_budget_at"] == s["steps"] == 2, s


def test_a_resumed_round_does_not_pass_the_cap_where_the_restart_generates(tmp_path, tiny_model_dir):
    """num_iterations=2: the uninterrupted run generates every second step, so after step 1 the next step
    reuses its batch and the step-end check lets it run; a run resumed from step 1's checkpoint generates at
    once (TRL generates at a restart), so with no room for a second generation it ends at the checkpoint."""
    from sharpen.train.grpo import train_grpo

    out = tmp_path / "cut"
    train_grpo(_cfg(tiny_model_dir, out, max_steps=1, num_iterations=2, token_budget=32))
    first = _summary(out)
    assert first["steps"] == 1 and first["stopped_by_budget_at"] is None and 0 < first["generated_tokens"] <= 32
    train_grpo(_cfg(tiny_model_dir, out, max_steps=3, num_iterations=2, token_budget=32))
    resumed = _summary(out)
    assert resumed["resumed_from"].endswith("checkpoint-1")
    assert resumed["generated_tokens"] == first["generated_tokens"] <= 32
    assert resumed["steps"] == 1 and resumed["stopped_by_budget_at"] == 1


def test_resuming_a_round_the_budget_ended_trains_no_step(tmp_path, tiny_model_dir):
    """The budget stops a round inside its epoch; running it again (a loop resumed before the stage was
    marked done) restores the stopped checkpoint: no step, no token, the same merged weights."""
    from conftest import changed_tensors

    from sharpen.train.grpo import train_grpo

    out = tmp_path / "stopped"
    merged = train_grpo(_cfg(tiny_model_dir, out, max_steps=6, token_budget=64, problems=8))
    first = _summary(out)
    assert first["stopped_by_budget_at"] == first["steps"] < 6 and first["generated_tokens"] <= 64
    snapshot = tmp_path / "first-merged"
    merged.rename(snapshot)
    again = train_grpo(_cfg(tiny_model_dir, out, max_steps=6, token_budget=64, problems=8))
    second = _summary(out)
    for key in ("steps", "stopped_by_budget_at", "generated_tokens", "completions", "usage"):
        assert second[key] == first[key], key
    assert second["resumed_from"].endswith(f"checkpoint-{first['steps']}")
    assert json.loads((out / "sharpen_train.json").read_text())["config"]["max_steps"] == 6
    assert not changed_tensors(str(snapshot), str(again))
