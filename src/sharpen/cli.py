"""The `sharpen` command line: typer commands over library functions.

Only this module turns typed library errors into a one-line message and exit code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sharpen.core.console import err, out, progress_bar, quiet_libraries
from sharpen.core.errors import ConfigError, SharpenError
from sharpen.search.evaluate import EvalConfig
from sharpen.search.process import SearchSettings

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help="Search, score, train, repeat.")
models_app = typer.Typer(no_args_is_help=True, help="Built-in models.")
app.add_typer(models_app, name="models")


def _fail(msg: str) -> None:
    err.print(f"[red]error:[/red] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


# -- models ----------------------------------------------------------------------------------
@models_app.command("list")
def models_list() -> None:
    """List built-in models and whether they are prepared."""
    from sharpen.backends.models import list_models

    table = Table("name", "prepared", "path", "description")
    for m in list_models():
        table.add_row(m["name"], "yes" if m["prepared"] else "no", m["path"], m["description"])
    out.print(table)


@models_app.command("prepare")
def models_prepare(name: str) -> None:
    """Convert a built-in model once into an HF directory in the cache."""
    quiet_libraries()
    from sharpen.backends.models import prepare

    with err.status(f"preparing {name}"):
        path = prepare(name)
    out.print(f"{name}: {path}")


@models_app.command("gguf")
def models_gguf(name: str) -> None:
    """Print the GGUF file a built-in model comes from (to serve it with llama.cpp)."""
    from sharpen.backends.models import gguf_path

    print(gguf_path(name))


# -- eval, search, sweep ------------------------------------------------------------------------
TaskOpt = Annotated[str, typer.Option("--task", help="gym:<dataset>, gsm8k:<file.jsonl> or math:<file.jsonl>")]
TaskArgOpt = Annotated[list[str] | None, typer.Option("--task-arg", help="key=value for a gym task config; repeatable")]
ModelOpt = Annotated[str, typer.Option("--model", help="built-in name, HF id or local model directory")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="run directory (default runs/<command>-<time>)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the metrics as one JSON object on stdout")]
RayOpt = Annotated[str | None, typer.Option("--ray", help="shard the problems over Ray actors: local (a local cluster), "
                                            "auto (this machine's cluster) or ray://HEAD:10001; the same results")]
ActorsOpt = Annotated[int, typer.Option(help="Ray actors (with --ray), one backend each")]
E, S = EvalConfig.model_fields, SearchSettings.model_fields


def _help(fields, name: str) -> str:
    return fields[name].description or ""


def _kv(items: list[str] | None) -> dict:
    from sharpen.core.tasks import parse_task_args

    return parse_task_args(items)


def _rows_table(title: str, rows: list[list[str]]) -> Table:
    """A table from a header row and data rows; the first column left-aligned, the rest right."""
    table = Table(title=title)
    for i, c in enumerate(rows[0]):
        table.add_column(c, justify="left" if i == 0 else "right", no_wrap=c.startswith("change"))
    for r in rows[1:]:
        table.add_row(*r)
    return table


@app.command("eval")
def eval_cmd(
    model: ModelOpt = "smollm2-135m",
    task: TaskOpt = "gym:chain_sum",
    task_arg: TaskArgOpt = None,
    n: Annotated[int, typer.Option(help="held-out problems")] = 50,
    samples: Annotated[int, typer.Option(help=_help(E, "samples"))] = E["samples"].default,
    temperature: Annotated[float, typer.Option(help=_help(E, "temperature"))] = E["temperature"].default,
    max_tokens: Annotated[int, typer.Option(help=_help(E, "max_tokens"))] = E["max_tokens"].default,
    seed: int = 0,
    batch: Annotated[int, typer.Option(help="max rows per generate call")] = 32,
    out_dir: OutOpt = None,
    ray: RayOpt = None,
    actors: ActorsOpt = 2,
    as_json: JsonOpt = False,
) -> None:
    """Greedy accuracy, pass@k, majority@K, tokens per solution and throughput on held-out problems."""
    quiet_libraries()
    from sharpen import api
    from sharpen.search.evaluate import summary_rows

    cfg = EvalConfig.parse(dict(samples=samples, temperature=temperature, max_tokens=max_tokens, seed=seed,
                                problems_per_call=16), "sharpen eval")
    metrics = api.evaluate(model, task, n, cfg, task_args=_kv(task_arg), out=api.new_out_dir(out_dir, "eval"),
                           progress=progress_bar, batch=batch, ray=ray, actors=actors)
    if as_json:
        print(json.dumps(metrics))
        return
    out.print(_rows_table(f"{model} on {task} (n={n}, K={samples}, T={temperature})", summary_rows(metrics)))
    out.print(f"run dir: {metrics['out']}")


AlgoArgOpt = Annotated[list[str] | None, typer.Option("--arg", help="algorithm option key=value (e.g. k=4, c_puct=1.5; "
                                                      "`sharpen algos` lists them); repeatable")]


def _settings(**values) -> SearchSettings:
    return SearchSettings.parse(values, "search settings")


@app.command("search")
def search_cmd(
    algo: Annotated[str, typer.Option(help="a registered algorithm (`sharpen algos`): bon, vote, weighted, beam, mcts, pf")] = "mcts",
    scorer: Annotated[str, typer.Option(help="self, rollout[:k], oracle[:k] (only with --collect), prm:<path>")] = "self",
    budget: Annotated[int, typer.Option(help="generated tokens per problem, scorer tokens included")] = 512,
    model: ModelOpt = "smollm2-135m",
    task: TaskOpt = "gym:chain_sum",
    task_arg: TaskArgOpt = None,
    n: Annotated[int, typer.Option(help="problems")] = 20,
    skip: Annotated[int, typer.Option(help="skip the split's first SKIP problems (e.g. those a prover policy trained on)")] = 0,
    seed: int = 0,
    collect: Annotated[bool, typer.Option("--collect", help="search the training split (allows the oracle scorer)")] = False,
    arg: AlgoArgOpt = None,
    temperature: Annotated[float, typer.Option(help=_help(S, "temperature"))] = S["temperature"].default,
    step_tokens: Annotated[int, typer.Option(help=_help(S, "step_tokens"))] = S["step_tokens"].default,
    rollout_tokens: Annotated[int, typer.Option(help=_help(S, "rollout_tokens"))] = S["rollout_tokens"].default,
    max_depth: Annotated[int, typer.Option(help=_help(S, "max_depth"))] = S["max_depth"].default,
    batch: Annotated[int, typer.Option(help=_help(S, "batch"))] = S["batch"].default,
    parallel: Annotated[int, typer.Option(help=_help(S, "parallel"))] = S["parallel"].default,
    merge_duplicates: Annotated[bool, typer.Option("--merge-duplicates", help=_help(S, "merge_duplicates"))] = False,
    out_dir: OutOpt = None,
    ray: RayOpt = None,
    actors: ActorsOpt = 2,
    as_json: JsonOpt = False,
) -> None:
    """Search each problem under a token budget; trees.jsonl (one problem per line) and metrics.json."""
    quiet_libraries()
    from sharpen import api

    settings = _settings(temperature=temperature, step_tokens=step_tokens, rollout_tokens=rollout_tokens,
                         max_depth=max_depth, batch=batch, parallel=parallel,
                         merge_duplicates=merge_duplicates)
    trees, m = api.search(model, task, algo, scorer, budget, n, seed, collect, _kv(arg), settings,
                          _kv(task_arg), out=api.new_out_dir(out_dir, "search"), progress=progress_bar,
                          ray=ray, actors=actors, skip=skip)
    if as_json:
        print(json.dumps(m))
        return
    from sharpen.search.collect import summary_rows

    out.print(_rows_table(f"{algo} with {m['scorer']} on {task} ({m['split']} split), budget {budget} tokens/problem",
                          summary_rows(m)))
    out.print(f"trees: {m['out']}/trees.jsonl   view: sharpen view {m['out']}/trees.jsonl")


@app.command("sweep")
def sweep_cmd(
    algos: Annotated[str, typer.Option(help="comma list: algo or algo@scorer, e.g. vote,bon@self,mcts@rollout")] = "vote,bon,beam,mcts,pf",
    budgets: Annotated[str, typer.Option(help="comma list of token budgets per problem")] = "256,512,1024,2048,4096",
    scorer: Annotated[str, typer.Option(help="default scorer for algorithms that need one")] = "self",
    model: ModelOpt = "smollm2-135m",
    task: TaskOpt = "gym:chain_sum",
    task_arg: TaskArgOpt = None,
    n: Annotated[int, typer.Option(help="problems (held-out: the test split)")] = 100,
    seed: int = 0,
    split: Annotated[str, typer.Option(help="test (held-out) or train: training-split problems, e.g. a "
                                       "validation set with --skip past those labels were collected on; the oracle scorer "
                                       "(reference answers) is allowed here only")] = "test",
    skip: Annotated[int, typer.Option(help="skip the split's first SKIP problems")] = 0,
    arg: Annotated[list[str] | None, typer.Option("--arg", help="algo.key=value, e.g. mcts.k=4; repeatable")] = None,
    temperature: Annotated[float, typer.Option(help=_help(S, "temperature"))] = S["temperature"].default,
    step_tokens: Annotated[int, typer.Option(help=_help(S, "step_tokens"))] = S["step_tokens"].default,
    rollout_tokens: Annotated[int, typer.Option(help=_help(S, "rollout_tokens"))] = S["rollout_tokens"].default,
    max_depth: Annotated[int, typer.Option(help=_help(S, "max_depth"))] = S["max_depth"].default,
    batch: Annotated[int, typer.Option(help=_help(S, "batch"))] = S["batch"].default,
    parallel: Annotated[int, typer.Option(help=_help(S, "parallel"))] = S["parallel"].default,
    merge_duplicates: Annotated[bool, typer.Option("--merge-duplicates", help=_help(S, "merge_duplicates"))] = False,
    out_dir: Annotated[Path | None, typer.Option("--out", help="sweep directory (default runs/sweep-<time>)")] = None,
) -> None:
    """Every algorithm at every budget on the same problems: sweep.json and accuracy_vs_tokens.png."""
    quiet_libraries()
    from sharpen import api
    from sharpen.search.sweep import parse_algo_options, parse_budgets

    budget_list, options = parse_budgets(budgets), parse_algo_options(_kv(arg))
    settings = _settings(temperature=temperature, step_tokens=step_tokens, rollout_tokens=rollout_tokens,
                         max_depth=max_depth, batch=batch, parallel=parallel,
                         merge_duplicates=merge_duplicates)
    results, sweep_dir = api.sweep(algos.split(","), budget_list, scorer, model, task, n, seed, options, settings,
                                   _kv(task_arg), out=out_dir, progress=progress_bar, split=split, skip=skip)
    from sharpen.search.sweep import sweep_rows

    out.print(_rows_table(f"accuracy (generated / forward tokens per problem: policy + verifier; paired change vs the "
                          f"first row, 95% CI), {split} split, n={n}",
                          sweep_rows(results, sorted({r["budget"] for r in results}))))
    out.print(f"sweep: {sweep_dir / 'sweep.json'}   plot: {sweep_dir / 'accuracy_vs_tokens.png'}")


@app.command("serve")
def serve_cmd(
    model: ModelOpt = "smollm2-135m",
    task: Annotated[str | None, typer.Option(help="prompt template, answer extraction and vote key: gym:<dataset> "
                                             "(default: a generic math-answer task)")] = None,
    task_arg: TaskArgOpt = None,
    algo: Annotated[str, typer.Option(help="default algorithm of a request without search.algo")] = "vote",
    scorer: Annotated[list[str] | None, typer.Option(help="a scorer requests may name in search.scorer: NAME=SPEC "
                                                     "(e.g. fast=rollout:k=2, prm=prm:<path>), or a bare SPEC "
                                                     "named after its kind (rollout); repeatable; the first is "
                                                     "the default; all are loaded before the port is bound")] = None,
    budget: Annotated[int, typer.Option(help="default generated-token budget per request")] = 256,
    max_budget: Annotated[int, typer.Option(help="largest budget a request may ask for")] = 4096,
    queue: Annotated[int, typer.Option(help="requests queued or searched at once; beyond: 429")] = 64,
    timeout: Annotated[float, typer.Option(help="seconds a request may take; beyond: 504, search stopped")] = 600.0,
    host: Annotated[str, typer.Option(help="address to bind (127.0.0.1: this machine only; another needs an API "
                                      "key or --insecure)")] = "127.0.0.1",
    port: int = 8000,
    api_key: Annotated[str | None, typer.Option(help="require Authorization: Bearer KEY (visible in ps: prefer "
                                                "--api-key-file or the environment variable SHARPEN_API_KEY)")] = None,
    api_key_file: Annotated[Path | None, typer.Option(help="a file whose first line is the API key")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="serve on a non-loopback --host without an API "
                                           "key")] = False,
    max_body: Annotated[int, typer.Option(help="largest request body in bytes; beyond: 413")] = 1_000_000,
    temperature: Annotated[float, typer.Option(help=_help(S, "temperature"))] = S["temperature"].default,
    step_tokens: Annotated[int, typer.Option(help=_help(S, "step_tokens"))] = S["step_tokens"].default,
    rollout_tokens: Annotated[int, typer.Option(help=_help(S, "rollout_tokens"))] = S["rollout_tokens"].default,
    max_depth: Annotated[int, typer.Option(help=_help(S, "max_depth"))] = S["max_depth"].default,
    batch: Annotated[int, typer.Option(help="rows per forward pass of the backend: the merged requests' samples "
                                       "(256, as vLLM's max_num_seqs: 32 vote requests of 8)")] = 256,
    dtype: Annotated[str, typer.Option(help="weights' precision: auto (float32 on CPU, bfloat16 on GPU), float32, "
                                       "bfloat16 (faster on CPUs with AVX-512 BF16, but a request's answer can "
                                       "then depend on its batch-mates), float16")] = "auto",
    continuous_batching: Annotated[bool, typer.Option(help="row-level continuous batching: a request's samples join "
                                                      "the decode already running and leave it when done; slower "
                                                      "than merged calls on a 2-core CPU so far (docs/results/serving.md)")] = False,
) -> None:
    """Test-time search behind an OpenAI-compatible endpoint: POST /v1/chat/completions with a `search` object."""
    quiet_libraries()
    import os

    from sharpen.serve import ServeConfig, check_binding, parse_scorers, read_api_key, serve

    if queue < 1 or budget < 1 or max_budget < budget or timeout <= 0 or max_body < 1:
        raise ConfigError("--queue, --budget, --max-body >= 1, --max-budget >= --budget, --timeout > 0 "
                          "(fix: positive values)")
    key = read_api_key(api_key, api_key_file, dict(os.environ))
    check_binding(host, key, insecure)
    scorers = parse_scorers(scorer)
    from sharpen.backends.hf import parse_dtype

    parse_dtype(dtype)  # a bad --dtype fails before the model loads
    settings = _settings(temperature=temperature, step_tokens=step_tokens, rollout_tokens=rollout_tokens,
                         max_depth=max_depth, batch=batch)
    cfg = ServeConfig(algo=algo, scorers=scorers, budget=budget, max_budget=max_budget, queue=queue, wave=queue,
                      timeout=timeout, api_key=key, continuous=continuous_batching, max_body=max_body)
    err.print(f"sharpen serve: {model} on http://{host}:{port}/v1 (default search: {algo}, budget {budget}; "
              f"scorers: {', '.join(scorers) or 'none'})", highlight=False, soft_wrap=True)
    serve(model, task, host, port, cfg, settings, _kv(task_arg), batch, dtype)


@app.command("algos")
def algos_cmd() -> None:
    """The registered search algorithms and scorers, with their options and defaults."""
    from sharpen.search.registry import algorithms, describe_fields, scorer_grammar, scorers

    table = Table("algorithm", "needs a scorer", "options (--arg key=value)", "what it is")
    for name, e in algorithms().items():
        table.add_row(name, "yes" if e.needs_scorer else "no", describe_fields(e.options) or "-", e.summary)
    out.print(table)
    grammar = scorer_grammar()
    table = Table("scorer (--scorer)", "options (name:key=value)", "what it is")
    for name, e in scorers().items():
        table.add_row(grammar[name], describe_fields(e.options) or "-", e.summary + (" [--collect only]" if e.collect_only else ""))
    out.print(table)


@app.command("view")
def view_cmd(
    trees: Annotated[Path, typer.Argument(help="trees.jsonl from `sharpen search`")],
    out_html: Annotated[Path | None, typer.Option("--out", help="HTML file (default: next to the trees)")] = None,
) -> None:
    """One static HTML file that draws each problem's tree; needs no network."""
    from sharpen.report.viewer import write_viewer

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


