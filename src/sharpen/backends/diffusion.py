"""A small denoising diffusion model that runs offline on a CPU: `digits-ddpm`.

A DDPM (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", arXiv 2006.11239) with diffusers'
`UNet2DModel` and `DDPMScheduler`, trained to predict the noise on scikit-learn's bundled 8x8 digits
(`sklearn.datasets.load_digits`, 1797 images, no download; pixels 0..16 scaled to [-1, 1]), and
beside it two rewards a search can maximise: a digits classifier (multinomial logistic regression on
the same pixels) whose probability of a target class is the class reward, and a density model of the
same images (PCA to `realism_components` dimensions, a `GaussianMixture` of `realism_mixtures` full-
covariance components on them and the isotropic residual of probabilistic PCA, Tipping & Bishop 1999)
whose log-density of an image, squashed to [0, 1], is the realism reward (no aesthetic model).

`prepare_digits()` trains both once, deterministically (fixed seeds, one CPU thread by default,
`torch.use_deterministic_algorithms`), and writes them atomically under the models cache dir as
`digits-ddpm`:

    model_index.json, unet/, scheduler/   a diffusers `DDPMPipeline` (`DDPMPipeline.from_pretrained` loads it)
    classifier.json                       the class reward: weight (10 x 64) and bias (10) on pixels in [-1, 1]
    realism.json                          the realism reward: the PCA, the mixture, the residual variance
                                          and the squashing's centre and scale
    sharpen_digits.json                   the settings it was trained with, its last loss, the classifier's accuracy

`load_digits_model()` loads it (or a user's own diffusers pipeline for 1x8x8 images, lent these rewards)
as a `DigitsDiffusion`: the denoiser's noise prediction and the classifier in fixed-size
chunks (so a row's output does not depend on which rows share its call), and, when the
preparation has it (one made before the realism reward existed has not), the density model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sharpen.backends.models import DIGITS_SHAPE, PREPARED_FILES, check_pipeline, missing_diffusion_files
from sharpen.core.errors import ConfigError, ModelError
from sharpen.core.io import atomic_dir
from sharpen.core.threads import torch_threads

DIGITS_DDPM = "digits-ddpm"
IMAGE_SHAPE = DIGITS_SHAPE
CLASSES = 10
REALISM_FILE = "realism.json"


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
    realism_components: int = 16  # PCA dimensions of the realism reward's density model
    realism_mixtures: int = 10  # GaussianMixture components on them


def digits_path() -> Path:
    """Where `prepare_digits()` writes `digits-ddpm` by default: the models cache dir."""
    from sharpen.backends.models import cache_dir

    return cache_dir() / "models" / DIGITS_DDPM


def is_digits_prepared(path: str | Path | None = None) -> bool:
    """Whether `path` (default: the cache's `digits-ddpm`) holds a denoiser and the digits rewards."""
    p = Path(path) if path is not None else digits_path()
    return not missing_diffusion_files(p, PREPARED_FILES)


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


def train_realism(x: Any, s: DigitsSettings) -> dict[str, Any]:
    """The realism reward's density model of the images `x` (N, 1, 8, 8): `PCA` to
    `s.realism_components` dimensions, a full-covariance `GaussianMixture` of `s.realism_mixtures`
    components on the projections, and the residual off the PCA subspace as isotropic Gaussian noise
    of variance `PCA.noise_variance_` (probabilistic PCA's, Tipping & Bishop 1999), so
    log p(x) = log GMM(z) + log N(x - x_hat; 0, sigma^2 I). The squashing's centre and scale are the
    mean and standard deviation of the images' own log-densities: reward = sigmoid((log p - centre)
    / scale), 0.5 for an image as likely as the average digit. Deterministic: fixed seed, BLAS on
    `s.threads` threads."""
    import numpy as np
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    xs = x.reshape(len(x), -1).numpy().astype(np.float64)
    d = s.realism_components
    with threadpool_limits(s.threads):
        pca = PCA(n_components=d, svd_solver="full").fit(xs)
        z = pca.transform(xs)
        gmm = GaussianMixture(s.realism_mixtures, covariance_type="full", reg_covar=1e-3,
                              random_state=s.seed).fit(z)
        var = float(pca.noise_variance_)
        resid = xs - pca.inverse_transform(z)
        ll = gmm.score_samples(z) - 0.5 * (resid**2).sum(1) / var - 0.5 * (xs.shape[1] - d) * np.log(2 * np.pi * var)
    return {"components": d, "mean": pca.mean_.tolist(), "basis": pca.components_.tolist(), "noise_variance": var,
            "weights": gmm.weights_.tolist(), "means": gmm.means_.tolist(), "covariances": gmm.covariances_.tolist(),
            "centre": float(ll.mean()), "scale": float(ll.std())}


def build_unet(s: DigitsSettings) -> Any:
    from diffusers import UNet2DModel

    n = len(s.channels)
    return UNet2DModel(
        sample_size=IMAGE_SHAPE[1], in_channels=1, out_channels=1, layers_per_block=s.layers_per_block,
        block_out_channels=tuple(s.channels), down_block_types=("DownBlock2D",) * n,
        up_block_types=("UpBlock2D",) * n, norm_num_groups=s.norm_groups,
    )


@contextmanager
def deterministic_training(threads: int) -> Iterator[None]:
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

    with deterministic_training(s.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        unet = build_unet(s)
        ema = copy.deepcopy(unet).requires_grad_(False)
        scheduler = DDPMScheduler(num_train_timesteps=s.train_timesteps)
        opt = torch.optim.AdamW(unet.parameters(), lr=s.lr)
        # a warm-up of 5% of the steps, and at least two (OneCycleLR divides by the warm-up's length)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s.lr, total_steps=s.steps,
                                                    pct_start=min(0.5, max(0.05, 2.0 / s.steps)))
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
    if not 1 <= s.realism_components < IMAGE_SHAPE[1] * IMAGE_SHAPE[2]:
        raise ModelError(f"realism_components={s.realism_components} is out of range "
                         f"(fix: 1 <= realism_components < {IMAGE_SHAPE[1] * IMAGE_SHAPE[2]})")
    if s.steps < 4 or s.batch < 1 or not s.lr > 0 or not 0 <= s.ema < 1:
        raise ModelError(f"prepare_digits needs steps >= 4, batch >= 1, lr > 0 and 0 <= ema < 1, got steps={s.steps}, "
                         f"batch={s.batch}, lr={s.lr}, ema={s.ema} (fix: e.g. steps=60 for a tiny test model)")
    if s.realism_mixtures < 1:
        raise ModelError(f"realism_mixtures={s.realism_mixtures} is out of range (fix: realism_mixtures >= 1)")
    target = Path(out_dir) if out_dir is not None else digits_path()
    if is_digits_prepared(target) and not force:
        return target
    from diffusers import DDPMPipeline

    x, y = digits_data()
    classifier = train_classifier(x, y, s.seed)
    realism = train_realism(x, s)
    unet, scheduler, loss = train_denoiser(s, x)

    def write(tmp: Path) -> None:
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp)
        (tmp / "classifier.json").write_text(json.dumps(classifier) + "\n")
        (tmp / REALISM_FILE).write_text(json.dumps(realism) + "\n")
        summary = {"model": DIGITS_DDPM, "settings": asdict(s), "final_loss": round(loss, 6),
                   "classifier_heldout_accuracy": classifier["heldout_accuracy"]}
        (tmp / "sharpen_digits.json").write_text(json.dumps(summary, indent=1) + "\n")

    atomic_dir(target, write)
    return target


