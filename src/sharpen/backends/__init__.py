"""Backends turn prompts into continuations. They know nothing of trees or tasks."""

from sharpen.backends.base import Backend, Completion, SamplingParams

__all__ = ["Backend", "Completion", "SamplingParams", "load_backend"]


def load_backend(model: str, seed: int = 0, **kwargs) -> Backend:
    """`openai:URL#MODEL` -> a client of that OpenAI-compatible server (`backends/openai.py`);
    a model name, HF id or local directory -> the in-process HF backend."""
    from sharpen.backends.openai import OpenAIBackend, is_server_spec

    if is_server_spec(model):
        return OpenAIBackend(model, seed=seed, **kwargs)
    from sharpen.backends.hf import HFBackend
    from sharpen.backends.models import resolve_model

    return HFBackend(resolve_model(model), seed=seed, **kwargs)