HoldoutOpt = Annotated[float, typer.Option("--holdout", help="share of problems held out into <out>-heldout (split by problem id)")]
AllowTestOpt = Annotated[bool, typer.Option("--allow-test-split", help="build from trees searched on test problems "
                                            "(refused by default: it leaks the test set into training)")]
RoundOpt = Annotated[int, typer.Option("--round", help="the loop round, stored as provenance")]


def _build(kind: str, trees: Path, out_dir: Path, holdout: float, allow_test_split: bool, **options) -> None:
    quiet_libraries()
    from sharpen import api

    for name, summary, path in api.build(kind, trees, out_dir, holdout, allow_test_split, **options):
        out.print(f"{name}: {summary} -> {path}")


@build_app.command("pairs")
def build_pairs(
    trees: TreesOpt,
    out_dir: DataOutOpt,
    recipe: Annotated[str, typer.Option(help="mcts-dpo (sibling steps by value) or step-dpo (first wrong step)")] = "mcts-dpo",
    min_margin: Annotated[float, typer.Option(help="min value gap chosen - rejected (mcts-dpo)")] = 0.1,
    source: Annotated[str, typer.Option(help="step values: mc, q, score or value")] = "mc",
    pairing: Annotated[str, typer.Option(help="mcts-dpo: best_worst (one pair per prefix) or all sibling pairs")] = "best_worst",
    trace_pairs: Annotated[int, typer.Option(help="also add up to this many whole-solution pairs per problem, a "
                                             "correct solution against a wrong one (Iterative RPO)")] = 0,
    round_: RoundOpt = 0,
    holdout: HoldoutOpt = 0.0,
    allow_test_split: AllowTestOpt = False,
) -> None:
    """Step preference pairs (TRL DPO format) with provenance."""
    _build("pairs", trees, out_dir, holdout, allow_test_split, recipe=recipe, min_margin=min_margin, source=source,
           pairing=pairing, round=round_, trace_pairs=trace_pairs)


