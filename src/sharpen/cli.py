"""The `sharpen` command line: typer commands over library functions.

Only this module turns typed library errors into a one-line message and exit code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from sharpen import cli_options as O
from sharpen.cli_options import params
from sharpen.core.console import err, out, progress_bar, quiet_libraries
from sharpen.core.errors import ConfigError, SharpenError
from sharpen.search.evaluate import EvalRequest
from sharpen.search.spec import SearchCommand, SweepRequest

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help="Search, score, train, repeat.")
models_app = typer.Typer(no_args_is_help=True, help="Built-in models.")
app.add_typer(models_app, name="models")


# -- models ----------------------------------------------------------------------------------
@models_app.command("list")
def models_list() -> None:
    """List built-in models and whether they are prepared."""
    out.print(O.models_table())


@models_app.command("prepare")
@params(O.MODELS_PREPARE)
def models_prepare(name: str, force: bool = False) -> None:
    """Prepare a built-in model once in the cache: a language model converted into an HF directory,
    digits-ddpm trained (a DDPM and its rewards, from scikit-learn's bundled digits)."""
    quiet_libraries()
    from sharpen.backends import prepare_model

    with err.status(f"preparing {name}"):
        path = prepare_model(name, force=force)
    out.print(f"{name}: {path}")


@models_app.command("gguf")
def models_gguf(name: str) -> None:
    """Print the GGUF file a built-in model comes from (to serve it with llama.cpp)."""
    from sharpen.backends.models import gguf_path

    print(gguf_path(name))


# -- eval, search, sweep, serve: options from the models in sharpen.cli_options ------------------
@app.command("eval")
@params(O.EVAL)
def eval_cmd(**o) -> None:
    """Greedy accuracy, pass@k, majority@K, tokens per solution and throughput on held-out problems."""
    quiet_libraries()
    from sharpen import api
    from sharpen.search.evaluate import check_language_model, summary_rows

    check_language_model(o["model"], o["task"])
    req = EvalRequest.parse(O.fields_of(o, EvalRequest), "sharpen eval")
    metrics = api.evaluate(o["model"], o["task"], req.n, req.config(), task_args=O.kv(o["task_arg"]),
                           out=api.new_out_dir(o["out_dir"], "eval"), progress=progress_bar, batch=req.batch,
                           ray=o["ray"], actors=o["actors"])
    if o["as_json"]:
        print(json.dumps(metrics))
        return
    out.print(O.rows_table(f"{o['model']} on {o['task']} (n={o['n']}, K={o['samples']}, T={o['temperature']})",
                           summary_rows(metrics)))
    out.print(f"run dir: {metrics['out']}")


@app.command("search")
@params(O.SEARCH)
def search_cmd(**o) -> None:
    """Search each problem under a budget (generated tokens, or NFE for a denoising process);
    trees.jsonl (one problem per line) and metrics.json."""
    quiet_libraries()
    from sharpen import api
    from sharpen.search.collect import summary_rows
    from sharpen.search.denoise_task import is_digits_task
    from sharpen.search.denoise_task import summary_rows as denoise_rows

    denoise = is_digits_task(o["task"])
    c = SearchCommand.parse(O.fields_of(o, SearchCommand), "sharpen search")
    trees, m = api.search(o["model"], o["task"], c.algo, c.scorer, c.budget, c.n, o["seed"], c.collect,
                          O.kv(o["arg"]), O.settings_of(o), O.kv(o["task_arg"]), out=api.new_out_dir(o["out_dir"], "search"),
                          progress=progress_bar, ray=o["ray"], actors=o["actors"], skip=c.skip)
    if o["as_json"]:
        print(json.dumps(m))
        return
    out.print(O.rows_table(f"{c.algo} with {m['scorer']} on {o['task']} ({m['split']} split), budget {c.budget} "
                           f"{'NFE' if denoise else 'tokens'}/problem", (denoise_rows if denoise else summary_rows)(m)))
    out.print(f"trees: {m['out']}/trees.jsonl   view: sharpen view {m['out']}/trees.jsonl")


@app.command("sweep")
@params(O.SWEEP)
def sweep_cmd(**o) -> None:
    """Every algorithm at every budget on the same problems: sweep.json and accuracy_vs_tokens.png."""
    quiet_libraries()
    from sharpen import api
    from sharpen.search.sweep import parse_algo_options, parse_budgets, sweep_rows, sweep_title

    r = SweepRequest.parse(O.fields_of(o, SweepRequest), "sharpen sweep")
    budget_list, options = parse_budgets(r.budgets), parse_algo_options(O.kv(o["arg"]))
    results, sweep_dir = api.sweep(r.algos and r.algos.split(","), budget_list, r.scorer, o["model"], o["task"], r.n,
                                   o["seed"], options, O.settings_of(o), O.kv(o["task_arg"]), out=o["out_dir"],
                                   progress=progress_bar, split=r.split, skip=r.skip)
    out.print(O.rows_table(sweep_title(results, r.split, r.n), sweep_rows(results)))
    out.print(f"sweep: {sweep_dir / 'sweep.json'}   plot: {sweep_dir / 'accuracy_vs_tokens.png'}")


@app.command("serve")
@params(O.SERVE)
def serve_cmd(**o) -> None:
    """Test-time search behind an OpenAI-compatible endpoint: POST /v1/chat/completions with a `search` object."""
    quiet_libraries()
    import os

    from sharpen.backends.hf import parse_dtype
    from sharpen.serve import ServeConfig, check_binding, parse_scorers, read_api_key, serve

    cfg = ServeConfig.parse(O.fields_of(o, ServeConfig) | {"wave": o["queue"], "api_key": None}, "sharpen serve").checked()
    key = read_api_key(o["api_key"], cfg.api_key_file, dict(os.environ))
    check_binding(cfg.host, key, cfg.insecure)
    scorers = parse_scorers(o["scorer"])
    parse_dtype(cfg.dtype)  # a bad --dtype fails before the model loads
    cfg = cfg.model_copy(update={"scorers": scorers, "api_key": key})
    err.print(f"sharpen serve: {o['model']} on http://{cfg.host}:{cfg.port}/v1 (default search: {cfg.algo}, budget "
              f"{cfg.budget}; scorers: {', '.join(scorers) or 'none'})", highlight=False, soft_wrap=True)
    serve(o["model"], o["task"], cfg, O.settings_of(o), O.kv(o["task_arg"]))


@app.command("algos")
def algos_cmd() -> None:
    """The registered search algorithms and scorers, with their options and defaults."""
    for table in O.algos_tables():
        out.print(table)


@app.command("view")
@params(O.VIEW)
def view_cmd(trees: Path, out_html: Path | None = None) -> None:
    """One static HTML file that draws each problem's tree; needs no network."""
    from sharpen.report.viewer import write_viewer

    if not trees.is_file():
        raise ConfigError(f"trees file not found: {trees} (fix: pass the trees.jsonl written by `sharpen search`)")
    out.print(f"viewer: {write_viewer(trees, out_html or trees.with_suffix('.html'))}")


# -- data and training ------------------------------------------------------------------------
build_app = typer.Typer(no_args_is_help=True, help="Datasets from search trees (HF datasets on disk).")
train_app = typer.Typer(no_args_is_help=True, help="Train with TRL / transformers on built datasets.")
app.add_typer(build_app, name="build")
app.add_typer(train_app, name="train")


def _build(kind: str, o: dict) -> None:
    quiet_libraries()
    from sharpen import api

    options = {k: v for k, v in o.items() if k not in ("trees", "out_dir", "holdout", "allow_test_split", "round_")}
    for name, summary, path in api.build(kind, o["trees"], o["out_dir"], o["holdout"], o["allow_test_split"],
                                         round=o["round_"], **options):
        out.print(f"{name}: {summary} -> {path}")


def _command(group: typer.Typer, name: str, run: Any, options: list, doc: str) -> None:
    """Register `group name`: `run(name, options)` with these options and this help."""
    def command(**o) -> None:
        run(name, o)

    command.__doc__ = doc
    group.command(name)(params(options)(command))


_command(build_app, "pairs", _build, O.BUILD_PAIRS, "Step preference pairs (TRL DPO format) with provenance.")
_command(build_app, "labels", _build, O.BUILD_LABELS,
         "Step labels for a PRM: each step with its value and a binary label at a threshold.")
_command(build_app, "traces", _build, O.BUILD_TRACES,
         "Verified, deduplicated full solutions for SFT (rejection-sampling fine-tuning).")


def _train(kind: str, o: dict) -> None:
    quiet_libraries()
    from sharpen import api
    from sharpen.core.tasks import parse_task_args

    names = {"batch_size": "per_device_train_batch_size", "lr": "learning_rate"}
    options = {names.get(k, k): v for k, v in o.items() if k not in ("model", "data", "out_dir", "arg", "full", "task_arg")}
    options["lora"] = not o["full"]
    if kind == "grpo":
        options["task_args"] = parse_task_args(o["task_arg"])
    options |= parse_task_args(o["arg"], "--arg", "warmup_steps=0.1")
    with err.status(f"{kind.upper()} on {o['data'] or options.get('task')}, {options['max_steps']} steps"):
        merged = api.train(kind, o["model"], o["data"], o["out_dir"], **options)
    use = f"--scorer prm:{merged}" if kind == "prm" else f"--model {merged}"
    out.print(f"{kind} model: {merged}  (use it with {use})")


_command(train_app, "dpo", _train, O.TRAIN_DPO, "Step-level DPO with TRL's DPOTrainer (LoRA by default; the "
         "reference is the policy before training).")
_command(train_app, "sft", _train, O.TRAIN_SFT, "Rejection-sampling fine-tuning with TRL's SFTTrainer on verified traces.")
_command(train_app, "prm", _train, O.TRAIN_PRM,
         "A process reward model: token classification on step-boundary tokens (transformers Trainer).")
_command(train_app, "grpo", _train, O.TRAIN_GRPO,
         "Online RL with TRL's GRPOTrainer, the task's verifier as the reward (LoRA by default).")


@train_app.command("eval")
@params(O.TRAIN_EVAL)
def train_eval_cmd(**o) -> None:
    """Held-out quality of a trained model: DPO reward accuracy, or PRM AUROC with a bootstrap 95% CI."""
    quiet_libraries()
    from sharpen import api

    metrics = api.train_eval(o["kind"], o["model"], o["data"], ref=o["ref"], beta=o["beta"])
    if o["as_json"]:
        print(json.dumps(metrics))
        return
    out.print(O.metrics_table(f"{o['kind']} on {o['data']}", metrics))


# -- the loop -------------------------------------------------------------------------------
@app.command("run")
@params(O.RUN)
def run_cmd(**o) -> None:
    """Rounds of collect -> build -> train -> evaluate; ends with a before/after table and the report.

    With --seeds: once per seed, one after another; --out names the directory that holds the seed
    runs and the combined report; --resume is implied."""
    config, out_dir, set_, tracker, ray, actors = (o[k] for k in ("config", "out_dir", "set_", "tracker", "ray", "actors"))
    if o["seeds"] is not None:
        from sharpen.loop.seeds import parse_seeds

        seeds = parse_seeds(o["seeds"])
    quiet_libraries()
    O.check_tracker(tracker)
    from sharpen import api

    say = lambda s: err.print(s, highlight=False)  # noqa: E731
    if o["seeds"] is not None:
        from sharpen.report.seeds import seeds_table

        result = api.run_seeds(config, seeds, out=out_dir, overrides=O.kv(set_),
                               progress=progress_bar, say=say, ray=ray, actors=actors)
        facts = result["facts"]
        out.print(O.rows_table(f"held-out greedy accuracy over {len(facts['seeds'])} seeds (paired change, 95% CI)",
                               seeds_table(facts)))
        out.print(facts["problems"], highlight=False, soft_wrap=True)
        out.print(f"report: {result['report']}")
        for run in result["runs"].values():
            O.log_tracker(Path(run), tracker)
        return
    from sharpen.report.run import collect_facts, summary_table

    result = api.run(config, out=out_dir, resume=o["resume"], overrides=O.kv(set_), progress=progress_bar, say=say,
                     ray=ray, actors=actors)
    cfg = result["config"]
    out.print(O.rows_table(f"{cfg.name}: {cfg.recipe}, {cfg.rounds} rounds, held-out n={cfg.eval.n}",
                           summary_table(collect_facts(Path(result["run"])))))
    p = result["paired"]
    what = "mean reward" if p.get("metric") == "mean_reward" else "greedy accuracy"
    out.print(f"{what} round {p['from_round']} -> {p['to_round']}: {p['before']:.3f} -> {p['after']:.3f} "
              f"({p['delta']:+.3f}, paired bootstrap 95% CI [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}])")
    out.print(f"report: {result['report']}")
    O.log_tracker(Path(result["run"]), tracker)


@app.command("report")
@params(O.REPORT)
def report_cmd(run: Path, tracker: str | None = None) -> None:
    """Write report.md and report.html (with plots) from a run directory alone (for a --seeds
    parent: the combined report; --tracker then logs each seed's run)."""
    from sharpen.loop.recipes import unused_fields
    from sharpen.report.run import write_report
    from sharpen.report.seeds import is_seeds_dir, seed_dirs, write_seeds_report

    O.check_tracker(tracker)
    seeds = is_seeds_dir(run)
    runs = list(seed_dirs(run).values()) if seeds else [run]
    unused = unused_fields(runs[0])  # the seeds of one experiment share a recipe
    out.print(f"report: {write_seeds_report(run, unused) if seeds else write_report(run, unused)}")
    for d in runs:
        O.log_tracker(d, tracker)


def main() -> None:
    try:
        app(standalone_mode=True)
    except SharpenError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
