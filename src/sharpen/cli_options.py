"""The options of the `sharpen` commands, declared once: the fields of the pydantic models a
command is built from (`SearchSettings` for search, sweep and serve, `EvalConfig` for eval,
`ServeConfig` for serve) become typer options with the field's default and description, so a new
field is a new option, documented as in a YAML config or an HTTP body. A command's function takes
`**o` and `params(...)` gives it the signature typer reads."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.table import Column, Table

from sharpen.backends.models import DEFAULT_MODEL
from sharpen.core.tasks import DEFAULT_TASK
from sharpen.search.credit import LABEL_THRESHOLD
from sharpen.search.denoise import REWARDS
from sharpen.search.evaluate import EvalRequest
from sharpen.search.process import SearchSettings
from sharpen.search.spec import SearchCommand, SweepRequest
from sharpen.serve import ServeConfig
from sharpen.train.common import SharpenArgs

Param = inspect.Parameter


def opt(name: str, annotation: Any, default: Any = None, help: str | None = None, *decls: str,
        argument: bool = False) -> Param:
    """One option (or, with `argument`, a positional argument) of a command; `decls` are its flags
    (default: `--name`, with dashes); a required one has `default=...`."""
    info = typer.Argument(help=help) if argument else typer.Option(*decls, help=help)
    return Param(name, Param.KEYWORD_ONLY, annotation=Annotated[annotation, info],
                 default=Param.empty if default is ... else default)


def from_model(model: type[BaseModel], names: list[str] | None = None, defaults: dict[str, Any] | None = None,
               helps: dict[str, str] | None = None, decls: dict[str, tuple[str, ...]] | None = None) -> list[Param]:
    """An option per field of `model` (`names`, default: every described field, in order): its
    type, default and description; a bool is a flag (`--name`) unless `decls` names it otherwise.
    `defaults` and `helps` are for a field several commands share with their own defaults."""
    out = []
    for name in names or [n for n, f in model.model_fields.items() if f.description]:
        f = model.model_fields[name]
        flags = (decls or {}).get(name) or ((f"--{name.replace('_', '-')}",) if f.annotation is bool else ())
        out.append(opt(name, f.annotation, (defaults or {}).get(name, f.default),
                       (helps or {}).get(name, f.description or ""), *flags))
    return out


def fields_of(o: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    """The values in a command's options `o` that are fields of `model`."""
    return {k: v for k, v in o.items() if k in model.model_fields}


def settings_of(o: dict[str, Any]) -> SearchSettings:
    """The search settings among a command's options `o`, validated."""
    return SearchSettings.parse(fields_of(o, SearchSettings), "search settings")