@build_app.command("labels")
def build_labels(trees: TreesOpt, out_dir: DataOutOpt, threshold: float = 0.5, source: str = "mc",
                 round_: RoundOpt = 0, holdout: HoldoutOpt = 0.0, allow_test_split: AllowTestOpt = False,
                 outcome_steps: Annotated[bool, typer.Option(
                     "--outcome-steps", help="split whole sampled solutions (vote, bon) into their steps, each "
                     "labelled with the solution's outcome (an outcome-supervised value model)")] = False) -> None:
    """Step labels for a PRM: each step with its value and a binary label at a threshold."""
    _build("labels", trees, out_dir, holdout, allow_test_split, threshold=threshold, source=source, round=round_,
           outcome_steps=outcome_steps)


@build_app.command("traces")
def build_traces(trees: TreesOpt, out_dir: DataOutOpt, round_: RoundOpt = 0, holdout: HoldoutOpt = 0.0,
                 allow_test_split: AllowTestOpt = False) -> None:
    """Verified, deduplicated full solutions for SFT (rejection-sampling fine-tuning)."""
    _build("traces", trees, out_dir, holdout, allow_test_split, round=round_)


TrainModel = Annotated[str, typer.Option("--model", help="policy to train: built-in name, HF id or local dir")]
TrainData = Annotated[Path, typer.Option("--data", help="dataset dir from `sharpen build`")]
TrainOut = Annotated[Path, typer.Option("--out", help="output dir: checkpoint-N/, adapter/, merged/")]
MaxSteps = Annotated[int, typer.Option("--max-steps")]
FullFT = Annotated[bool, typer.Option("--full", help="full fine-tuning instead of LoRA")]
TrainArgs = Annotated[list[str] | None, typer.Option("--arg", help="any trainer config field as key=value "
                                                     "(TRL's names, e.g. warmup_steps=0.1, lora_r=8); repeatable")]


