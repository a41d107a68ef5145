"""Training the denoiser on step preferences and on reward-weighted samples (`sharpen.train.diffusion`)
with a tiny DDPM prepared in seconds: pairs are siblings with the better value chosen, the step's
log-likelihood is the scheduler's Gaussian, a round lowers the DPO loss on its pairs, a killed and
rerun round ends with the same weights, and bad settings are one-line errors."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("sklearn")

from sharpen.backends.diffusion import load_digits_model  # noqa: E402
from sharpen.core.errors import ConfigError  # noqa: E402
from sharpen.search.algorithms import ALGORITHMS  # noqa: E402
from sharpen.search.denoise import DenoiseProcess, decode_state, problems  # noqa: E402
from sharpen.search.scorers import make_scorer  # noqa: E402
from sharpen.train.diffusion import (  # noqa: E402
    DenoiseTrainConfig,
    class_diversity,
    collect_step_pairs,
    dpo_step_loss,
    posterior_mean,
    sample_rewarded,
    sibling_pairs,
    step_log_prob,
    target_problems,
    train_round,
    unguided_samples,
)

STEPS = 8  # reverse steps of the tests' sampler
TARGET = 3
SEARCH = {"budget": 60, "steps": STEPS, "width": 2, "expansions": 3}


@pytest.fixture(scope="module")
def model_dir(tiny_digits_dir):
    return tiny_digits_dir


@pytest.fixture(scope="module")
def model(model_dir):
    return load_digits_model(model_dir)


@pytest.fixture(scope="module")
def train_problems():
    return target_problems("train", 40, TARGET)[:2]


@pytest.fixture(scope="module")
def pairs(model, train_problems):
    return collect_step_pairs(model, train_problems, **SEARCH)


def _unet_bytes(model_dir) -> bytes:
    return (model_dir / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()


def test_target_problems_keep_one_class():
    kept = target_problems("train", 60, TARGET)
    every = problems("train", 60)
    assert kept == [p for p in every if p.meta["target"] == TARGET] and 0 < len(kept) < len(every)
    with pytest.raises(ConfigError, match="target in 0..9"):
        target_problems("train", 10, 10)


def test_pairs_are_siblings_with_the_better_value_chosen(model, train_problems):
    proc = DenoiseProcess(model, steps=STEPS)
    tree = ALGORITHMS["beam"](proc, make_scorer("x0-reward", proc), train_problems[0], 60, seed=5,
                              width=2, expansions=3)
    found = sibling_pairs(tree)
    assert found

    def one_step(n):  # the scored children one reverse step below n
        return [c for c in n.children if tree.nodes[c].score is not None and tree.nodes[c].meta["k"] == n.meta["k"] + 1]

    for parent, w, lose, gap in found:
        values = [tree.nodes[c].score for c in one_step(tree.nodes[parent])]
        assert tree.nodes[w].parent == tree.nodes[lose].parent == parent and parent != 0
        assert tree.nodes[w].score == max(values) and tree.nodes[lose].score == min(values)
        assert gap == pytest.approx(max(values) - min(values)) and gap > 0
        assert tree.nodes[parent].meta["t"] > 0  # the last step is deterministic: no pairs from it
        assert not tree.nodes[w].terminal and not tree.nodes[lose].terminal
    parents = {p for p, *_ in found}
    # every parent with two scored one-step children of different values gives exactly one pair
    assert parents == {n.id for n in tree.nodes if "k" in n.meta and n.meta["t"] > 0
                       and len({tree.nodes[c].score for c in one_step(n)}) > 1}
    assert any(n.terminal and n.score is not None for n in tree.nodes)  # the search reached x_0: those made none
    gaps = sorted(g for *_, g in found)
    mid = gaps[len(gaps) // 2]
    assert [g for *_, g in sibling_pairs(tree, min_gap=mid)] == [g for *_, g in found if g >= mid]
    with pytest.raises(ConfigError, match="min_gap"):
        sibling_pairs(tree, min_gap=1.5)


def test_collected_pairs_are_the_tree_states(model, train_problems, pairs):
    assert len(pairs) > 0 and pairs.nfe > 0 and pairs.trees == 2 and pairs.steps == STEPS
    assert bool((pairs.gap > 0).all()) and bool((pairs.t > 0).all())
    # the same states as the search's tree, rebuilt with the collection's seed
    from sharpen.core.seeding import derive_seed

    proc = DenoiseProcess(model, steps=STEPS)
    p = train_problems[0]
    tree = ALGORITHMS["beam"](proc, make_scorer("x0-reward", proc), p, 60, seed=derive_seed(0, "collect", p.id),
                              width=2, expansions=3)
    first = sibling_pairs(tree)
    for row, (parent, w, lose, _) in enumerate(first):
        assert pairs.x_t[row].equal(decode_state(tree.nodes[parent].meta["x"], (1, 8, 8)))
        assert pairs.x_w[row].equal(decode_state(tree.nodes[w].meta["x"], (1, 8, 8)))
        assert pairs.x_l[row].equal(decode_state(tree.nodes[lose].meta["x"], (1, 8, 8)))
        assert int(pairs.t[row]) == tree.nodes[parent].meta["t"]
    again = collect_step_pairs(model, train_problems, **SEARCH)
    assert again.fingerprint() == pairs.fingerprint()
    with pytest.raises(ConfigError, match="unconditional"):
        collect_step_pairs(model, problems("train", 20), **SEARCH)


def test_step_log_prob_is_the_schedulers_gaussian(model):
    """The mean is what `DDPMScheduler.step` samples around: checked against DDPM eq. 7 written out
    here, and the log-probability against the Gaussian density of that mean and variance."""
    import torch

    s = model.scheduler(STEPS)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 8, 8, generator=g)
    eps = torch.randn(4, 1, 8, 8, generator=g)
    for t in [int(v) for v in s.timesteps]:
        mean = posterior_mean(s, eps, t, x)
        prev_t = t - s.config.num_train_timesteps // STEPS
        a, a_prev = s.alphas_cumprod[t], (s.alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0))
        x0 = ((x - (1 - a) ** 0.5 * eps) / a**0.5).clamp(-1, 1)
        expect = (a_prev**0.5 * (1 - a / a_prev) / (1 - a)) * x0 + ((a / a_prev) ** 0.5 * (1 - a_prev) / (1 - a)) * x
        assert torch.allclose(mean, expect, atol=1e-5), t
        if t == 0:
            assert mean.equal(s.step(eps, t, x).prev_sample)
            continue
        var = (1 - a_prev) / (1 - a) * (1 - a / a_prev)
        sample = s.step(eps, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        lp = step_log_prob(s, eps, torch.full((4,), t), x, sample)
        dens = (-(sample - expect).double().pow(2) / (2 * var) - 0.5 * math.log(2 * math.pi * float(var))).flatten(1).sum(1)
        assert torch.allclose(lp, dens, rtol=1e-4), t
    with pytest.raises(ConfigError, match="timestep 0"):
        step_log_prob(s, eps, torch.zeros(4, dtype=torch.int64), x, x)


def test_dpo_round_lowers_its_loss_and_loads(model_dir, pairs, tmp_path):
    cfg = DenoiseTrainConfig("dpo-step", max_steps=12, batch=16, lr=1e-3, beta=1.0)
    out = train_round(model_dir, pairs, tmp_path / "round", cfg)
    assert out == tmp_path / "round" / "model"
    before = dpo_step_loss(model_dir, model_dir, pairs, beta=1.0)
    after = dpo_step_loss(out, model_dir, pairs, beta=1.0)
    assert before == pytest.approx(math.log(2), abs=1e-9)  # the policy starts as the reference
    assert after < before - 0.02, (before, after)
    loaded = load_digits_model(out)
    assert loaded.weight.equal(load_digits_model(model_dir).weight)  # the classifier copied
    assert (out / "classifier.json").read_bytes() == (model_dir / "classifier.json").read_bytes()
    assert _unet_bytes(out) != _unet_bytes(model_dir)
    summary = json.loads((out / "sharpen_denoise_train.json").read_text())
    assert summary["method"] == "dpo-step" and summary["metrics"]["steps_run"] == 12
    assert not (tmp_path / "round" / "checkpoint.pt").exists()
    x0, rewards, classes, nfe = unguided_samples(loaded, target_problems("test", 30, TARGET)[:2], steps=STEPS)
    assert x0.shape == (2, 1, 8, 8) and nfe == 2 * STEPS and all(0 <= r <= 1 for r in rewards)


def test_killed_round_resumes_to_the_same_weights(model_dir, pairs, tmp_path):
    cfg = DenoiseTrainConfig("dpo-step", max_steps=7, batch=8, lr=1e-3, save_every=3)
    whole = train_round(model_dir, pairs, tmp_path / "whole", cfg)

    def kill(step: int, loss: float) -> None:
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_round(model_dir, pairs, tmp_path / "cut", cfg, on_step=kill)
    assert (tmp_path / "cut" / "checkpoint.pt").exists() and not (tmp_path / "cut" / "model").exists()
    resumed = train_round(model_dir, pairs, tmp_path / "cut", cfg)
    assert _unet_bytes(resumed) == _unet_bytes(whole)
    summary = json.loads((resumed / "sharpen_denoise_train.json").read_text())
    assert summary["metrics"]["resumed_from"] == 3 and summary["metrics"]["steps_run"] == 7
    before = (resumed / "sharpen_denoise_train.json").stat().st_mtime_ns
    assert train_round(model_dir, pairs, tmp_path / "cut", cfg) == resumed  # finished: not trained again
    assert (resumed / "sharpen_denoise_train.json").stat().st_mtime_ns == before
    with pytest.raises(ConfigError, match="lr"):
        train_round(model_dir, pairs, tmp_path / "cut", DenoiseTrainConfig("dpo-step", max_steps=7, batch=8, lr=2e-3,
                                                                           save_every=3))


def test_rwr_spends_the_same_nfe_and_trains(model, model_dir, train_problems, pairs, tmp_path):
    import torch

    samples = sample_rewarded(model, train_problems, pairs.nfe, steps=STEPS, per_tree=4)
    assert len(samples) == pairs.nfe // STEPS and samples.nfe == len(samples) * STEPS
    assert pairs.nfe - STEPS < samples.nfe <= pairs.nfe
    assert bool(((samples.reward >= 0) & (samples.reward <= 1)).all())
    out = train_round(model_dir, samples, tmp_path / "rwr", DenoiseTrainConfig("rwr", max_steps=5, batch=8, tau=0.1))
    assert _unet_bytes(out) != _unet_bytes(model_dir)
    again = train_round(model_dir, samples, tmp_path / "rwr2", DenoiseTrainConfig("rwr", max_steps=5, batch=8, tau=0.1))
    assert _unet_bytes(again) == _unet_bytes(out)  # seeded and deterministic
    with pytest.raises(ConfigError, match="StepPairs"):
        train_round(model_dir, samples, tmp_path / "x", DenoiseTrainConfig("dpo-step"))
    x = torch.zeros(4, 1, 8, 8)
    x[1] += 1.0
    assert class_diversity(x, [0, 0, 1, 1]) == pytest.approx((8.0 + 0.0) / 2)
    assert class_diversity(x[:2], [0, 1]) is None


@pytest.mark.parametrize("field,value,fix", [("beta", 0.0, "beta > 0"), ("lr", -1.0, "learning rate"),
                                             ("max_steps", 0, "integer >= 1"), ("tau", math.inf, "tau > 0"),
                                             ("method", "ppo", "dpo-step, rwr"), ("batch", 2.5, "integer")])
def test_bad_settings_are_one_line_errors(model_dir, pairs, tmp_path, field, value, fix):
    with pytest.raises(ConfigError, match=fix) as e:
        train_round(model_dir, pairs, tmp_path / "bad", DenoiseTrainConfig(**{field: value}))
    assert "\n" not in str(e.value) and field in str(e.value)