def params(*groups: list[Param] | Param) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command function `fn(**o)` these parameters (typer reads `__signature__`)."""
    flat = [p for g in groups for p in (g if isinstance(g, list) else [g])]

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__signature__ = inspect.Signature(flat)  # type: ignore[attr-defined]
        return fn

    return deco


def kv(items: list[str] | None) -> dict:
    """`key=value` items (values read as YAML) into a dict."""
    from sharpen.core.tasks import parse_task_args

    return parse_task_args(items)


def rows_table(title: str, rows: list[list[str]]) -> Table:
    """A table from a header row and data rows; the first column left-aligned, the rest right."""
    table = Table(title=title)
    for i, c in enumerate(rows[0]):
        table.add_column(c, justify="left" if i == 0 else "right", no_wrap=c.startswith("change"))
    for r in rows[1:]:
        table.add_row(*r)
    return table


# -- shared options ---------------------------------------------------------------------------
MODEL = opt("model", str, DEFAULT_MODEL, "built-in name, HF id or local model directory", "--model")
TASK_HELP = "gym:<dataset>, gsm8k:<file.jsonl> or math:<file.jsonl>"
TASK = opt("task", str, DEFAULT_TASK, TASK_HELP, "--task")
TASK_ARG = opt("task_arg", list[str] | None, None, "key=value for a gym task config; repeatable", "--task-arg")
# search and sweep also run a denoising process: digits-ddpm on the digits task
SEARCH_MODEL = opt("model", str, DEFAULT_MODEL, "built-in name (`sharpen models list`), HF id or local model "
                   "directory; or digits-ddpm (or a diffusers pipeline directory), a denoising model searched on "
                   "--task digits", "--model")
SEARCH_TASK = opt("task", str, DEFAULT_TASK, f"{TASK_HELP}; or digits (draw a digit, with a denoising --model)",
                  "--task")
SEARCH_TASK_ARG = opt("task_arg", list[str] | None, None, "key=value for a gym task config, or for digits: steps=50 "
                      f"(reverse steps, one NFE each), classes=10, reward={'|'.join(REWARDS)}; repeatable", "--task-arg")
SEED = opt("seed", int, 0)
JSON = opt("as_json", bool, False, "print the metrics as one JSON object on stdout", "--json")
RAY_HELP = ("shard the problems over Ray actors: local (a local cluster), auto (this machine's cluster) or "
            "ray://HEAD:10001; the same results")
RAY = opt("ray", str | None, None, RAY_HELP, "--ray")
ACTORS = opt("actors", int, 2, "Ray actors (with --ray), one backend each")


def out_opt(what: str = "run directory", default: str = "runs/<command>-<time>") -> Param:
    return opt("out_dir", Path | None, None, f"{what} (default {default})", "--out")


# -- eval, search, sweep, serve ----------------------------------------------------------------
EVAL = [MODEL, TASK, TASK_ARG, *from_model(EvalRequest, ["n", "samples", "temperature", "max_tokens"]), SEED,
        *from_model(EvalRequest, ["batch"]), out_opt(), RAY, ACTORS, JSON]

SETTINGS = from_model(SearchSettings)

SEARCH = [
    *from_model(SearchCommand, ["algo", "scorer", "budget"],
                helps={"scorer": SearchCommand.model_fields["scorer"].description + " (default: self, x0-reward with "
                                                                                   "--task digits)"}),
    SEARCH_MODEL, SEARCH_TASK, SEARCH_TASK_ARG, *from_model(SearchCommand, ["n", "skip"]), SEED,
    *from_model(SearchCommand, ["collect"]),
    opt("arg", list[str] | None, None, "algorithm option key=value (e.g. k=4, c_puct=1.5; `sharpen algos` lists "
        "them); repeatable", "--arg"),
    *SETTINGS, out_opt(), RAY, ACTORS, JSON]

SWEEP = [
    *from_model(SweepRequest, ["algos", "budgets", "scorer"]),
    SEARCH_MODEL, SEARCH_TASK, SEARCH_TASK_ARG, *from_model(SweepRequest, ["n"]), SEED,
    *from_model(SweepRequest, ["split", "skip"]),
    opt("arg", list[str] | None, None, "algo.key=value, e.g. mcts.k=4; repeatable", "--arg"),
    *SETTINGS, out_opt("sweep directory", "runs/sweep-<time>")]

SERVE = [
    MODEL,
    opt("task", str | None, None, "prompt template, answer extraction and vote key: gym:<dataset> (default: a "
        "generic math-answer task)"),
    TASK_ARG, *from_model(ServeConfig, ["algo"]),
    opt("scorer", list[str] | None, None, "a scorer requests may name in search.scorer: NAME=SPEC (e.g. "
        "fast=rollout:k=2, prm=prm:<path>), or a bare SPEC named after its kind (rollout); repeatable; the first "
        "is the default; all are loaded before the port is bound"),
    *from_model(ServeConfig, ["budget", "max_budget", "queue", "timeout", "host", "port", "api_key", "api_key_file",
                              "insecure", "max_body"]),
    *from_model(SearchSettings, ["temperature", "step_tokens", "rollout_tokens", "max_depth"]),
    *from_model(ServeConfig, ["batch", "dtype", "continuous"],
                decls={"continuous": ("--continuous-batching/--no-continuous-batching",)}),
]

MODELS_PREPARE = [
    opt("name", str, ..., "a built-in model (`sharpen models list`)", argument=True),
    opt("force", bool, False, "prepare it again, replacing the prepared one (e.g. one made by an older sharpen)",
        "--force")]

# -- the loop -----------------------------------------------------------------------------------
TRACKER = opt("tracker", str | None, None, "also log per-round numbers: tensorboard or mlflow", "--tracker")
RUN = [
    opt("config", Path, ..., "YAML config (see configs/)", argument=True),
    opt("resume", bool, False, "continue the run in its run dir", "--resume"),
    out_opt(default="runs/<name>"),
    opt("set_", list[str] | None, None, "override a config field: train.max_steps=5", "--set"),
    TRACKER, RAY,
    opt("actors", int | None, None, "Ray actors (sets the config's cluster.actors; default 2)"),
    opt("seeds", str | None, None, "run the config once per seed (comma-separated, e.g. 0,1,2), each in "
        "<out>/seed-<s>/, then one combined report in <out> (default runs/<name>); rerunning resumes and skips "
        "finished seeds", "--seeds"),
]

# -- data and training --------------------------------------------------------------------------
TREES = opt("trees", Path, ..., "trees.jsonl from `sharpen search`", "--trees")
DATA_OUT = opt("out_dir", Path, ..., "dataset directory to write", "--out")
BUILD_COMMON = [
    opt("round_", int, 0, "the loop round, stored as provenance", "--round"),
    opt("holdout", float, 0.0, "share of problems held out into <out>-heldout (split by problem id)", "--holdout"),
    opt("allow_test_split", bool, False, "build from trees searched on test problems (refused by default: it leaks "
        "the test set into training)", "--allow-test-split")]
BUILD_PAIRS = [
    TREES, DATA_OUT,
    opt("recipe", str, "mcts-dpo", "mcts-dpo (sibling steps by value) or step-dpo (first wrong step)"),
    opt("min_margin", float, 0.1, "min value gap chosen - rejected (mcts-dpo)"),
    opt("source", str, "mc", "step values: mc, q, score or value"),
    opt("pairing", str, "best_worst", "mcts-dpo: best_worst (one pair per prefix) or all sibling pairs"),
    opt("trace_pairs", int, 0, "also add up to this many whole-solution pairs per problem, a correct solution "
        "against a wrong one (Iterative RPO)"), *BUILD_COMMON]
BUILD_LABELS = [
    TREES, DATA_OUT, opt("threshold", float, LABEL_THRESHOLD, "label = value >= threshold"), opt("source", str, "mc"), *BUILD_COMMON,
    opt("outcome_steps", bool, False, "split whole sampled solutions (vote, bon) into their steps, each labelled "
        "with the solution's outcome (an outcome-supervised value model)", "--outcome-steps")]
BUILD_TRACES = [TREES, DATA_OUT, *BUILD_COMMON]

TRAIN_MODEL = opt("model", str, ..., "policy to train: built-in name, HF id or local dir", "--model")
TRAIN_DATA = opt("data", Path, ..., "dataset dir from `sharpen build`", "--data")
TRAIN_OUT = opt("out_dir", Path, ..., "output dir: checkpoint-N/, adapter/, merged/", "--out")
MAX_STEPS = opt("max_steps", int, SharpenArgs.max_steps, None, "--max-steps")
BATCH_SIZE, LR = opt("batch_size", int, 8), opt("lr", float, SharpenArgs.learning_rate)
FULL = opt("full", bool, False, "full fine-tuning instead of LoRA", "--full")
TRAIN_ARGS = opt("arg", list[str] | None, None, "any trainer config field as key=value (TRL's names, e.g. "
                 "warmup_steps=0.1, lora_r=8); repeatable", "--arg")
TRAIN = [TRAIN_MODEL, TRAIN_DATA, TRAIN_OUT, MAX_STEPS, BATCH_SIZE, LR]
TRAIN_DPO = [*TRAIN, opt("beta", float, 0.1),
             opt("sft_weight", float, 0.0, "NLL on the chosen step added to DPO (RPO); 0 = plain DPO"),
             FULL, SEED, TRAIN_ARGS]
TRAIN_SFT = [*TRAIN, FULL, SEED, TRAIN_ARGS]
TRAIN_PRM = [*TRAIN, FULL, SEED, opt("soft", bool, False, "train on the Monte Carlo value itself (soft labels) "
                                     "instead of value >= threshold", "--soft"), TRAIN_ARGS]
TRAIN_GRPO = [TRAIN_MODEL, TRAIN_OUT, TASK, TASK_ARG,
              opt("data", Path | None, None, "a prompts dataset (default: the task's training problems)", "--data"),
              opt("problems", int, 64, "training problems, without --data"), MAX_STEPS, LR, FULL, SEED, TRAIN_ARGS]
TRAIN_EVAL = [
    opt("kind", str, ..., "dpo (reward accuracy on pairs) or prm (AUROC on step labels)", argument=True),
    opt("model", str, ..., "trained policy dir (dpo) or PRM dir (prm)", "--model"), TRAIN_DATA,
    opt("ref", str | None, None, "reference policy (dpo): the policy before training", "--ref"),
    opt("beta", float, 0.1), opt("as_json", bool, False, None, "--json")]
REPORT = [opt("run", Path, ..., "a run directory, or the parent of `sharpen run --seeds`", argument=True), TRACKER]
VIEW = [opt("trees", Path, ..., "trees.jsonl from `sharpen search`", argument=True),
        opt("out_html", Path | None, None, "HTML file (default: next to the trees)", "--out")]


def check_tracker(tracker: str | None) -> None:
    """A `--tracker` that is unknown or whose package is missing is refused before any work."""
    if tracker is not None:
        from sharpen.report.tracking import check_tracker as check

        check(tracker)


def log_tracker(run: Path, tracker: str | None) -> None:
    """With `--tracker`, log the run dir's facts to it and say where they went."""
    if tracker is not None:
        from sharpen.core.console import out
        from sharpen.report.tracking import log_to_tracker

        out.print(f"{tracker}: {log_to_tracker(run, tracker)}")