def _train(kind: str, model: str, data: Path | None, out_dir: Path, args: list[str] | None, **options) -> None:
    quiet_libraries()
    from sharpen import api

    options["lora"] = not options.pop("full")
    from sharpen.core.tasks import parse_task_args

    options |= parse_task_args(args, "--arg", "warmup_steps=0.1")
    with err.status(f"{kind.upper()} on {data or options.get('task')}, {options['max_steps']} steps"):
        merged = api.train(kind, model, data, out_dir, **options)
    use = f"--scorer prm:{merged}" if kind == "prm" else f"--model {merged}"
    out.print(f"{kind} model: {merged}  (use it with {use})")


@train_app.command("dpo")
def train_dpo_cmd(model: TrainModel, data: TrainData, out_dir: TrainOut, max_steps: MaxSteps = 100,
                  batch_size: int = 8, lr: float = 5e-5, beta: float = 0.1,
                  sft_weight: Annotated[float, typer.Option(help="NLL on the chosen step added to DPO (RPO); 0 = plain DPO")] = 0.0,
                  full: FullFT = False, seed: int = 0, arg: TrainArgs = None) -> None:
    """Step-level DPO with TRL's DPOTrainer (LoRA by default; the reference is the policy before training)."""
    _train("dpo", model, data, out_dir, arg, max_steps=max_steps, per_device_train_batch_size=batch_size,
           learning_rate=lr, full=full, seed=seed, beta=beta, sft_weight=sft_weight)


