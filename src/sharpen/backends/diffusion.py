"""A small denoising diffusion model that runs offline on a CPU: `digits-ddpm`.

A DDPM (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", arXiv 2006.11239) with diffusers'
`UNet2DModel` and `DDPMScheduler`, trained to predict the noise on scikit-learn's bundled 8x8 digits
(`sklearn.datasets.load_digits`, 1797 images, no download; pixels 0..16 scaled to [-1, 1]), and
beside it a digits classifier (multinomial logistic regression on the same pixels) whose probability
of a target class is the reward a search maximises.

`prepare_digits()` trains both once, deterministically (fixed seeds, one CPU thread by default,
`torch.use_deterministic_algorithms`), and writes them atomically under the models cache dir as
`digits-ddpm`:

    model_index.json, unet/, scheduler/   a diffusers `DDPMPipeline` (`DDPMPipeline.from_pretrained` loads it)
    classifier.json                       the reward: weight (10 x 64) and bias (10) on pixels in [-1, 1]
    sharpen_digits.json                   the settings it was trained with, its last loss, the classifier's accuracy

`load_digits_model()` loads it as a `DigitsDiffusion`: the denoiser's noise prediction in fixed-size
chunks (so a row's output does not depend on which rows share its call) and the classifier.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sharpen.core.errors import ModelError
from sharpen.core.io import atomic_dir
from sharpen.core.threads import torch_threads

DIGITS_DDPM = "digits-ddpm"
IMAGE_SHAPE = (1, 8, 8)
CLASSES = 10


@dataclass(frozen=True)
class DigitsSettings:
    """How `prepare_digits` trains the denoiser (recorded in sharpen_digits.json)."""

    steps: int = 1500  # optimizer steps
    batch: int = 64
    lr: float = 3e-3  # peak of a one-cycle schedule
    ema: float = 0.995  # decay of the weights' exponential moving average (the saved weights)
    channels: tuple[int, ...] = (16, 32)  # UNet block widths; each block but the last halves 8x8
    layers_per_block: int = 1
    norm_groups: int = 8
    train_timesteps: int = 1000  # the DDPM's T
    seed: int = 0
    threads: int = 1  # torch CPU threads while training: a fixed count keeps the weights reproducible


def digits_path() -> Path:
    """Where `prepare_digits()` writes `digits-ddpm` by default: the models cache dir."""
    from sharpen.backends.models import cache_dir

    return cache_dir() / "models" / DIGITS_DDPM


def is_digits_prepared(path: str | Path | None = None) -> bool:
    p = Path(path) if path is not None else digits_path()
    return (p / "model_index.json").exists() and (p / "classifier.json").exists()


def digits_data() -> tuple[Any, Any]:
    """The bundled digits as float32 images (N, 1, 8, 8) in [-1, 1] and their int64 labels."""
    import torch
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    return x, torch.tensor(d.target, dtype=torch.int64)


def train_classifier(x: Any, y: Any, seed: int = 0) -> dict[str, Any]:
    """Multinomial logistic regression on the flattened pixels (deterministic: lbfgs). Its accuracy
    is measured on the odd-indexed images with a fit on the even ones; the returned weights are fit
    on all of them."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    xs, ys = x.reshape(len(x), -1).numpy().astype(np.float64), y.numpy()

    def fit(a, b):
        return LogisticRegression(max_iter=5000, random_state=seed).fit(a, b)

    heldout = float(fit(xs[::2], ys[::2]).score(xs[1::2], ys[1::2]))
    clf = fit(xs, ys)
    return {"classes": CLASSES, "weight": clf.coef_.tolist(), "bias": clf.intercept_.tolist(),
            "heldout_accuracy": round(heldout, 4)}


def build_unet(s: DigitsSettings) -> Any:
    from diffusers import UNet2DModel

    n = len(s.channels)
    return UNet2DModel(
        sample_size=IMAGE_SHAPE[1], in_channels=1, out_channels=1, layers_per_block=s.layers_per_block,
        block_out_channels=tuple(s.channels), down_block_types=("DownBlock2D",) * n,
        up_block_types=("UpBlock2D",) * n, norm_num_groups=s.norm_groups,
    )


@contextmanager
def _deterministic(threads: int) -> Iterator[None]:
    """Within: `threads` torch threads and deterministic algorithms; both restored on exit."""
    import torch

    saved = torch.are_deterministic_algorithms_enabled()
    with torch_threads(threads):
        try:
            torch.use_deterministic_algorithms(True)
        except RuntimeError:  # a build that refuses: the fixed seeds and thread count still hold
            pass
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(saved)


def train_denoiser(s: DigitsSettings, x: Any) -> tuple[Any, Any, float]:
    """The DDPM objective (predict the noise added at a uniform timestep, Ho et al. 2020, eq. 14) on
    `x`; returns the EMA of the weights (as a UNet), the scheduler and the last smoothed loss."""
    import copy

    import torch
    from diffusers import DDPMScheduler

    with _deterministic(s.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        unet = build_unet(s)
        ema = copy.deepcopy(unet).requires_grad_(False)
        scheduler = DDPMScheduler(num_train_timesteps=s.train_timesteps)
        opt = torch.optim.AdamW(unet.parameters(), lr=s.lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s.lr, total_steps=s.steps, pct_start=0.05)
        g = torch.Generator().manual_seed(s.seed)
        smooth = 0.0
        for step in range(s.steps):
            idx = torch.randint(0, len(x), (s.batch,), generator=g)
            t = torch.randint(0, s.train_timesteps, (s.batch,), generator=g)
            noise = torch.randn((s.batch, *IMAGE_SHAPE), generator=g)
            pred = unet(scheduler.add_noise(x[idx], noise, t), t).sample
            loss = torch.nn.functional.mse_loss(pred, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            decay = min(s.ema, (1 + step) / (10 + step))  # a short warm-up of the average
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), unet.parameters(), strict=True):
                    pe.mul_(decay).add_(p, alpha=1 - decay)
            smooth = loss.item() if step == 0 else 0.98 * smooth + 0.02 * loss.item()
    return ema, scheduler, smooth


