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
                     problems_per_call=16)
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


# -- search ---------------------------------------------------------------------------------
AlgoArgOpt = Annotated[list[str] | None, typer.Option("--arg", help="algorithm option key=value (e.g. k=4, c_puct=1.5); repeatable")]


def _search_setup(model, task, task_arg, n, seed, collect, temperature, step_tokens, rollout_tokens, max_depth, batch):
    from sharpen.backends import load_backend
    from sharpen.models import resolve_model
    from sharpen.process import LMProcess
    from sharpen.tasks import load_task, parse_task_args

    if n < 1:
        raise ConfigError("--n must be >= 1 (fix: e.g. --n 100)")
    the_task = load_task(task, parse_task_args(task_arg))
    problems = the_task.problems("train" if collect else "test", n, seed=seed)
    resolve_model(model)
    backend = load_backend(model, seed=seed, max_batch=batch)
    process = LMProcess(backend, the_task, temperature=temperature, step_tokens=step_tokens,
                        rollout_tokens=rollout_tokens, max_depth=max_depth)
    return the_task, problems, process


def _parse_algo(spec: str, default_scorer: str) -> tuple[str, str]:
    from sharpen.search import ALGORITHMS

    algo, _, scorer = spec.partition("@")
    if algo not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {algo!r} (fix: one of {', '.join(ALGORITHMS)}; optionally algo@scorer)")
    return algo, scorer or ("none" if algo == "vote" else default_scorer)


SEARCH_DEFAULTS = {"temperature": 0.7, "step_tokens": 32, "rollout_tokens": 64, "max_depth": 6}


@app.command("search")
def search_cmd(
    algo: Annotated[str, typer.Option(help="bon, vote, weighted, beam, mcts or pf")] = "mcts",
    scorer: Annotated[str, typer.Option(help="self, rollout[:k], oracle[:k] (only with --collect), prm:<path>")] = "self",
    budget: Annotated[int, typer.Option(help="generated tokens per problem, scorer tokens included")] = 512,
    model: ModelOpt = "smollm2-135m",
    task: TaskOpt = "gym:chain_sum",
    task_arg: TaskArgOpt = None,
    n: Annotated[int, typer.Option(help="problems")] = 20,
    seed: int = 0,
    collect: Annotated[bool, typer.Option("--collect", help="search the training split (allows the oracle scorer)")] = False,
    arg: AlgoArgOpt = None,
    temperature: float = SEARCH_DEFAULTS["temperature"],
    step_tokens: Annotated[int, typer.Option(help="max tokens of one step")] = SEARCH_DEFAULTS["step_tokens"],
    rollout_tokens: Annotated[int, typer.Option(help="max tokens of one completion")] = SEARCH_DEFAULTS["rollout_tokens"],
    max_depth: int = SEARCH_DEFAULTS["max_depth"],
    batch: int = 32,
    parallel: Annotated[int, typer.Option(help="problems searched at once (lockstep batching)")] = 16,
    out_dir: Annotated[Path | None, typer.Option("--out", help="run directory (default runs/search-<time>)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the metrics as one JSON object on stdout")] = False,
) -> None:
    """Search each problem under a token budget; trees.jsonl (one problem per line) and metrics.json."""
    quiet_libraries()
    from sharpen.collect import search_metrics, search_problems
    from sharpen.io import atomic_write_json
    from sharpen.scorers import make_scorer
    from sharpen.tasks import parse_task_args

    algo, scorer = _parse_algo(algo, scorer)
    if budget < 1:
        raise ConfigError("--budget must be >= 1 generated token (fix: e.g. --budget 512)")
    algo_args = parse_task_args(arg)
    the_task, problems, process = _search_setup(model, task, task_arg, n, seed, collect, temperature, step_tokens,
                                                rollout_tokens, max_depth, batch)
    the_scorer = make_scorer(scorer, process, collect=collect)
    out_dir = _new_out_dir(out_dir, "search")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "config.json", {"command": "search", "algo": algo, "scorer": scorer, "budget": budget,
                      "model": model, "task": task, "task_args": parse_task_args(task_arg), "n": n, "seed": seed,
                      "collect": collect, "args": algo_args, "temperature": temperature, "step_tokens": step_tokens,
                      "rollout_tokens": rollout_tokens, "max_depth": max_depth, "parallel": parallel})
    with progress_bar(f"{algo} ({scorer}) @ {budget} tokens", len(problems)) as advance:
        trees = search_problems(process, the_scorer, algo, problems, budget, seed=seed, out_jsonl=out_dir / "trees.jsonl",
                                algo_args=algo_args, on_progress=advance, parallel=parallel)
    metrics = search_metrics(trees, budget) | {"algo": algo, "scorer": scorer, "out": str(out_dir)}
    atomic_write_json(out_dir / "metrics.json", metrics)
    if as_json:
        print(json.dumps(metrics))
        return
    table = Table(title=f"{algo} with {scorer} on {task}, budget {budget} tokens/problem")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("accuracy", f"{metrics['accuracy']:.3f} [{metrics['accuracy_ci95'][0]:.3f}, {metrics['accuracy_ci95'][1]:.3f}]")
    table.add_row("mean generated tokens", f"{metrics['mean_generated_tokens']:.0f}")
    table.add_row("max generated tokens", f"{metrics['max_generated_tokens']}")
    table.add_row("mean nodes / tree", f"{metrics['mean_nodes']:.1f}")
    out.print(table)
    out.print(f"trees: {out_dir / 'trees.jsonl'}   view: sharpen view {out_dir / 'trees.jsonl'}")