class DigitsDiffusion:
    """A loaded `digits-ddpm`: the denoiser's noise prediction, its training scheduler's config, the
    reward classifier and, when prepared (`realism_params`, realism.json), the realism reward's
    density model (`realism`). `eps` and `log_probs` run rows in chunks of `chunk`, the last one padded,
    so every call has the same shape and a row's output does not depend on the rows beside it, on
    `threads` torch CPU threads (restored after; None: torch's setting): one thread is the fastest
    for a model this small and gives the same floats whatever the machine's core count."""

    def __init__(self, unet: Any, scheduler_config: dict[str, Any], weight: Any, bias: Any, chunk: int = 16,
                 path: Path | None = None, threads: int | None = 1, realism_params: dict[str, Any] | None = None):
        self.unet = unet.eval().requires_grad_(False)
        self.scheduler_config = dict(scheduler_config)
        self.weight = weight  # (classes, 64)
        self.bias = bias  # (classes,)
        self.chunk = chunk
        self.path = path
        self.name = str(path) if path is not None else DIGITS_DDPM
        self.threads = threads
        self.realism_params = realism_params
        self._density: tuple[Any, ...] | None = None

    @property
    def has_realism(self) -> bool:
        return self.realism_params is not None

    def require_realism(self) -> None:
        """A one-line `ConfigError` naming the fix when the preparation has no density model (one
        made before the realism reward existed)."""
        if self.realism_params is None:
            raise ConfigError(f"{self.path or 'this digits-ddpm'} was prepared without the realism reward's density "
                              f"model (fix: prepare it again: sharpen models prepare {DIGITS_DDPM} --force, or "
                              "sharpen.backends.diffusion.prepare_digits(force=True); or reward=class)")

    def realism(self, x0: Any) -> Any:
        """The realism reward (B,) in [0, 1] of images `x0` (B, 1, 8, 8) in [-1, 1]: the density
        model's log-density, sigmoid((log p - centre) / scale) (see `train_realism`), computed with
        `torch.distributions` in float64. A preparation without the density model: a one-line
        `ConfigError` naming the fix."""
        import math

        import torch

        self.require_realism()
        if self._density is None:
            p = self.realism_params
            t = {k: torch.tensor(p[k], dtype=torch.float64) for k in ("mean", "basis", "weights", "means", "covariances")}
            mixture = torch.distributions.MixtureSameFamily(
                torch.distributions.Categorical(probs=t["weights"]),
                torch.distributions.MultivariateNormal(t["means"], covariance_matrix=t["covariances"]))
            self._density = (t["mean"], t["basis"], mixture, float(p["noise_variance"]), float(p["centre"]),
                             float(p["scale"]))
        mean, basis, mixture, var, centre, scale = self._density
        with torch_threads(self.threads):
            xs = x0.reshape(len(x0), -1).to(torch.float64) - mean
            z = xs @ basis.T
            resid = xs - z @ basis
            dims = xs.shape[1] - basis.shape[0]
            ll = mixture.log_prob(z) - 0.5 * (resid**2).sum(-1) / var - 0.5 * dims * math.log(2 * math.pi * var)
            return torch.sigmoid((ll - centre) / scale)

    def scheduler(self, num_steps: int) -> Any:
        """A fresh `DDPMScheduler` of the training schedule, set to `num_steps` reverse steps."""
        from diffusers import DDPMScheduler

        s = DDPMScheduler.from_config(self.scheduler_config)
        s.set_timesteps(num_steps)
        return s

    def eps(self, x: Any, t: Any) -> Any:
        """The predicted noise for images `x` (B, 1, 8, 8) at integer timesteps `t` (B,)."""
        import torch

        with torch.no_grad():
            out = self._in_chunks(lambda xs, ts: self.unet(xs, ts).sample, x, t)
        return out if out is not None else x.new_zeros((0, *IMAGE_SHAPE))

    def _in_chunks(self, fn: Any, *rows: Any) -> Any:
        """`fn` over `rows` (tensors of equal length) in chunks of `chunk` rows, the last one padded
        (by repeating its last row), on `threads` threads: every call has the same shape, so a row's
        output does not depend on the rows beside it (CPU kernels round a product by its shape)."""
        import torch

        out = []
        with torch_threads(self.threads):
            for i in range(0, len(rows[0]), self.chunk):
                part = [r[i:i + self.chunk] for r in rows]
                n = len(part[0])
                if n < self.chunk:
                    part = [torch.cat([r, r[-1:].expand(self.chunk - n, *r.shape[1:])]) for r in part]
                out.append(fn(*part)[:n])
        return torch.cat(out) if out else None

    def log_probs(self, x0: Any) -> Any:
        """The classifier's log-probabilities (B, 10) of images in [-1, 1], in chunks as `eps` (on
        `threads` threads: a pool of idle threads costs more than this small product)."""
        import torch

        def classify(xs: Any) -> Any:
            return torch.log_softmax(xs.reshape(len(xs), -1).to(self.weight.dtype) @ self.weight.T + self.bias, dim=-1)

        out = self._in_chunks(classify, x0)
        return out if out is not None else x0.new_zeros((0, len(self.bias)), dtype=self.weight.dtype)