@train_app.command("sft")
def train_sft_cmd(model: TrainModel, data: TrainData, out_dir: TrainOut, max_steps: MaxSteps = 100,
                  batch_size: int = 8, lr: float = 5e-5, full: FullFT = False, seed: int = 0,
                  arg: TrainArgs = None) -> None:
    """Rejection-sampling fine-tuning with TRL's SFTTrainer on verified traces."""
    _train("sft", model, data, out_dir, arg, max_steps=max_steps, per_device_train_batch_size=batch_size,
           learning_rate=lr, full=full, seed=seed)


@train_app.command("prm")
def train_prm_cmd(model: TrainModel, data: TrainData, out_dir: TrainOut, max_steps: MaxSteps = 100,
                  batch_size: int = 8, lr: float = 5e-5, full: FullFT = False, seed: int = 0,
                  soft: Annotated[bool, typer.Option("--soft", help="train on the Monte Carlo value itself "
                                                     "(soft labels) instead of value >= threshold")] = False,
                  arg: TrainArgs = None) -> None:
    """A process reward model: token classification on step-boundary tokens (transformers Trainer)."""
    _train("prm", model, data, out_dir, arg, max_steps=max_steps, per_device_train_batch_size=batch_size,
           learning_rate=lr, full=full, seed=seed, soft=soft)