@app.command("sweep")
def sweep_cmd(
    algos: Annotated[str, typer.Option(help="comma list: algo or algo@scorer, e.g. vote,bon@self,mcts@rollout")] = "vote,bon,beam,mcts,pf",
    budgets: Annotated[str, typer.Option(help="comma list of token budgets per problem")] = "256,512,1024,2048,4096",
    scorer: Annotated[str, typer.Option(help="default scorer for algorithms that need one")] = "self",
    model: ModelOpt = "smollm2-135m",
    task: TaskOpt = "gym:chain_sum",
    task_arg: TaskArgOpt = None,
    n: Annotated[int, typer.Option(help="held-out problems")] = 100,
    seed: int = 0,
    arg: Annotated[list[str] | None, typer.Option("--arg", help="algo.key=value, e.g. mcts.k=4; repeatable")] = None,
    temperature: float = SEARCH_DEFAULTS["temperature"],
    step_tokens: int = SEARCH_DEFAULTS["step_tokens"],
    rollout_tokens: int = SEARCH_DEFAULTS["rollout_tokens"],
    max_depth: int = SEARCH_DEFAULTS["max_depth"],
    batch: int = 32,
    parallel: Annotated[int, typer.Option(help="problems searched at once (lockstep batching)")] = 16,
    out_dir: Annotated[Path | None, typer.Option("--out", help="sweep directory (default runs/sweep-<time>)")] = None,
) -> None:
    """Every algorithm at every budget on the same problems: sweep.json and accuracy_vs_tokens.png."""
    quiet_libraries()
    from sharpen.collect import search_metrics, search_problems
    from sharpen.io import atomic_write_json
    from sharpen.scorers import make_scorer
    from sharpen.sweep import plot_sweep
    from sharpen.tasks import parse_task_args

    pairs = [_parse_algo(a.strip(), scorer) for a in algos.split(",") if a.strip()]
    try:
        budget_list = [int(b) for b in budgets.split(",") if b.strip()]
    except ValueError:
        raise ConfigError(f"bad --budgets {budgets!r} (fix: comma-separated integers, e.g. 256,512,1024)") from None
    if not budget_list or min(budget_list) < 1 or not pairs:
        raise ConfigError("--budgets and --algos must be non-empty, budgets >= 1 (fix: e.g. --budgets 256,512)")
    algo_args: dict[str, dict] = {}
    for key, value in parse_task_args(arg).items():
        algo, dot, opt = key.partition(".")
        if not dot:
            raise ConfigError(f"bad --arg {key!r} for a sweep (fix: name the algorithm, e.g. --arg mcts.c_puct=1.5)")
        algo_args.setdefault(algo, {})[opt] = value
    _, problems, process = _search_setup(model, task, task_arg, n, seed, False, temperature, step_tokens,
                                         rollout_tokens, max_depth, batch)
    scorers = {s: make_scorer(s, process, collect=False) for _, s in pairs}
    out_dir = _new_out_dir(out_dir, "sweep")
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for budget in budget_list:
        for algo, sc in pairs:
            d = out_dir / f"{algo}@{sc.replace(':', '-').replace('/', '_')}" / f"budget-{budget}"
            with progress_bar(f"{algo}@{sc} {budget} tok", len(problems)) as advance:
                trees = search_problems(process, scorers[sc], algo, problems, budget, seed=seed,
                                        out_jsonl=d / "trees.jsonl", algo_args=algo_args.get(algo, {}),
                                        on_progress=advance, parallel=parallel)
            m = search_metrics(trees, budget) | {"algo": algo, "scorer": sc, "trees": str(d / "trees.jsonl")}
            atomic_write_json(d / "metrics.json", m)
            results.append(m)
            atomic_write_json(out_dir / "sweep.json", {"model": model, "task": task, "n": n, "seed": seed, "results": results})
    png = plot_sweep(results, out_dir / "accuracy_vs_tokens.png", title=f"{model} on {task}, n={n}")
    table = Table(title=f"accuracy vs generated tokens per problem (n={n}, 95% bootstrap CI)")
    table.add_column("algorithm")
    for b in budget_list:
        table.add_column(f"{b}", justify="right")
    for algo, sc in pairs:
        row = [f"{algo}@{sc}"]
        for b in budget_list:
            m = next(r for r in results if r["algo"] == algo and r["scorer"] == sc and r["budget"] == b)
            row.append(f"{m['accuracy']:.2f} ({m['mean_generated_tokens']:.0f} tok)")
        table.add_row(*row)
    out.print(table)
    out.print(f"sweep: {out_dir / 'sweep.json'}   plot: {png}")


