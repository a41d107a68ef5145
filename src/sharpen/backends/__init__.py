"""Backends turn prompts into continuations. They know nothing of trees or tasks.

A denoising model (`digits-ddpm`, `sharpen.backends.diffusion`) is loaded here too: not a text
backend but the denoiser and reward a denoising process (`sharpen.search.denoise`) steps with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sharpen.backends.base import Backend, Completion, SamplingParams

__all__ = ["Backend", "Completion", "SamplingParams", "load_backend", "prepare_model"]


def load_backend(model: str, seed: int = 0, **kwargs: Any) -> Any:
    """`openai:URL#MODEL` -> a client of that OpenAI-compatible server (`backends/openai.py`);
    `digits-ddpm`, a prepared digits-ddpm directory or a user's diffusers pipeline for 1x8x8 images
    -> its `DigitsDiffusion` (the built-in one is prepared on first use, and lends its rewards to a
    pipeline that brings none; `kwargs` do not apply to it: it runs in float32, rows padded to fixed
    chunks, so the batch size never changes a row's floats); a model name, HF id or local directory
    -> the in-process HF backend."""
    from sharpen.backends.models import DIFFUSION_BUILTIN, diffusion_path, is_diffusion
    from sharpen.backends.openai import OpenAIBackend, is_server_spec

    if is_server_spec(model):
        return OpenAIBackend(model, seed=seed, **kwargs)
    if is_diffusion(model):
        from sharpen.backends.diffusion import load_digits_model

        path = prepare_model(model) if model in DIFFUSION_BUILTIN else diffusion_path(model)
        return load_digits_model(path)
    from sharpen.backends.hf import HFBackend
    from sharpen.backends.models import resolve_model

    return HFBackend(resolve_model(model), seed=seed, **kwargs)


def prepare_model(name: str, force: bool = False) -> Path:
    """Prepare a built-in model once into the cache dir and return its directory: a language model
    converted from its GGUF file (`sharpen.backends.models.prepare`), `digits-ddpm` trained from
    scikit-learn's bundled digits (`sharpen.backends.diffusion.prepare_digits`, its default settings).
    A prepared model is returned as it is, unless `force` (prepared again, replacing it atomically)."""
    from sharpen.backends.models import DIFFUSION_BUILTIN, builtin_path, prepare

    if name in DIFFUSION_BUILTIN:
        from sharpen.backends.diffusion import prepare_digits

        return prepare_digits(builtin_path(name), force=force)
    return prepare(name, force=force)