def prepare_digits(out_dir: str | Path | None = None, *, force: bool = False, **settings: Any) -> Path:
    """Train `digits-ddpm` (the denoiser and the reward classifier) into `out_dir` (default: the
    models cache dir), once: an existing preparation is returned unless `force`. `settings` are
    `DigitsSettings` fields (e.g. `steps=20, channels=(8, 16)` for a tiny test model). The directory
    is written atomically: it appears complete or not at all."""
    unknown = sorted(set(settings) - set(DigitsSettings.__dataclass_fields__))
    if unknown:
        raise ModelError(f"prepare_digits has no setting {unknown[0]!r} "
                         f"(fix: one of {', '.join(DigitsSettings.__dataclass_fields__)})")
    if "channels" in settings:
        settings["channels"] = tuple(int(c) for c in settings["channels"])
    s = DigitsSettings(**settings)
    target = Path(out_dir) if out_dir is not None else digits_path()
    if is_digits_prepared(target) and not force:
        return target
    from diffusers import DDPMPipeline

    x, y = digits_data()
    classifier = train_classifier(x, y, s.seed)
    unet, scheduler, loss = train_denoiser(s, x)

    def write(tmp: Path) -> None:
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp)
        (tmp / "classifier.json").write_text(json.dumps(classifier) + "\n")
        summary = {"model": DIGITS_DDPM, "settings": asdict(s), "final_loss": round(loss, 6),
                   "classifier_heldout_accuracy": classifier["heldout_accuracy"]}
        (tmp / "sharpen_digits.json").write_text(json.dumps(summary, indent=1) + "\n")

    atomic_dir(target, write)
    return target


class DigitsDiffusion:
    """A loaded `digits-ddpm`: the denoiser's noise prediction, its training scheduler's config and
    the reward classifier. `eps` runs rows in chunks of `chunk`, the last one padded, so every
    forward has the same shape and a row's output does not depend on the rows beside it, on
    `threads` torch CPU threads (restored after; None: torch's setting): one thread is the fastest
    for a model this small and gives the same floats whatever the machine's core count."""

    def __init__(self, unet: Any, scheduler_config: dict[str, Any], weight: Any, bias: Any, chunk: int = 16,
                 path: Path | None = None, threads: int | None = 1):
        self.unet = unet.eval().requires_grad_(False)
        self.scheduler_config = dict(scheduler_config)
        self.weight = weight  # (classes, 64)
        self.bias = bias  # (classes,)
        self.chunk = chunk
        self.path = path
        self.threads = threads

    def scheduler(self, num_steps: int) -> Any:
        """A fresh `DDPMScheduler` of the training schedule, set to `num_steps` reverse steps."""
        from diffusers import DDPMScheduler

        s = DDPMScheduler.from_config(self.scheduler_config)
        s.set_timesteps(num_steps)
        return s

    def eps(self, x: Any, t: Any) -> Any:
        """The predicted noise for images `x` (B, 1, 8, 8) at integer timesteps `t` (B,)."""
        import torch

        with torch_threads(self.threads), torch.no_grad():
            out = [self._chunk(x[i:i + self.chunk], t[i:i + self.chunk]) for i in range(0, len(x), self.chunk)]
        return torch.cat(out) if out else x.new_zeros((0, *IMAGE_SHAPE))

    def _chunk(self, xs: Any, ts: Any) -> Any:
        import torch

        pad = self.chunk - len(xs)
        if pad:
            xs = torch.cat([xs, xs.new_zeros((pad, *xs.shape[1:]))])
            ts = torch.cat([ts, ts[-1:].expand(pad)])
        return self.unet(xs, ts).sample[: self.chunk - pad]

    def log_probs(self, x0: Any) -> Any:
        """The classifier's log-probabilities (B, 10) of images in [-1, 1]."""
        import torch

        logits = x0.reshape(len(x0), -1).to(self.weight.dtype) @ self.weight.T + self.bias
        return torch.log_softmax(logits, dim=-1)


def load_digits_model(path: str | Path | None = None, chunk: int = 16, threads: int | None = 1) -> DigitsDiffusion:
    """The prepared `digits-ddpm` in `path` (default: the models cache dir); see `DigitsDiffusion`
    for `chunk` and `threads`."""
    import torch
    from diffusers import UNet2DModel

    p = Path(path) if path is not None else digits_path()
    if not is_digits_prepared(p):
        raise ModelError(f"{p} holds no prepared digits-ddpm (fix: sharpen models prepare {DIGITS_DDPM}, "
                         "or sharpen.backends.diffusion.prepare_digits())")
    unet = UNet2DModel.from_pretrained(p / "unet")
    config = json.loads((p / "scheduler" / "scheduler_config.json").read_text())
    clf = json.loads((p / "classifier.json").read_text())
    weight = torch.tensor(clf["weight"], dtype=torch.float64)
    bias = torch.tensor(clf["bias"], dtype=torch.float64)
    return DigitsDiffusion(unet, config, weight, bias, chunk=chunk, path=p, threads=threads)