def load_digits_model(path: str | Path | None = None, chunk: int = 16, threads: int | None = 1,
                      rewards: str | Path | None = None) -> DigitsDiffusion:
    """The denoiser of the pipeline in `path` (default: the cache's `digits-ddpm`) and the digits
    rewards: from `rewards`, a prepared digits-ddpm directory; by default from `path` itself when it
    holds them (a prepared digits-ddpm, or a model trained from one), else from the built-in
    `digits-ddpm` (prepared on first use). So a user's own diffusers pipeline (a `UNet2DModel` for
    1x8x8 images and a DDPM or DDIM scheduler, `sharpen.backends.models.check_pipeline`) is searched and trained with the
    same rewards as the built-in one. See `DigitsDiffusion` for `chunk` and `threads`."""
    import torch
    from diffusers import UNet2DModel

    p = Path(path) if path is not None else digits_path()
    if path is None and not is_digits_prepared(p):
        raise ModelError(f"{p} holds no prepared digits-ddpm (fix: sharpen models prepare {DIGITS_DDPM}, "
                         "or sharpen.backends.diffusion.prepare_digits())")
    check_pipeline(p)
    if rewards is not None:
        r = Path(rewards)
        if not is_digits_prepared(r):
            raise ModelError(f"{r} holds no digits rewards (no classifier.json) (fix: a prepared {DIGITS_DDPM} dir)")
    else:
        r = p if is_digits_prepared(p) else prepare_digits()
    unet = UNet2DModel.from_pretrained(p / "unet")
    config = json.loads((p / "scheduler" / "scheduler_config.json").read_text())
    clf = json.loads((r / "classifier.json").read_text())
    weight = torch.tensor(clf["weight"], dtype=torch.float64)
    bias = torch.tensor(clf["bias"], dtype=torch.float64)
    realism = json.loads((r / REALISM_FILE).read_text()) if (r / REALISM_FILE).exists() else None
    return DigitsDiffusion(unet, config, weight, bias, chunk=chunk, path=p, threads=threads, realism_params=realism)