@app.command("view")
def view_cmd(
    trees: Annotated[Path, typer.Argument(help="trees.jsonl from `sharpen search`")],
    out_html: Annotated[Path | None, typer.Option("--out", help="HTML file (default: next to the trees)")] = None,
) -> None:
    """One static HTML file that draws each problem's tree; needs no network."""
    from sharpen.viewer import write_viewer

    if not trees.is_file():
        raise ConfigError(f"trees file not found: {trees} (fix: pass the trees.jsonl written by `sharpen search`)")
    path = write_viewer(trees, out_html or trees.with_suffix(".html"))
    out.print(f"viewer: {path}")


# -- data and training ------------------------------------------------------------------------
build_app = typer.Typer(no_args_is_help=True, help="Datasets from search trees (HF datasets on disk).")
train_app = typer.Typer(no_args_is_help=True, help="Train with TRL / transformers on built datasets.")
app.add_typer(build_app, name="build")
app.add_typer(train_app, name="train")
TreesOpt = Annotated[Path, typer.Option("--trees", help="trees.jsonl from `sharpen search`")]
DataOutOpt = Annotated[Path, typer.Option("--out", help="dataset directory to write")]


def _load_trees(path: Path):
    quiet_libraries()
    from sharpen.data import load_trees

    if not path.exists():
        raise ConfigError(f"trees file not found: {path} (fix: pass the trees.jsonl written by `sharpen search`)")
    try:
        return load_trees(path)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{path} is not a trees file ({e}) (fix: pass the trees.jsonl written by `sharpen search`)") from None


