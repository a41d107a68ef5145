"""What a search is built from: a backend, a task and the language-model process over them."""

from __future__ import annotations

from typing import Any

from sharpen.search.process import SearchSettings


def load_model(model: str = "smollm2-135m", seed: int = 0, **backend_options: Any):
    """A backend for a built-in model name, an HF id or a local model directory."""
    from sharpen.backends import load_backend

    return load_backend(model, seed=seed, **backend_options)


def load_task(spec: str = "gym:chain_sum", **task_args: Any):
    """`gym:<dataset>`, `gsm8k:<file.jsonl>` or `math:<file.jsonl>`, with the dataset's options."""
    from sharpen.core.tasks import load_task as _load

    return _load(spec, task_args)


def make_process(backend, task, settings: SearchSettings | None = None, strict_answers: bool = False):
    """The language-model process that search algorithms talk to."""
    from sharpen.search.process import LMProcess

    s = settings or SearchSettings()
    return LMProcess(backend, task, temperature=s.temperature, step_tokens=s.step_tokens,
                     rollout_tokens=s.rollout_tokens, max_depth=s.max_depth, strict_answers=strict_answers,
                     merge_duplicates=s.merge_duplicates)