@train_app.command("grpo")
def train_grpo_cmd(model: TrainModel, out_dir: TrainOut, task: TaskOpt = "gym:chain_sum", task_arg: TaskArgOpt = None,
                   data: Annotated[Path | None, typer.Option("--data", help="a prompts dataset (default: the task's "
                                                             "training problems)")] = None,
                   problems: Annotated[int, typer.Option(help="training problems, without --data")] = 64,
                   max_steps: MaxSteps = 100, lr: float = 5e-5, full: FullFT = False, seed: int = 0,
                   arg: TrainArgs = None) -> None:
    """Online RL with TRL's GRPOTrainer, the task's verifier as the reward (LoRA by default)."""
    from sharpen.core.tasks import parse_task_args

    _train("grpo", model, data, out_dir, arg, max_steps=max_steps, learning_rate=lr, full=full, seed=seed,
           task=task, task_args=parse_task_args(task_arg), problems=problems)


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
    from sharpen import api

    metrics = api.train_eval(kind, model, data, ref=ref, beta=beta)
    if as_json:
        print(json.dumps(metrics))
        return
    table = Table(title=f"{kind} on {data}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    flat = {f"{k}.{k2}" if isinstance(v, dict) else k: v2 for k, v in metrics.items()
            for k2, v2 in (v.items() if isinstance(v, dict) else [(k, v)])}
    for k, v in flat.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    out.print(table)


# -- the loop -------------------------------------------------------------------------------
TrackerOpt = Annotated[str | None, typer.Option("--tracker", help="also log per-round numbers: tensorboard or mlflow")]


