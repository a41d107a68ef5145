"""sharpen: search over reasoning steps, score them, train on what the search found, repeat.

The Python API (`sharpen.api`), importable from the package itself:

    import sharpen

    trees, metrics = sharpen.run_search(model="smollm2-135m", algo="mcts", scorer="rollout:2", budget=256, n=10)
    metrics = sharpen.run_eval(model="smollm2-135m", n=50, config=sharpen.EvalConfig(samples=4))
    result = sharpen.run("configs/demo.yaml", out="runs/demo")
    results = sharpen.run_seeds("configs/demo.yaml", [0, 1, 2])   # runs/demo/seed-<s>/ + one report

(`run_search`, `run_eval`, `run_sweep`, `build_data` and `train_model` are `sharpen.api`'s `search`,
`evaluate`, `sweep`, `build` and `train`: the short names are taken by the modules `sharpen.search`,
`sharpen.search.evaluate`, `sharpen.search.sweep` and `sharpen.train`.)

Lower layers: `load_model` (a backend), `load_task`, `make_process` (what algorithms search),
`sharpen.search.registry.algorithms()` / `scorers()` (what is registered, with typed options).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# transformers 5.2x loads models with `use_kernels` on whenever its `kernels` dependency is installed, and on
# CUDA `model.train()` then fetches layer kernels from the Hub: code sharpen never asked for, and on a GPU
# machine without internet every `sharpen train` fails (as it did on an H200). Off unless
# the user opts in with USE_HUB_KERNELS=YES.
os.environ.setdefault("USE_HUB_KERNELS", "NO")

_API = {"load_model": "load_model", "load_task": "load_task", "make_process": "make_process", "run": "run",
        "run_seeds": "run_seeds",
        "run_search": "search", "run_eval": "evaluate", "run_sweep": "sweep", "build_data": "build",
        "train_model": "train"}
_TYPES = {"EvalConfig": "sharpen.search.evaluate", "SearchSettings": "sharpen.search.process", "Tree": "sharpen.core.tree",
          "algorithm": "sharpen.search.registry", "scorer": "sharpen.search.registry", "Options": "sharpen.search.registry"}

if TYPE_CHECKING:
    from sharpen.api import build as build_data
    from sharpen.api import evaluate as run_eval
    from sharpen.api import load_model, load_task, make_process, run, run_seeds
    from sharpen.api import search as run_search
    from sharpen.api import sweep as run_sweep
    from sharpen.api import train as train_model
    from sharpen.core.tree import Tree
    from sharpen.search.evaluate import EvalConfig
    from sharpen.search.process import SearchSettings
    from sharpen.search.registry import Options, algorithm, scorer

__all__ = [  # noqa: RUF022 (the API first, then the types)
    "load_model", "load_task", "make_process", "run_search", "run_eval", "run_sweep", "run", "run_seeds", "build_data",
    "train_model",
    "EvalConfig", "SearchSettings", "Tree", "Options", "algorithm", "scorer",
]


def __getattr__(name: str) -> Any:
    """Imported on first use, so `import sharpen` stays light (no torch until a model is loaded)."""
    import importlib

    if name in _API:
        return getattr(importlib.import_module("sharpen.api"), _API[name])
    if name in _TYPES:
        return getattr(importlib.import_module(_TYPES[name]), name)
    raise AttributeError(f"module 'sharpen' has no attribute {name!r}")
