"""Send a run's per-round numbers to an experiment tracker: TensorBoard or MLflow.

Everything logged is read back from the run dir (the same facts `sharpen report` uses), so a
tracker can be filled after the fact, from a finished or a resumed run, and twice gives the same.

- `tensorboard`: event files in RUN/tensorboard (replaced whole on each call, so scalars never
  repeat); view them with `tensorboard --logdir RUN/tensorboard`.
- `mlflow`: one MLflow run named after the run dir, in $MLFLOW_TRACKING_URI, or RUN/mlruns (a file store) when
  it is unset; config values as params, numbers per round as metrics (step = round), report files as
  artifacts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from sharpen.core.errors import ConfigError
from sharpen.core.io import atomic_dir

TRACKERS = ("tensorboard", "mlflow")


def round_scalars(facts: dict[str, Any]) -> dict[int, dict[str, float]]:
    """round -> {"eval/greedy": 0.19, "collect/exploration": 1.2, "data/pairs": 21, ...}."""
    out: dict[int, dict[str, float]] = {}
    for e in facts["rounds"]:
        row: dict[str, float] = {}
        for section in ("eval", "collect"):
            for k, v in (e.get(section) or {}).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    row[f"{section}/{k.replace('@', '_at_')}"] = float(v)
        for k, v in ((e.get("data") or {}).get("rows") or {}).items():
            row[f"data/{k}"] = float(v)
        if row:
            out[e["round"]] = row
    paired = facts.get("paired")
    if paired and "to_round" in paired:
        out.setdefault(paired["to_round"], {}).update(
            {"paired/delta": paired["delta"], "paired/ci95_low": paired["ci95"][0],
             "paired/ci95_high": paired["ci95"][1]})
    return out


def _flat_params(config_yaml: str) -> dict[str, str]:
    def walk(prefix: str, x: Any, acc: dict[str, str]) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v, acc)
        else:
            acc[prefix] = str(x)

    acc: dict[str, str] = {}
    walk("", yaml.safe_load(config_yaml) or {}, acc)
    return acc


def require(module: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"--tracker needs the {package} package, which is not installed "
            f"(fix: pip install {package}, or pip install 'sharpen[track]')"
        ) from None


def check_tracker(tracker: str) -> None:
    """Refuse, before any work, a tracker that is unknown or whose package is missing."""
    if tracker not in TRACKERS:
        raise ConfigError(f"unknown --tracker {tracker!r} (fix: {' or '.join(TRACKERS)})")
    require(tracker, tracker)


def log_to_tracker(run: str | Path, tracker: str) -> str:
    """Log the run dir's facts to `tracker`; returns where they went."""
    from sharpen.report.run import collect_facts

    check_tracker(tracker)
    run = Path(run)
    facts = collect_facts(run)
    scalars = round_scalars(facts)
    params = _flat_params(facts["config"])
    if tracker == "tensorboard":
        return _tensorboard(run, scalars, params)
    return _mlflow(run, scalars, params)


def _tensorboard(run: Path, scalars: dict[int, dict[str, float]], params: dict[str, str]) -> str:
    require("tensorboard", "tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    def write(d: Path) -> None:
        with SummaryWriter(log_dir=str(d)) as w:
            w.add_text("config", "\n".join(f"    {k}: {v}" for k, v in params.items()), 0)
            for r in sorted(scalars):
                for k, v in scalars[r].items():
                    w.add_scalar(k, v, global_step=r)

    final = atomic_dir(run / "tensorboard", write)
    return str(final)


def _mlflow(run: Path, scalars: dict[int, dict[str, float]], params: dict[str, str]) -> str:
    mlflow = require("mlflow", "mlflow")
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:  # a local store needing no database package; MLflow 3 asks for this opt-in
        uri = (run.resolve() / "mlruns").as_uri()
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("sharpen")
    with mlflow.start_run(run_name=run.resolve().name) as active:
        mlflow.log_params(params)
        for r in sorted(scalars):
            mlflow.log_metrics(scalars[r], step=r)
        for name in ("report.md", "report.html", "paired.json", "config.yaml"):
            if (run / name).exists():
                mlflow.log_artifact(str(run / name))
        if (run / "plots").is_dir():
            mlflow.log_artifacts(str(run / "plots"), artifact_path="plots")
        run_id = active.info.run_id
    return f"{uri} (experiment sharpen, run {run_id})"