def _check_tracker(tracker: str | None) -> None:
    if tracker is not None:
        from sharpen.report.tracking import check_tracker

        check_tracker(tracker)


def _log_tracker(run: Path, tracker: str | None) -> None:
    if tracker is not None:
        from sharpen.report.tracking import log_to_tracker

        out.print(f"{tracker}: {log_to_tracker(run, tracker)}")


@app.command("run")
def run_cmd(
    config: Annotated[Path, typer.Argument(help="YAML config (see configs/)")],
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in its run dir")] = False,
    out_dir: Annotated[Path | None, typer.Option("--out", help="run directory (default runs/<name>)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config field: train.max_steps=5")] = None,
    tracker: TrackerOpt = None,
    ray: RayOpt = None,
    actors: Annotated[int | None, typer.Option(help="Ray actors (sets the config's cluster.actors; default 2)")] = None,
    seeds: Annotated[str | None, typer.Option("--seeds", help="run the config once per seed (comma-separated, e.g. "
                                              "0,1,2), each in <out>/seed-<s>/, then one combined report in <out> "
                                              "(default runs/<name>); rerunning resumes and skips finished seeds")] = None,
) -> None:
    """Rounds of collect -> build -> train -> evaluate; ends with a before/after table and the report.

    With --seeds: once per seed, one after another; --out names the directory that holds the seed
    runs and the combined report; --resume is implied."""
    if seeds is not None:
        from sharpen.loop.seeds import parse_seeds

        _run_seeds(config, parse_seeds(seeds), out_dir, set_, tracker, ray, actors)
        return
    quiet_libraries()
    _check_tracker(tracker)
    from sharpen import api
    from sharpen.report.run import collect_facts, summary_table

    result = api.run(config, out=out_dir, resume=resume, overrides=_kv(set_), progress=progress_bar,
                     say=lambda s: err.print(s, highlight=False), ray=ray, actors=actors)
    cfg = result["config"]
    out.print(_rows_table(f"{cfg.name}: {cfg.recipe}, {cfg.rounds} rounds, held-out n={cfg.eval.n}",
                          summary_table(collect_facts(Path(result["run"])))))
    p = result["paired"]
    out.print(f"greedy accuracy round {p['from_round']} -> {p['to_round']}: {p['before']:.3f} -> {p['after']:.3f} "
              f"({p['delta']:+.3f}, paired bootstrap 95% CI [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}])")
    out.print(f"report: {result['report']}")
    _log_tracker(Path(result["run"]), tracker)


def _run_seeds(config: Path, seeds: list[int], out_dir: Path | None, set_: list[str] | None, tracker: str | None,
               ray: str | None, actors: int | None) -> None:
    quiet_libraries()
    _check_tracker(tracker)
    from sharpen import api
    from sharpen.loop.seeds import seeds_table

    result = api.run_seeds(config, seeds, out=out_dir, overrides=_kv(set_), progress=progress_bar,
                           say=lambda s: err.print(s, highlight=False), ray=ray, actors=actors)
    facts = result["facts"]
    out.print(_rows_table(f"held-out greedy accuracy over {len(facts['seeds'])} seeds (paired change, 95% CI)",
                          seeds_table(facts)))
    out.print(facts["problems"], highlight=False, soft_wrap=True)
    out.print(f"report: {result['report']}")
    for run in result["runs"].values():
        _log_tracker(Path(run), tracker)


@app.command("report")
def report_cmd(run: Annotated[Path, typer.Argument(help="a run directory, or the parent of `sharpen run --seeds`")],
               tracker: TrackerOpt = None) -> None:
    """Write report.md and report.html (with plots) from a run directory alone (for a --seeds
    parent: the combined report; --tracker then logs each seed's run)."""
    from sharpen.loop.seeds import is_seeds_dir, seed_dirs, write_seeds_report
    from sharpen.report.run import write_report

    _check_tracker(tracker)
    if is_seeds_dir(run):
        out.print(f"report: {write_seeds_report(run)}")
        for d in seed_dirs(run).values():
            _log_tracker(d, tracker)
        return
    out.print(f"report: {write_report(run)}")
    _log_tracker(run, tracker)


def main() -> None:
    try:
        app(standalone_mode=True)
    except SharpenError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