def models_table() -> Table:
    """`sharpen models list`: the built-in models (language and denoising) and whether they are prepared."""
    from sharpen.backends.models import list_models

    table = Table("name", "prepared", "path", "description")
    for m in list_models():
        table.add_row(m["name"], "yes" if m["prepared"] else "no", m["path"], m["description"])
    return table


def metrics_table(title: str, metrics: dict[str, Any]) -> Table:
    """(metric, value) rows, a nested dict's entries as `key.subkey`."""
    table = Table("metric", Column("value", justify="right"), title=title)
    for k, v in metrics.items():
        for k2, v2 in v.items() if isinstance(v, dict) else [(None, v)]:
            table.add_row(f"{k}.{k2}" if k2 is not None else k, f"{v2:.4f}" if isinstance(v2, float) else str(v2))
    return table


def algos_tables() -> list[Table]:
    """`sharpen algos`: the registered algorithms and scorers, each with its options' defaults."""
    from sharpen.search.registry import algorithms, describe_fields, scorer_grammar, scorers

    algos = Table("algorithm", "needs a scorer", "options (--arg key=value)", "what it is")
    for name, e in algorithms().items():
        algos.add_row(name, "yes" if e.needs_scorer else "no", describe_fields(e.options) or "-", e.summary)
    grammar, table = scorer_grammar(), Table("scorer (--scorer)", "options (name:key=value)", "what it is")
    for name, e in scorers().items():
        table.add_row(grammar[name], describe_fields(e.options) or "-",
                      e.summary + (" [--collect only]" if e.collect_only else ""))
    return [algos, table]
