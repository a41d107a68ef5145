"""The `sharpen` command line: typer commands over library functions.

Only this module turns typed library errors into a one-line message and exit code 2."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sharpen.console import err, out, progress_bar, quiet_libraries
from sharpen.errors import ConfigError, SharpenError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help="Search, score, train, repeat.")
models_app = typer.Typer(no_args_is_help=True, help="Built-in models.")
app.add_typer(models_app, name="models")


def _fail(msg: str) -> None:
    err.print(f"[red]error:[/red] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _new_out_dir(out_dir: Path | None, prefix: str) -> Path:
    if out_dir is None:
        out_dir = Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file (fix: pass a directory path)")
    return out_dir


# -- models ----------------------------------------------------------------------------------
@models_app.command("list")
def models_list() -> None:
    """List built-in models and whether they are prepared."""
    from sharpen.models import list_models

    table = Table("name", "prepared", "path", "description")
    for m in list_models():
        table.add_row(m["name"], "yes" if m["prepared"] else "no", m["path"], m["description"])
    out.print(table)


@models_app.command("prepare")
def models_prepare(name: str) -> None:
    """Convert a built-in model once into an HF directory in the cache."""
    quiet_libraries()
    from sharpen.models import prepare

    with err.status(f"preparing {name}"):
        path = prepare(name)
    out.print(f"{name}: {path}")


# -- eval ------------------------------------------------------------------------------------
TaskOpt = Annotated[str, typer.Option("--task", help="gym:<dataset>, gsm8k:<file.jsonl> or math:<file.jsonl>")]
TaskArgOpt = Annotated[list[str] | None, typer.Option("--task-arg", help="key=value for a gym task config; repeatable")]
ModelOpt = Annotated[str, typer.Option("--model", help="built-in name, HF id or local model directory")]


@app.command("eval")
def eval_cmd(
    model: ModelOpt = "smollm2-135m",
    task: TaskOpt = "gym:chain_sum",
    task_arg: TaskArgOpt = None,
    n: Annotated[int, typer.Option(help="held-out problems")] = 50,
    samples: Annotated[int, typer.Option(help="sampled solutions per problem (K)")] = 8,
    temperature: float = 0.7,
    max_tokens: Annotated[int, typer.Option(help="max generated tokens per solution")] = 128,
    seed: int = 0,
    batch: Annotated[int, typer.Option(help="max rows per generate call")] = 32,
    out_dir: Annotated[Path | None, typer.Option("--out", help="run directory (default runs/eval-<time>)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object on stdout")] = False,
) -> None:
    """Greedy accuracy, pass@k, majority@K, tokens per solution and throughput on held-out problems."""
    quiet_libraries()
    from sharpen.backends import load_backend
    from sharpen.evaluate import EvalConfig, evaluate, ks_up_to, write_metrics
    from sharpen.io import atomic_write_json
    from sharpen.tasks import load_task, parse_task_args

    if n < 1 or samples < 0 or max_tokens < 1 or batch < 1:
        raise ConfigError("--n, --max-tokens and --batch must be >= 1 and --samples >= 0 (fix: pass positive numbers)")
    if temperature < 0:
        raise ConfigError("--temperature must be >= 0 (fix: e.g. --temperature 0.7)")
    the_task = load_task(task, parse_task_args(task_arg))
    problems = the_task.problems("test", n, seed=seed)
    from sharpen.models import resolve_model

    resolve_model(model)  # validates before anything is written
    out_dir = _new_out_dir(out_dir, "eval")
    backend = load_backend(model, seed=seed, max_batch=batch)
    cfg = EvalConfig(samples=samples, temperature=temperature, max_tokens=max_tokens, seed=seed,
                     problems_per_call=max(1, batch // max(samples, 1)))
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "config.json", {"command": "eval", "model": model, "task": task,
                      "task_args": parse_task_args(task_arg), "n": n, **cfg.__dict__})
    with progress_bar(f"eval {task}", len(problems)) as advance:
        metrics = evaluate(backend, the_task, problems, cfg, out_jsonl=out_dir / "problems.jsonl", on_progress=advance)
    metrics.update(model=model, task=task, out=str(out_dir))
    write_metrics(out_dir / "metrics.json", metrics)
    if as_json:
        print(json.dumps(metrics))
        return
    table = Table(title=f"{model} on {task} (n={n}, K={samples}, T={temperature})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    if "greedy" in metrics:
        table.add_row("greedy accuracy", f"{metrics['greedy']:.3f}")
    for k in ks_up_to(samples) if samples else []:
        table.add_row(f"pass@{k}", f"{metrics[f'pass@{k}']:.3f}")
    if samples:
        table.add_row(f"majority@{samples}", f"{metrics[f'majority@{samples}']:.3f}")
        table.add_row("mean tokens / solution", f"{metrics['mean_tokens']:.1f}")
    table.add_row("generated tokens / s", f"{metrics['tokens_per_second']}")
    table.add_row("wall time (s)", f"{metrics['wall_seconds']}")
    out.print(table)
    out.print(f"run dir: {out_dir}")


def main() -> None:
    try:
        app(standalone_mode=True)
    except SharpenError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