HoldoutOpt = Annotated[float, typer.Option("--holdout", help="share of problems held out into <out>-heldout (split by problem id)")]


def _save_built(ds, out_dir: Path, kind: str, holdout: float = 0.0) -> None:
    from sharpen.data import save_dataset, summary

    if not 0.0 <= holdout < 1.0:
        raise ConfigError(f"--holdout must be in [0, 1), got {holdout} (fix: e.g. --holdout 0.2)")
    if holdout > 0:
        import hashlib

        def held(pid: str) -> bool:
            return int(hashlib.sha1(pid.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < holdout

        flags = [held(pid) for pid in ds["problem_id"]]
        ho = ds.select([i for i, f in enumerate(flags) if f])
        ds = ds.select([i for i, f in enumerate(flags) if not f])
        ho_dir = out_dir.with_name(out_dir.name + "-heldout")
        save_dataset(ho, ho_dir)
        out.print(f"{kind} (held out): {summary(ho)} -> {ho_dir}")
    save_dataset(ds, out_dir)
    out.print(f"{kind}: {summary(ds)} -> {out_dir}")


@build_app.command("pairs")
def build_pairs(
    trees: TreesOpt,
    out_dir: DataOutOpt,
    recipe: Annotated[str, typer.Option(help="mcts-dpo (sibling steps by value) or step-dpo (first wrong step)")] = "mcts-dpo",
    min_margin: Annotated[float, typer.Option(help="min value gap chosen - rejected (mcts-dpo)")] = 0.1,
    source: Annotated[str, typer.Option(help="step values: mc, q, score or value")] = "mc",
    pairing: Annotated[str, typer.Option(help="mcts-dpo: best_worst (one pair per prefix) or all sibling pairs")] = "best_worst",
    round_: Annotated[int, typer.Option("--round")] = 0,
    holdout: HoldoutOpt = 0.0,
) -> None:
    """Step preference pairs (TRL DPO format) with provenance."""
    from sharpen import data

    if recipe not in ("mcts-dpo", "step-dpo"):
        raise ConfigError(f"unknown --recipe {recipe!r} (fix: mcts-dpo or step-dpo)")
    ts = _load_trees(trees)
    ds = (data.step_pairs(ts, min_margin=min_margin, round=round_, source=source, pairing=pairing) if recipe == "mcts-dpo"
          else data.step_dpo_pairs(ts, round=round_, source=source))
    _save_built(ds, out_dir, "pairs", holdout)


@build_app.command("labels")
def build_labels(trees: TreesOpt, out_dir: DataOutOpt, threshold: float = 0.5, source: str = "mc",
                 round_: Annotated[int, typer.Option("--round")] = 0, holdout: HoldoutOpt = 0.0) -> None:
    """Step labels for a PRM: each step with its value and a binary label at a threshold."""
    from sharpen import data

    _save_built(data.step_labels(_load_trees(trees), threshold=threshold, round=round_, source=source), out_dir, "labels",
                holdout)


@build_app.command("traces")
def build_traces(trees: TreesOpt, out_dir: DataOutOpt, round_: Annotated[int, typer.Option("--round")] = 0,
                 holdout: HoldoutOpt = 0.0) -> None:
    """Verified, deduplicated full solutions for SFT (rejection-sampling fine-tuning)."""
    from sharpen import data

    _save_built(data.verified_traces(_load_trees(trees), round=round_), out_dir, "traces", holdout)


def _train_options(max_steps: int, batch_size: int, lr: float, full: bool, seed: int):
    from sharpen.train.common import TrainOptions

    if max_steps < 1 or batch_size < 1 or lr <= 0:
        raise ConfigError("--max-steps and --batch-size must be >= 1 and --lr > 0 (fix: positive values)")
    return TrainOptions(max_steps=max_steps, batch_size=batch_size, learning_rate=lr, lora=not full, seed=seed,
                        save_steps=max(1, min(50, max_steps // 4)))


TrainModel = Annotated[str, typer.Option("--model", help="policy to train: built-in name, HF id or local dir")]
TrainData = Annotated[Path, typer.Option("--data", help="dataset dir from `sharpen build`")]
TrainOut = Annotated[Path, typer.Option("--out", help="output dir: checkpoints/, adapter/, merged/")]
MaxSteps = Annotated[int, typer.Option("--max-steps")]
FullFT = Annotated[bool, typer.Option("--full", help="full fine-tuning instead of LoRA")]


def _check_train_inputs(model: str, data_dir: Path) -> None:
    from sharpen.models import resolve_model

    resolve_model(model)
    if not data_dir.is_dir():
        raise ConfigError(f"dataset dir not found: {data_dir} (fix: run `sharpen build ...` first)")


def _train(kind: str, model: str, data: Path, out_dir: Path, max_steps: int, batch_size: int, lr: float,
           full: bool, seed: int, **extra) -> None:
    """Validate, build the trainer's config, train with a spinner, say where the result is."""
    quiet_libraries()
    _check_train_inputs(model, data)
    from sharpen.train import dpo, prm, sft

    config_cls, train_fn = {"dpo": (dpo.DPOTrainConfig, dpo.train_dpo), "sft": (sft.SFTTrainConfig, sft.train_sft),
                            "prm": (prm.PRMTrainConfig, prm.train_prm)}[kind]
    opts = _train_options(max_steps, batch_size, lr, full, seed)
    with err.status(f"{kind.upper()} on {data}, {max_steps} steps"):
        merged = train_fn(config_cls(model=model, data=str(data), out=str(out_dir), train=opts, **extra))
    use = f"--scorer prm:{merged}" if kind == "prm" else f"--model {merged}"
    out.print(f"{kind} model: {merged}  (use it with {use})")


@train_app.command("dpo")
def train_dpo_cmd(model: TrainModel, data: TrainData, out_dir: TrainOut, max_steps: MaxSteps = 100,
                  batch_size: int = 8, lr: float = 5e-5, beta: float = 0.1,
                  sft_weight: Annotated[float, typer.Option(help="NLL on the chosen step added to DPO (RPO); 0 = plain DPO")] = 0.0,
                  full: FullFT = False, seed: int = 0) -> None:
    """Step-level DPO with TRL's DPOTrainer (LoRA by default; the reference is the policy before training)."""
    _train("dpo", model, data, out_dir, max_steps, batch_size, lr, full, seed, beta=beta, sft_weight=sft_weight)


@train_app.command("sft")
def train_sft_cmd(model: TrainModel, data: TrainData, out_dir: TrainOut, max_steps: MaxSteps = 100,
                  batch_size: int = 8, lr: float = 5e-5, full: FullFT = False, seed: int = 0) -> None:
    """Rejection-sampling fine-tuning with TRL's SFTTrainer on verified traces."""
    _train("sft", model, data, out_dir, max_steps, batch_size, lr, full, seed)


@train_app.command("prm")
def train_prm_cmd(model: TrainModel, data: TrainData, out_dir: TrainOut, max_steps: MaxSteps = 100,
                  batch_size: int = 8, lr: float = 5e-5, full: FullFT = False, seed: int = 0) -> None:
    """A process reward model: token classification on step-boundary tokens (transformers Trainer)."""
    _train("prm", model, data, out_dir, max_steps, batch_size, lr, full, seed)


@train_app.command("eval")
def train_eval_cmd(
    kind: Annotated[str, typer.Argument(help="dpo (reward accuracy on pairs) or prm (AUROC on step labels)")],
    model: Annotated[str, typer.Option("--model", help="trained policy dir (dpo) or PRM dir (prm)")],
    data: TrainData,
    ref: Annotated[str | None, typer.Option("--ref", help="reference policy (dpo): the policy before training")] = None,
    beta: float = 0.1,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Held-out quality of a trained model: DPO reward accuracy, or PRM AUROC with a bootstrap 95% CI."""
    quiet_libraries()
    from sharpen.data import load_dataset_dir
    from sharpen.models import resolve_model

    if kind not in ("dpo", "prm"):
        raise ConfigError(f"unknown kind {kind!r} (fix: dpo or prm)")
    if not data.is_dir():
        raise ConfigError(f"dataset dir not found: {data} (fix: run `sharpen build ... --holdout 0.2` first)")
    if kind == "dpo":
        from sharpen.train.metrics import dpo_reward_accuracy

        policy = str(resolve_model(model))
        metrics = dpo_reward_accuracy(policy, str(resolve_model(ref or model)), load_dataset_dir(data), beta=beta)
    else:
        from sharpen.train.metrics import prm_auroc

        metrics = prm_auroc(model, load_dataset_dir(data))
    if as_json:
        print(json.dumps(metrics))
        return
    table = Table(title=f"{kind} on {data}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    out.print(table)


# -- the loop -------------------------------------------------------------------------------
TrackerOpt = Annotated[str | None, typer.Option("--tracker", help="also log per-round numbers: tensorboard or mlflow")]


def _check_tracker(tracker: str | None) -> None:
    if tracker is not None:
        from sharpen.tracking import check_tracker

        check_tracker(tracker)


def _log_tracker(run: Path, tracker: str | None) -> None:
    if tracker is not None:
        from sharpen.tracking import log_to_tracker

        out.print(f"{tracker}: {log_to_tracker(run, tracker)}")


@app.command("run")
def run_cmd(
    config: Annotated[Path, typer.Argument(help="YAML config (see configs/)")],
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in its run dir")] = False,
    out_dir: Annotated[Path | None, typer.Option("--out", help="run directory (default runs/<name>)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config field: train.max_steps=5")] = None,
    tracker: TrackerOpt = None,
) -> None:
    """Rounds of collect -> build -> train -> evaluate; ends with a before/after table and the report."""
    quiet_libraries()
    _check_tracker(tracker)
    from sharpen.loop.config import load_config
    from sharpen.loop.runner import LoopRunner, prepare_run_dir
    from sharpen.tasks import parse_task_args

    overrides = parse_task_args(set_)  # same key=value grammar
    cfg = load_config(config, overrides)
    run_dir = out_dir or Path("runs") / cfg.name
    from sharpen.models import resolve_model

    resolve_model(cfg.model)
    cfg = prepare_run_dir(cfg, run_dir, resume)
    runner = LoopRunner(cfg, run_dir, progress=progress_bar, say=lambda s: err.print(s, highlight=False))
    result = runner.run_all()
    from sharpen.report import collect_facts, summary_table

    rows = summary_table(collect_facts(run_dir))
    table = Table(title=f"{cfg.name}: {cfg.recipe}, {cfg.rounds} rounds, held-out n={cfg.eval.n}")
    for c in rows[0]:
        table.add_column(c, justify="right")
    for r in rows[1:]:
        table.add_row(*r)
    out.print(table)
    p = result["paired"]
    out.print(f"greedy accuracy round {p['from_round']} -> {p['to_round']}: {p['before']:.3f} -> {p['after']:.3f} "
              f"({p['delta']:+.3f}, paired bootstrap 95% CI [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}])")
    out.print(f"report: {result['report']}")
    _log_tracker(run_dir, tracker)


@app.command("report")
def report_cmd(run: Annotated[Path, typer.Argument(help="a run directory")], tracker: TrackerOpt = None) -> None:
    """Write report.md and report.html (with plots) from a run directory alone."""
    from sharpen.report import write_report

    _check_tracker(tracker)
    out.print(f"report: {write_report(run)}")
    _log_tracker(run, tracker)


def main() -> None:
    try:
        app(standalone_mode=True)
    except SharpenError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
