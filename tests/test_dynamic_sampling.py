"""grpo's dynamic_sampling (DAPO): groups whose completions all earn the same reward are replaced."""

import json
import random

import pytest

from sharpen.core.errors import ConfigError
from sharpen.core.seeding import derive_seed

TASK_ARGS = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}


def _cfg(tiny_model_dir, out, **kw):
    from sharpen.train.grpo import GRPOTrainConfig

    base = dict(model=tiny_model_dir, output_dir=str(out), task="gym:chain_sum", task_args=TASK_ARGS, problems=4,
                strict_answers=False, max_steps=2, save_steps=1, per_device_train_batch_size=4, num_generations=2,
                max_completion_length=8, learning_rate=1e-3, logging_steps=1, seed=1)
    return GRPOTrainConfig(**(base | kw))


def _summary(out):
    return json.loads((out / "sharpen_train.json").read_text())["metrics"]


def test_dynamic_sampling_settings_are_checked(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match="dynamic_sampling=17"):
        _cfg(tiny_model_dir, tmp_path, dynamic_sampling=17)
    for other in ({"sampler": "trl"}, {"advantage": "mc"}, {"process_reward": "prm:x"}):
        with pytest.raises(ConfigError, match="dynamic_sampling replaces prompts"):
            _cfg(tiny_model_dir, tmp_path, dynamic_sampling=1, **other)
    from sharpen.train.grpo import build_trainer

    # the worst case of a generation counts the replacements: 4 completions x 8 tokens x (1 + 1)
    with pytest.raises(ConfigError, match=r"x \(1 \+ dynamic_sampling 1\) = 64"):
        build_trainer(_cfg(tiny_model_dir, tmp_path, dynamic_sampling=1, token_budget=40))


class ScriptedVerifier:
    """The verifier's reward of a completion, by problem: problem "mixed" rewards its group's first
    completion only (the group has an advantage), every other problem rewards none (no advantage)."""

    def __init__(self):
        self.seen = []

    def rewards(self, problem, completions):
        self.seen.append(problem[0])
        return [float(problem[0] == "mixed" and j == 0) for j in range(len(completions))]


def test_groups_without_advantage_are_replaced_and_their_tokens_counted(tiny_model_dir):
    """Three groups: a mixed one is kept as sampled; the two flat ones are replaced, with prompts and
    seeds drawn from their own sampling seed, until a replacement is mixed or the tries run out; every
    replaced group's tokens are dropped tokens."""
    from datasets import Dataset

    from sharpen.backends.hf import HFBackend
    from sharpen.backends.models import load_tokenizer
    from sharpen.train.grpo import DynamicSampling, SharpenRollout, TokenBudget

    cfg = _cfg(tiny_model_dir, "unused", dynamic_sampling=3)
    tok = load_tokenizer(tiny_model_dir)
    rollout = SharpenRollout(cfg, tok)
    from transformers import AutoModelForCausalLM

    rollout.backend = HFBackend.from_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), rollout.tokenizer)
    rows = Dataset.from_list([{"prompt": f"q{i}", "problem": name} for i, name in enumerate(["flat", "mixed", "flat2"])])
    budget = TokenBudget()
    dynamic = DynamicSampling(3, rows, ScriptedVerifier(), {"flat": 5, "flat2": 7, "mixed": 6}, budget)

    def sample(seeds):
        runs = [("q0", 2), ("q1", 2), ("q2", 2)]
        texts = ["q0", "q1", "q2"]
        groups = rollout.backend.generate(texts, rollout.params(2), seeds=seeds)
        completions = [[c.token_ids for c in g] for g in groups]
        first = [list(map(list, g)) for g in completions]
        return runs, texts, completions, first, dynamic.refill(rollout, runs, texts, completions, seeds)

    runs, texts, completions, first, problems = sample([11, 12, 13])
    assert problems[1] == "mixed" and completions[1] == first[1] and texts[1] == "q1"  # kept as sampled
    names, replaced = ["flat", "mixed", "flat2"], 0
    for i, seed in ((0, 11), (2, 13)):  # by hand: replaced until a replacement is mixed, at most 3 times
        want = names[i]
        for attempt in (1, 2, 3):
            want = names[random.Random(derive_seed(seed, "replacement", attempt)).randrange(3)]
            replaced += 1
            if want == "mixed":
                break
        assert problems[i] == want and texts[i] == f"q{names.index(want)}"
    assert replaced > 0 and budget.usage["calls"] == replaced  # one dropped group a replacement
    assert budget.dropped_tokens > 0 and budget.generated == budget.dropped_tokens
    # the same seeds draw the same replacements (a resumed step repeats them)
    again = sample([11, 12, 13])
    assert again[4] == problems and again[2] == completions


def test_a_real_round_with_dynamic_sampling(tmp_path, tiny_model_dir):
    """The tiny model never answers right, so every group is flat and is replaced once: the round trains
    as many completions as without, and the dropped groups' tokens are generated tokens under the cap."""
    from sharpen.train.grpo import train_grpo

    out = tmp_path / "dyn"
    train_grpo(_cfg(tiny_model_dir, out, dynamic_sampling=1))
    s = _summary(out)
    assert s["steps"] == 2 and s["completions"] == 2 * 4
    assert s["dropped_tokens"] > 0 and s["generated_tokens"] == s["usage"]["generated_tokens"] > s["dropped_tokens"]
    capped = tmp_path / "capped"  # room for one step's worst case (4 x 8 x 2) and no more
    train_grpo(_cfg(tiny_model_dir, capped, dynamic_sampling=1, token_budget=64))
    c = _summary(capped)
    assert c["steps"] == 1 and 0 < c["generated_tokens"] <= 64
