"""Training the `digits-ddpm` denoiser on what search found: step preferences, and reward-weighted
fine-tuning as the baseline.

**Step preferences** (SPO, Liang et al. 2024, "Step-aware Preference Optimization", arXiv 2406.04314).
A search over the denoising process (`sharpen.search.denoise`; e.g. beam search with the `x0-reward`
scorer) expands a state x_t into several candidate next states, siblings drawn from the same
p(x_{t-1} | x_t). `sibling_pairs` takes, for every parent with two or more scored children, the
child of highest value as the winner x_w and the child of lowest value as the loser x_l (SPO's
best/worst of the candidates), when their value gap reaches `min_gap`; a pair is (x_t, t, x_w, x_l).
The value is `node.score` (for `x0-reward`, the reward of the predicted x_0; a terminal's own
reward). Only children one reverse step below their parent make pairs: a parent at the last
timestep (t = 0: a deterministic step, every sibling the same), a child taken further (to x_0 at
once) and the root (its children are x_T draws from the prior, which is not learned) give none.

**Diffusion-DPO step loss** (Wallace et al. 2023, "Diffusion Model Alignment Using Direct Preference
Optimization", arXiv 2311.12908, in SPO's step-wise form). A DDPM reverse step is Gaussian,
p_theta(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I): the mean and variance are the diffusers
`DDPMScheduler`'s own (`step_log_prob`), and with the reference a frozen copy of the denoiser before
training, the loss of a pair is

    -log sigmoid(beta * [(log p_theta(x_w|x_t) - log p_ref(x_w|x_t)) - (log p_theta(x_l|x_t) - log p_ref(x_l|x_t))]).

**Reward-weighted regression** (the baseline; Lee et al. 2023, "Aligning Text-to-Image Models using
Human Feedback", arXiv 2302.12192, the reward-weighted likelihood on whole samples). Unguided x_0
samples of the same total sampling cost in denoiser forwards (NFE) as the search that made the
pairs (`sample_rewarded`), each weighted by softmax(r / tau) (scaled to mean 1), and the DDPM
denoising loss (Ho et al. 2020, arXiv 2006.11239, eq. 14) weighted by it.

**One target class per round.** The denoiser is unconditional: nothing tells it which digit a
problem asks for. The reward is the classifier's probability of the problem's target class, so
pairs from problems of different targets pull the one sampler toward different digits and cancel
out: averaged over uniform targets, any unconditional sampler's expected reward is 1/10 (the class
probabilities sum to one). A round therefore trains one target class (`target_problems`: the split's
problems whose target is that class; mixed targets are refused), which turns the unconditional
sampler into a sampler of that digit, as DDPO/SPO fine-tune one reward (the specialised model is
evaluated on held-out problems of the same target).

**Output and resuming.** `train_round(base_dir, data, out, cfg)` writes `out/model/`, a model
directory `load_digits_model` loads (the base's scheduler, classifier and settings copied, the new
UNet weights, `sharpen_denoise_train.json` with the round's config and metrics), atomically.
`out/round.json` records the config, the data's fingerprint and the base weights' hash; a rerun with
anything different is a `ConfigError`. Every `save_every` optimizer steps `out/checkpoint.pt` holds
the weights, the AdamW state, the batch generator's state and the losses (written atomically), so a
killed round rerun resumes from it and ends with the same weights as an uninterrupted one; a rerun
of a finished round returns `out/model/` untouched. Training is seeded and deterministic on the CPU
(a fixed torch thread count, deterministic algorithms).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sharpen.core.errors import ConfigError, TaskError
from sharpen.core.io import atomic_dir, atomic_write_bytes, atomic_write_json, refuse_changed_config
from sharpen.core.seeding import derive_seed
from sharpen.core.tasks import Problem
from sharpen.core.tree import Tree

METHODS = ("dpo-step", "rwr")
SHAPE = (1, 8, 8)
SUMMARY = "sharpen_denoise_train.json"


# -- data ---------------------------------------------------------------------------------------
@dataclass
class StepPairs:
    """Step preference pairs: row i is the state `x_t[i]` at timestep `t[i]` (of a `steps`-step
    sampler), the preferred next state `x_w[i]`, the other `x_l[i]` and their value gap `gap[i]`;
    `nfe` the denoiser forwards the search that found them spent, `trees` how many searches."""

    x_t: Any
    t: Any
    x_w: Any
    x_l: Any
    gap: Any
    steps: int
    nfe: int = 0
    trees: int = 0

    def __len__(self) -> int:
        return len(self.t)

    def fingerprint(self) -> str:
        return _fingerprint("dpo-step", self.steps, self.x_t, self.t, self.x_w, self.x_l)


@dataclass
class RewardSamples:
    """Whole samples: x_0 `x0[i]` of reward `reward[i]` (the target class's probability), drawn with
    `nfe` denoiser forwards by a `steps`-step unguided sampler."""

    x0: Any
    reward: Any
    steps: int
    nfe: int = 0

    def __len__(self) -> int:
        return len(self.reward)

    def fingerprint(self) -> str:
        return _fingerprint("rwr", self.steps, self.x0, self.reward)


def _fingerprint(kind: str, steps: int, *tensors: Any) -> str:
    h = hashlib.sha256(f"{kind}:{steps}".encode())
    for t in tensors:
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def target_problems(split: str, n: int, target: int, seed: int = 0) -> list[Problem]:
    """The problems among `sharpen.search.denoise.problems(split, n, seed)` whose target is `target`
    (about n / 10 of them): the problems of a one-class round (see the module)."""
    from sharpen.search.denoise import problems

    if not 0 <= int(target) <= 9:
        raise ConfigError(f"target={target} is not a digit class (fix: a target in 0..9)")
    if n < 1:
        raise ConfigError(f"n={n} problems (fix: n >= 1)")
    return [p for p in problems(split, n, seed) if int(p.meta["target"]) == int(target)]


def _one_target(problems: Sequence[Problem]) -> int:
    if not problems:
        raise ConfigError("no problems (fix: more problems, e.g. a larger n for target_problems)")
    targets = sorted({int(p.answer) for p in problems})
    if len(targets) > 1:
        raise ConfigError(f"problems of targets {targets}: the denoiser is unconditional, so a round trains one "
                          "target class (fix: problems of one target, e.g. target_problems(split, n, target))")
    return targets[0]


def sibling_pairs(tree: Tree, min_gap: float = 0.0) -> list[tuple[int, int, int, float]]:
    """(parent, winner, loser, value gap) of every inner, non-root parent at a timestep above 0 with
    two or more scored children one reverse step below it (`meta["k"]` one more) whose best and
    worst values differ by more than 0 and by at least `min_gap` (node ids; the value is
    `node.score`, a terminal's reward when unscored). A child further down (the process takes a draw
    that lands on the last timestep on to x_0 at once) is no sample of the one-step Gaussian, and
    gives no pair."""
    if not 0.0 <= min_gap <= 1.0:
        raise ConfigError(f"min_gap={min_gap} (fix: a value gap in [0, 1])")
    out = []
    for parent in tree.nodes:
        if "k" not in parent.meta or parent.terminal or int(parent.meta.get("t", 0)) <= 0 or len(parent.children) < 2:
            continue
        step = int(parent.meta["k"]) + 1
        scored = [(v, c) for c in parent.children
                  if tree.nodes[c].meta.get("k") == step and (v := _value(tree, c)) is not None]
        if len(scored) < 2:
            continue
        best = max(scored, key=lambda s: s[0])  # the first of equal values: the sibling order
        worst = min(scored, key=lambda s: s[0])
        gap = best[0] - worst[0]
        if gap > 0 and gap >= min_gap:
            out.append((parent.id, best[1], worst[1], gap))
    return out


def _value(tree: Tree, node_id: int) -> float | None:
    node = tree.nodes[node_id]
    if node.score is not None:
        return float(node.score)
    return float(node.meta["reward"]) if node.terminal and "reward" in node.meta else None


def collect_step_pairs(model: Any, problems: Sequence[Problem], budget: int, *, algo: str = "beam",
                       scorer: str = "x0-reward", steps: int = 50, seed: int = 0, min_gap: float = 0.0,
                       **options: Any) -> StepPairs:
    """Search each problem (one target class) with `algo` and `scorer` under `budget` NFE, checked as
    every search is (`SearchSpec.checked`), the tree seeded by (seed, "collect", problem id), and take
    every tree's `sibling_pairs`."""
    from sharpen.search.denoise import DenoiseProcess
    from sharpen.search.spec import SearchSpec

    _one_target(problems)
    spec = SearchSpec.checked(algo, scorer, budget, options, collect=True, drop_unused_scorer=False)
    proc = DenoiseProcess(model, steps=steps)
    value = spec.make_scorer(proc)
    trees = [spec.tree(proc, value, p, derive_seed(seed, "collect", p.id)) for p in problems]
    return tree_step_pairs(proc, trees, min_gap)


def tree_step_pairs(proc: Any, trees: Sequence[Tree], min_gap: float = 0.0) -> StepPairs:
    """Every tree's `sibling_pairs` as `StepPairs`, the states decoded by `proc` (the `DenoiseProcess`
    the trees were searched on, which maps a node's reverse steps to its timestep); `nfe` is what the
    trees recorded. The trees must keep their inner states (not `strip_states`'d)."""
    import torch

    from sharpen.search.denoise import decode_state

    rows: list[tuple[Any, int, Any, Any, float]] = []
    nfe = 0
    for tree in trees:
        nfe += int(tree.usage.get("nfe", 0))
        for parent, w, lose, gap in sibling_pairs(tree, min_gap):
            x, k = proc.state(tree, parent)
            rows.append((x, proc.timesteps[k], decode_state(tree.nodes[w].meta["x"], SHAPE),
                         decode_state(tree.nodes[lose].meta["x"], SHAPE), gap))
    empty = torch.zeros((0, *SHAPE))
    return StepPairs(
        x_t=torch.stack([r[0] for r in rows]) if rows else empty,
        t=torch.tensor([r[1] for r in rows], dtype=torch.int64),
        x_w=torch.stack([r[2] for r in rows]) if rows else empty,
        x_l=torch.stack([r[3] for r in rows]) if rows else empty,
        gap=torch.tensor([r[4] for r in rows], dtype=torch.float32),
        steps=proc.steps, nfe=nfe, trees=len(trees))


def unguided_samples(model: Any, problems: Sequence[Problem], k: int = 1, *, steps: int = 50, seed: int = 0,
                     stream: str = "eval") -> tuple[Any, list[float], list[int], int]:
    """k unguided DDPM samples per problem (`DenoiseProcess.complete` from the root, the tree seeded
    by (seed, stream, problem id), so every model gets the same noise): x_0 (N, 1, 8, 8), their
    rewards, classes, and the NFE spent."""
    import torch

    from sharpen.search.denoise import DenoiseProcess, decode_state

    if k < 1:
        raise ConfigError(f"k={k} samples per problem (fix: k >= 1)")
    proc = DenoiseProcess(model, steps=steps)
    xs, rewards, classes = [], [], []
    for p in problems:
        tree = proc.new_tree(p, seed=derive_seed(seed, stream, p.id))
        for n in proc.complete(tree, [0], k)[0]:
            node = tree.nodes[n]
            xs.append(decode_state(node.meta["x"], SHAPE))
            rewards.append(float(node.meta["reward"]))
            classes.append(int(node.answer))
    x0 = torch.stack(xs) if xs else torch.zeros((0, *SHAPE))
    return x0, rewards, classes, int(proc.meter.total.nfe)


def sample_rewarded(model: Any, problems: Sequence[Problem], nfe: int, *, steps: int = 50, seed: int = 0,
                    per_tree: int = 16) -> RewardSamples:
    """Unguided samples of the problems' one target class costing `nfe` denoiser forwards in all
    (nfe // steps samples: the same sampling cost as a search of `nfe`), `per_tree` at a time,
    cycling over the problems; each with its reward."""
    import torch

    _one_target(problems)
    if nfe < steps:
        raise ConfigError(f"nfe={nfe} buys no sample of {steps} steps (fix: nfe >= steps)")
    if per_tree < 1:
        raise ConfigError(f"per_tree={per_tree} (fix: per_tree >= 1)")
    n = nfe // steps
    xs, rewards, spent, i = [], [], 0, 0
    while len(rewards) < n:
        p = problems[i % len(problems)]
        k = min(per_tree, n - len(rewards))
        x0, r, _, used = unguided_samples(model, [p], k, steps=steps, seed=derive_seed(seed, i), stream="rwr")
        xs.append(x0)
        rewards += r
        spent += used
        i += 1
    return RewardSamples(torch.cat(xs), torch.tensor(rewards, dtype=torch.float32), steps, spent)


def class_diversity(x0: Any, classes: Sequence[int]) -> float | None:
    """Mean pairwise L2 distance between the x_0 of each class (over the flattened pixels),
    averaged over the classes that have two or more samples; None when none has."""
    import torch

    per = []
    labels = torch.as_tensor(list(classes))
    for c in labels.unique().tolist():
        rows = x0[labels == c].reshape(int((labels == c).sum()), -1).double()
        if len(rows) >= 2:
            per.append(float(torch.pdist(rows).mean()))
    return sum(per) / len(per) if per else None


# -- the step's likelihood ------------------------------------------------------------------------
def posterior_mean(scheduler: Any, eps: Any, t: int, x_t: Any) -> Any:
    """mu(x_t, t) of the reverse step, exactly as `DDPMScheduler.step` computes it (its x_0 from the
    noise prediction, clipped per its config, and its posterior coefficients, DDPM eq. 7): `step`'s
    sample less the noise term it adds, which is `_get_variance(t) ** 0.5` times a standard normal
    drawn from a generator this function seeds and draws again. Differentiable in `eps`."""
    import torch

    g = torch.Generator(device=eps.device).manual_seed(0)
    prev = scheduler.step(eps, int(t), x_t, generator=g).prev_sample
    if int(t) <= 0:
        return prev  # the last step adds no noise
    z = torch.randn(eps.shape, generator=torch.Generator(device=eps.device).manual_seed(0), dtype=eps.dtype,
                    device=eps.device)
    return prev - step_std(scheduler, t) * z


def step_std(scheduler: Any, t: int) -> float:
    """sigma_t of the reverse step from timestep t: `DDPMScheduler._get_variance(t) ** 0.5`."""
    vt = scheduler.config.variance_type
    if vt not in ("fixed_small", "fixed_large"):
        raise ConfigError(f"the scheduler's variance_type {vt!r} is not supported (fix: fixed_small or fixed_large)")
    return float(scheduler._get_variance(int(t))) ** 0.5


def step_log_prob(scheduler: Any, eps: Any, t: Any, x_t: Any, *x_prev: Any) -> Any:
    """log p(x_prev | x_t) (B,) of a DDPM reverse step under a noise prediction `eps` (B, 1, 8, 8) at
    timesteps `t` (B,) of `scheduler` (set to the sampler's steps): the Gaussian around
    `posterior_mean` with variance `step_std ** 2`, summed over pixels (float64). Several `x_prev`
    give a tuple, one each, sharing the means. Timestep 0 (a deterministic step) is refused."""
    import torch

    outs = [torch.zeros(len(x_t), dtype=torch.float64) for _ in x_prev]
    ts = [int(v) for v in t.tolist()]
    if any(v <= 0 for v in ts):
        raise ConfigError("a pair from timestep 0, whose step is deterministic (fix: pairs from timesteps above 0)")
    for tv in dict.fromkeys(ts):
        rows = torch.tensor([i for i, v in enumerate(ts) if v == tv])
        dist = torch.distributions.Normal(posterior_mean(scheduler, eps[rows], tv, x_t[rows]).double(),
                                          step_std(scheduler, tv))
        for j, x in enumerate(x_prev):
            outs[j] = outs[j].index_put((rows,), dist.log_prob(x[rows].double()).flatten(1).sum(1))
    return outs[0] if len(outs) == 1 else tuple(outs)


def dpo_logits(scheduler: Any, eps: Any, ref_w: Any, ref_l: Any, pairs: StepPairs, rows: Any, beta: float) -> Any:
    """beta * [(log p_theta(x_w) - log p_ref(x_w)) - (log p_theta(x_l) - log p_ref(x_l))] of the pairs
    `rows`, given the policy's noise predictions `eps` at their states and the reference's log-probs."""
    lw, ll = step_log_prob(scheduler, eps, pairs.t[rows], pairs.x_t[rows], pairs.x_w[rows], pairs.x_l[rows])
    return beta * ((lw - ref_w[rows]) - (ll - ref_l[rows]))


def _eps_batches(unet: Any, x: Any, t: Any, batch: int) -> Any:
    import torch

    with torch.no_grad():
        return torch.cat([unet(x[i:i + batch], t[i:i + batch]).sample for i in range(0, len(x), batch)])


def reference_log_probs(unet: Any, scheduler: Any, pairs: StepPairs, batch: int = 64) -> tuple[Any, Any]:
    """log p_ref(x_w | x_t) and log p_ref(x_l | x_t) of every pair under `unet` (no gradient)."""
    import torch

    if not len(pairs):
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    eps = _eps_batches(unet, pairs.x_t, pairs.t, batch)
    return step_log_prob(scheduler, eps, pairs.t, pairs.x_t, pairs.x_w, pairs.x_l)


def dpo_step_loss(model_dir: str | Path, ref_dir: str | Path, pairs: StepPairs, beta: float, batch: int = 64) -> float:
    """The mean Diffusion-DPO step loss of the denoiser in `model_dir` on `pairs`, against the
    reference denoiser in `ref_dir` (log 2 when they are the same weights)."""
    import torch
    import torch.nn.functional as F
    from diffusers import UNet2DModel

    policy = UNet2DModel.from_pretrained(Path(model_dir) / "unet").eval()
    ref = UNet2DModel.from_pretrained(Path(ref_dir) / "unet").eval()
    scheduler = _scheduler(Path(ref_dir), pairs.steps)
    ref_w, ref_l = reference_log_probs(ref, scheduler, pairs, batch)
    eps = _eps_batches(policy, pairs.x_t, pairs.t, batch)
    with torch.no_grad():
        logits = dpo_logits(scheduler, eps, ref_w, ref_l, pairs, torch.arange(len(pairs)), beta)
    return float(-F.logsigmoid(logits).mean())


def _scheduler(model_dir: Path, steps: int) -> Any:
    from diffusers import DDPMScheduler

    s = DDPMScheduler.from_pretrained(model_dir / "scheduler")
    s.set_timesteps(steps)
    return s


# -- a training round ---------------------------------------------------------------------------
@dataclass(frozen=True)
class DenoiseTrainConfig:
    """One round of training the denoiser: `dpo-step` on `StepPairs` or `rwr` on `RewardSamples`."""

    method: str = "dpo-step"
    max_steps: int = 200  # optimizer steps
    batch: int = 64  # pairs (dpo-step) or samples (rwr) per step
    lr: float = 1e-4  # AdamW learning rate (constant)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # gradient clipping; 0 = none
    beta: float = 1.0  # dpo-step: the DPO temperature on the log-likelihood ratios
    tau: float = 0.1  # rwr: weights softmax(reward / tau)
    seed: int = 0
    threads: int = 1  # torch CPU threads: a fixed count keeps the weights reproducible
    save_every: int = 50  # optimizer steps between checkpoints

    def check(self) -> DenoiseTrainConfig:
        """A one-line `ConfigError` for each value out of range."""
        def bad(name: str, fix: str) -> ConfigError:
            return ConfigError(f"denoiser training: {name}={getattr(self, name)!r} (fix: {fix})")

        if self.method not in METHODS:
            raise bad("method", f"one of {', '.join(METHODS)}")
        for name in ("max_steps", "batch", "threads", "save_every", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "seed" else 1):
                raise bad(name, "an integer >= 0" if name == "seed" else "an integer >= 1")
        for name in ("lr", "weight_decay", "max_grad_norm", "beta", "tau"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or math.isnan(v):
                raise bad(name, "a number")
        if not (0 < self.lr <= 1):
            raise bad("lr", "a learning rate in (0, 1]")
        if not (0 <= self.weight_decay < 1):
            raise bad("weight_decay", "a value in [0, 1)")
        if not (0 <= self.max_grad_norm < math.inf):
            raise bad("max_grad_norm", "a norm >= 0 (0: no clipping)")
        if not (0 < self.beta < math.inf):
            raise bad("beta", "beta > 0")
        if not (0 < self.tau < math.inf):
            raise bad("tau", "tau > 0")
        return self


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _unet_file(model_dir: Path) -> Path:
    found = sorted((model_dir / "unet").glob("diffusion_pytorch_model*"))
    if not found:
        raise TaskError(f"{model_dir} has no UNet weights (fix: a prepared digits-ddpm directory)")
    return found[0]


def train_round(base_dir: str | Path, data: StepPairs | RewardSamples, out: str | Path, cfg: DenoiseTrainConfig,
                on_step: Callable[[int, float], None] | None = None) -> Path:
    """Train the denoiser of `base_dir` (a prepared digits-ddpm or a user's diffusers pipeline,
    `check_pipeline`) on `data` by `cfg.method`; returns
    `out/model` (see the module for the layout, resuming and reruns). `on_step(step, loss)` is called
    after each optimizer step (after its checkpoint, when one is due)."""
    from sharpen.backends.diffusion import deterministic_training
    from sharpen.backends.models import check_pipeline

    cfg.check()
    base, out = Path(base_dir), Path(out)
    check_pipeline(base)  # a prepared digits-ddpm or a user's own pipeline (the rewards come with the model's loading)
    want = StepPairs if cfg.method == "dpo-step" else RewardSamples
    if not isinstance(data, want):
        raise ConfigError(f"method {cfg.method} trains on {want.__name__} (fix: the data that method takes)")
    if len(data) == 0:
        raise TaskError("no training data (fix: more search, or a smaller min_gap)")
    record = {"config": asdict(cfg), "data": data.fingerprint(), "rows": len(data),
              "base_unet": _hash_file(_unet_file(base))}
    if (out / "round.json").exists():
        refuse_changed_config(out, json.loads((out / "round.json").read_text()), record,
                              fix="the round's settings and data, or another out dir")
        if (out / "model" / SUMMARY).exists():
            return out / "model"
    else:
        atomic_write_json(out / "round.json", record)

    t0 = time.perf_counter()
    with deterministic_training(cfg.threads):
        unet, losses, resumed = _fit(base, data, out, cfg, on_step)
    metrics: dict[str, Any] = {"rows": len(data), "data_nfe": data.nfe, "steps_run": len(losses),
                               "loss_first": round(losses[0], 6), "loss_last": round(losses[-1], 6),
                               "loss_last10_mean": round(sum(losses[-10:]) / len(losses[-10:]), 6),
                               "resumed_from": resumed, "wall_seconds": round(time.perf_counter() - t0, 2)}

    def write(tmp: Path) -> None:
        for item in base.iterdir():
            if item.name in ("unet", SUMMARY):
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        unet.save_pretrained(tmp / "unet")
        summary = {"method": cfg.method, "base": str(base), **record, "metrics": metrics}
        (tmp / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")

    model = atomic_dir(out / "model", write)
    (out / "checkpoint.pt").unlink(missing_ok=True)
    return model


def _fit(base: Path, data: StepPairs | RewardSamples, out: Path, cfg: DenoiseTrainConfig,
         on_step: Callable[[int, float], None] | None) -> tuple[Any, list[float], int | None]:
    """The optimisation loop of `train_round`, resuming from `out/checkpoint.pt` when it exists."""
    import torch
    import torch.nn.functional as F
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(base / "unet")
    scheduler = _scheduler(base, data.steps)
    if isinstance(data, StepPairs):
        ref_w, ref_l = reference_log_probs(unet.eval(), scheduler, data, cfg.batch)
    else:
        weights = torch.softmax(data.reward.double() / cfg.tau, 0) * len(data)  # mean 1
    unet.train().requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, "denoise-train"))
    losses: list[float] = []
    start, resumed = 0, None
    ckpt = out / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        unet.load_state_dict(state["unet"])
        opt.load_state_dict(state["opt"])
        g.set_state(state["generator"])
        losses, start = list(state["losses"]), int(state["step"])
        resumed = start
    n = len(data)
    for step in range(start, cfg.max_steps):
        idx = torch.randint(0, n, (cfg.batch,), generator=g)
        if isinstance(data, StepPairs):
            eps = unet(data.x_t[idx], data.t[idx]).sample
            loss = -F.logsigmoid(dpo_logits(scheduler, eps, ref_w, ref_l, data, idx, cfg.beta)).mean()
        else:
            t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.batch,), generator=g)
            noise = torch.randn((cfg.batch, *SHAPE), generator=g)
            pred = unet(scheduler.add_noise(data.x0[idx], noise, t), t).sample
            per_row = F.mse_loss(pred, noise, reduction="none").flatten(1).mean(1)
            loss = (weights[idx].to(per_row.dtype) * per_row).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.max_grad_norm)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % cfg.save_every == 0 and step + 1 < cfg.max_steps:
            buf = io.BytesIO()
            torch.save({"unet": unet.state_dict(), "opt": opt.state_dict(), "generator": g.get_state(),
                        "losses": losses, "step": step + 1}, buf)
            atomic_write_bytes(ckpt, buf.getvalue())
        if on_step is not None:
            on_step(step + 1, losses[-1])
    return unet.eval().requires_grad_(False), losses, resumed
