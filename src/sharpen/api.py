"""The Python API: what the `sharpen` commands do, as functions a notebook can call.

    import sharpen

    trees, metrics = sharpen.run_search(algo="mcts", scorer="rollout:2", budget=256, n=10)
    print(metrics["accuracy"], trees[0].answer)
    sharpen.run_eval(model="smollm2-135m", n=50, config=sharpen.EvalConfig(samples=4))
    sharpen.run("configs/demo.yaml", out="runs/demo")

Every function validates its inputs before it loads a model or writes a file, and raises the typed
errors of `sharpen.core.errors` (the CLI turns them into one line and exit code 2).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sharpen.backends.base import close_all
from sharpen.backends.models import DEFAULT_MODEL
from sharpen.core.errors import ConfigError
from sharpen.core.tasks import DEFAULT_TASK
from sharpen.loop.runner import run  # noqa: F401 - part of the API
from sharpen.loop.seeds import run_seeds  # noqa: F401 - the API's `run` once per seed, with one combined report
from sharpen.search.evaluate import EvalConfig
from sharpen.search.process import SearchSettings
from sharpen.search.spec import SearchSpec, execute, load_model, load_task, make_process  # noqa: F401 - part of the API

Progress = Callable[[int], None]


def _bar(progress: Any, description: str, total: int):
    """`progress(description, total)` (a context manager yielding advance(n)), or a silent one."""
    from contextlib import nullcontext

    return progress(description, total) if progress is not None else nullcontext(None)


def new_out_dir(out: str | Path | None, prefix: str) -> Path:
    """`out`, or runs/<prefix>-<time>; refuses a path that is a file."""
    out_dir = Path(out) if out is not None else Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file (fix: pass a directory path)")
    return out_dir


RESUME_FIX = "the settings it was started with to resume it, or another --out"


def check_resume(out_dir: Path | None, record: dict[str, Any], free: tuple[str, ...],
                 normalize: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
    """Before `search`/`evaluate` reuse the rows in `out_dir`: refuse, with a one-line ConfigError
    naming the first differing field, when its config.json records other settings than `record`
    (`sharpen.core.io.refuse_changed_config`; `free` lists the fields that may differ, `normalize` maps
    a recorded config to the form `record` has). No config.json: nothing to check."""
    import json

    from sharpen.core.io import refuse_changed_config

    path = out_dir / "config.json" if out_dir is not None else None
    if path is None or not path.is_file():
        return
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        recorded = None
    if not isinstance(recorded, dict):
        raise ConfigError(f"{path} is not a config.json sharpen wrote (fix: another --out)")
    refuse_changed_config(out_dir, normalize(recorded) if normalize else recorded, record, free=free, fix=RESUME_FIX)


def _problems(task, collect: bool, n: int, seed: int, skip: int = 0):
    if n < 1:
        raise ConfigError("--n must be >= 1 (fix: e.g. --n 100)")
    if skip < 0:
        raise ConfigError(f"--skip must be >= 0, not {skip} (fix: e.g. --skip 800)")
    split = "train" if collect else "test"
    return split, task.problems(split, skip + n, seed=seed)[skip:]


def search(
    model: str = DEFAULT_MODEL,
    task: str = DEFAULT_TASK,
    algo: str = "mcts",
    scorer: str | None = None,
    budget: int = 512,
    n: int = 20,
    seed: int = 0,
    collect: bool = False,
    options: dict[str, Any] | None = None,
    settings: SearchSettings | None = None,
    task_args: dict[str, Any] | None = None,
    out: str | Path | None = None,
    progress: Any = None,
    ray: str | None = None,
    actors: int = 2,
    skip: int = 0,
) -> tuple[list, dict[str, Any]]:
    """Search `n` held-out problems (training problems with `collect`, which also allows the oracle
    scorer; None: the task's default, `self`, or `x0-reward` on `digits`), the first `n` after the split's
    first `skip`, under `budget` each (generated tokens; denoiser
    forwards, NFE, on the `digits` task). Returns the trees and the metrics (on a denoising process also
    the chosen x_0's reward, diversity and NFE); with `out`, the
    run directory gets config.json, trees.jsonl (appended per problem, resumable) and metrics.json;
    resuming a directory started with settings that change the trees is refused (`check_resume`).
    `ray` ("local", "auto" or a cluster address): shard the problems over `actors` Ray actors
    (`sharpen.search.distributed`), with the same trees as one process."""
    from sharpen.backends.models import check_model
    from sharpen.core.io import atomic_write_json
    from sharpen.core.meter import UsageMeter
    from sharpen.search.collect import search_metrics
    from sharpen.search.denoise_task import denoise_metrics, is_digits_task
    from sharpen.search.spec import check_algorithm, check_pairing, default_scorer

    check_pairing(model, task)  # a model and a task of different kinds, before anything loads
    check_algorithm(algo, task)
    scorer = default_scorer(task) if scorer is None else scorer
    denoise = is_digits_task(task)
    if denoise and ray is not None:
        raise ConfigError("--ray shards a language model's search; a denoising search runs in this process "
                          "(fix: drop --ray)")
    settings = settings or SearchSettings()
    spec = SearchSpec.checked(algo, scorer, budget, options, settings, collect=collect)
    entry, scorer = spec.entry, spec.scorer
    the_task = load_task(task, **(task_args or {}))
    split, problems = _problems(the_task, collect, n, seed, skip)
    check_model(model)
    if ray is not None:  # a cluster that does not answer is an error before anything is written
        from sharpen.search.distributed import connect

        connect(ray, actors)
    out_dir = new_out_dir(out, "search") if out is not None else None
    record = {"command": "search", "algo": algo, "scorer": scorer, "budget": budget, "model": model, "task": task,
              "task_args": task_args or {}, "n": n, "skip": skip, "seed": seed, "collect": collect,
              "args": options or {}, **settings.model_dump()}

    def parsed_args(c: dict[str, Any]) -> dict[str, Any]:  # "k": "2" from the CLI is k=2 from Python
        if c.get("algo") != algo:
            return c
        try:
            return c | {"args": entry.parse(c.get("args")).model_dump()}
        except (ConfigError, TypeError):
            return c

    # n may grow or shrink (a problem's tree does not depend on n, so a longer run extends the file);
    # batch and parallel are speed only. Every other field changes the trees.
    check_resume(out_dir, parsed_args(record), free=("n", "batch", "parallel"), normalize=parsed_args)
    backend = the_scorer = None
    try:  # the backend and a scorer's own (a prover's) are closed however the search ends
        if ray is None:
            backend = load_model(model, seed=seed, max_batch=settings.batch)
            process = spec.process(backend, the_task)
            the_scorer = spec.make_scorer(process)
        jsonl = None
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out_dir / "config.json", record)
            jsonl = out_dir / "trees.jsonl"
        batches = UsageMeter()  # the lockstep batches' own usage: what shared prefills saved
        unit = "NFE" if denoise else "tokens"
        with _bar(progress, f"{algo} ({scorer}) @ {budget} {unit}", len(problems)) as advance:
            if ray is not None:
                from sharpen.search.distributed import search_on_ray

                trees = search_on_ray(ray, actors, model, task, task_args or {}, spec, problems, seed, split, jsonl,
                                      on_progress=advance)
            else:
                trees = execute(spec, process, problems, the_scorer, seed=seed, out_jsonl=jsonl, on_progress=advance,
                                split=split, batch_meter=batches)
    finally:
        close_all(the_scorer, backend)
    metrics = search_metrics(trees, budget, batches.total) | {"algo": algo, "scorer": scorer, "split": split}
    if denoise:
        metrics |= denoise_metrics(trees)
    if out_dir is not None:
        metrics["out"] = str(out_dir)
        atomic_write_json(out_dir / "metrics.json", metrics)
    return trees, metrics


def evaluate(
    model: str = DEFAULT_MODEL,
    task: str = DEFAULT_TASK,
    n: int = 50,
    config: EvalConfig | None = None,
    task_args: dict[str, Any] | None = None,
    out: str | Path | None = None,
    progress: Any = None,
    batch: int = 32,
    ray: str | None = None,
    actors: int = 2,
) -> dict[str, Any]:
    """Greedy accuracy, pass@k, majority@K, tokens and throughput on `n` held-out problems; with
    `out`, config.json, problems.jsonl (appended per chunk, resumable) and metrics.json, and resuming
    a directory started with settings that change the rows is refused (`check_resume`).
    `ray` ("local", "auto" or a cluster address): evaluate the chunks of `config.problems_per_call`
    problems on `actors` Ray actors (`sharpen.search.distributed`), with the same rows as one process."""
    from sharpen.backends.models import check_model
    from sharpen.core.io import atomic_write_json
    from sharpen.search.evaluate import evaluate as _evaluate
    from sharpen.search.evaluate import write_metrics

    cfg = config or EvalConfig()
    the_task = load_task(task, **(task_args or {}))
    _, problems = _problems(the_task, False, n, cfg.seed)
    check_model(model)  # validates before anything is written
    out_dir = new_out_dir(out, "eval") if out is not None else None
    if batch < 1:
        raise ConfigError("--batch must be >= 1 (fix: e.g. --batch 32)")
    if ray is not None:  # a cluster that does not answer is an error before anything is written
        from sharpen.search.distributed import connect

        connect(ray, actors)
    record = {"command": "eval", "model": model, "task": task, "task_args": task_args or {}, "n": n,
              **cfg.model_dump()}
    # n may grow or shrink (a problem's row does not depend on n); problems_per_call (and `batch`,
    # not recorded) are speed only. Every other field changes the rows.
    check_resume(out_dir, record, free=("n", "problems_per_call"))
    backend = load_model(model, seed=cfg.seed, max_batch=batch) if ray is None else None
    try:
        jsonl = None
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out_dir / "config.json", record)
            jsonl = out_dir / "problems.jsonl"
        with _bar(progress, f"eval {task}", len(problems)) as advance:
            if ray is not None:
                from sharpen.search.distributed import eval_on_ray

                metrics = eval_on_ray(ray, actors, model, task, task_args or {}, problems, cfg, jsonl, batch=batch,
                                      on_progress=advance)
            else:
                metrics = _evaluate(backend, the_task, problems, cfg, out_jsonl=jsonl, on_progress=advance)
    finally:
        close_all(backend)
    metrics.update(model=model, task=task)
    if out_dir is not None:
        metrics["out"] = str(out_dir)
        write_metrics(out_dir / "metrics.json", metrics)
    return metrics


def sweep(
    algos: list[str] | None,
    budgets: list[int],
    scorer: str | None = None,
    model: str = DEFAULT_MODEL,
    task: str = DEFAULT_TASK,
    n: int = 100,
    seed: int = 0,
    options: dict[str, dict[str, Any]] | None = None,
    settings: SearchSettings | None = None,
    task_args: dict[str, Any] | None = None,
    out: str | Path | None = None,
    progress: Any = None,
    split: str = "test",
    skip: int = 0,
) -> tuple[list[dict[str, Any]], Path]:
    """Every `algo` or `algo@scorer` at every budget on the same problems; returns one metrics dict
    per (algorithm, budget) and the sweep directory (sweep.json, accuracy_vs_tokens.png).

    Problems: the first `n` of `split` after skipping `skip` (the task's problem stream is the same
    for every n, so `split="train", skip=2000` are validation problems that labels collected with
    `--collect --n 2000` never saw). Cells after the first carry `vs_first`, a paired comparison."""
    from sharpen.backends.models import check_model
    from sharpen.search.registry import parse_algo_spec
    from sharpen.search.scorers import make_scorer
    from sharpen.search.spec import check_algorithm, check_pairing, default_algos, default_scorer
    from sharpen.search.sweep import prior_cells, run_sweep

    check_pairing(model, task)
    scorer = default_scorer(task) if scorer is None else scorer
    settings = settings or SearchSettings()
    pairs = [parse_algo_spec(a, scorer) for a in (algos or default_algos(task).split(",")) if a.strip()]
    for algo, _ in pairs:
        check_algorithm(algo, task)
    if not budgets or min(budgets) < 1 or not pairs:
        raise ConfigError("--budgets and --algos must be non-empty, budgets >= 1 (fix: e.g. --budgets 256,512)")
    options = options or {}
    for algo in options:
        if algo not in {a for a, _ in pairs}:
            raise ConfigError(f"--arg names {algo!r}, which is not swept (fix: one of {', '.join(a for a, _ in pairs)})")
    if split not in ("train", "test") or skip < 0:
        raise ConfigError(f"bad --split {split!r} / --skip {skip} (fix: --split train or test, --skip >= 0)")
    for algo, sc in pairs:  # the oracle scorer reads reference answers: training split only, as --collect
        SearchSpec.checked(algo, sc, min(budgets), options.get(algo), settings, collect=split == "train")
    the_task = load_task(task, **(task_args or {}))
    if n < 1:
        raise ConfigError("--n must be >= 1 (fix: e.g. --n 100)")
    problems = the_task.problems(split, skip + n, seed=seed)[skip:]
    check_model(model)
    out_dir = new_out_dir(out, "sweep")
    header = {"model": model, "task": task, "task_args": dict(task_args or {}), "n": n, "seed": seed,
              "split": split, "skip": skip,
              "settings": settings.model_dump(exclude={"batch", "parallel"})}  # those two are speed only
    prior, prior_rows = prior_cells(out_dir, header, pairs, budgets, options)  # before any model is loaded
    backend = load_model(model, seed=seed, max_batch=settings.batch)
    scorers: dict[str | None, Any] = {}
    try:  # the backend and the scorers' own (provers) are closed however the sweep ends
        process = make_process(backend, the_task, settings)
        for _, sc in pairs:
            scorers[sc] = make_scorer(sc, process, collect=split == "train")
        results = run_sweep(process, scorers, pairs, budgets, problems, out_dir, seed=seed, options=options,
                            parallel=settings.parallel, progress=progress, header=header,
                            title=f"{model} on {task} ({split}" + (f", after {skip}" if skip else "") + f"), n={n}",
                            split=split, prior=prior, prior_rows=prior_rows)
    finally:
        close_all(*scorers.values(), backend)
    return results, out_dir


BUILDERS = ("pairs", "labels", "traces")


def build(
    kind: str,
    trees: str | Path,
    out: str | Path,
    holdout: float = 0.0,
    allow_test_split: bool = False,
    **options: Any,
) -> list[tuple[str, dict[str, Any], Path]]:
    """Build `pairs` (options: recipe mcts-dpo|step-dpo, min_margin, source, pairing, round, trace_pairs:
    that many whole-solution pairs per problem added, `sharpen.train.data.trace_pairs`),
    `labels` (threshold, source, round) or `traces` (round) from a trees file and save them; with
    `holdout`, that share of problems (by id) goes to `<out>-heldout`. Trees searched on the test
    split are refused unless `allow_test_split`. Returns (name, summary, path) per saved dataset."""
    from sharpen.core.tasks import heldout
    from sharpen.core.tree import check_trainable
    from sharpen.train import data

    if kind not in BUILDERS:
        raise ConfigError(f"unknown dataset kind {kind!r} (fix: one of {', '.join(BUILDERS)})")
    if not 0.0 <= holdout < 1.0:
        raise ConfigError(f"--holdout must be in [0, 1), got {holdout} (fix: e.g. --holdout 0.2)")
    recipe = options.pop("recipe", "mcts-dpo")
    if recipe not in ("mcts-dpo", "step-dpo"):
        raise ConfigError(f"unknown --recipe {recipe!r} (fix: mcts-dpo or step-dpo)")
    whole = options.pop("trace_pairs", 0)
    if whole < 0:
        raise ConfigError(f"--trace-pairs must be >= 0, got {whole} (fix: e.g. 2, or 0 for step pairs only)")
    path = Path(trees)
    if not path.is_file():
        raise ConfigError(f"trees file not found: {path} (fix: pass the trees.jsonl written by `sharpen search`)")
    ts = data.load_trees(path)
    check_trainable(ts, str(path), allow_test=allow_test_split)
    if kind == "pairs" and recipe == "step-dpo":  # no margin or pairing: one pair per first wrong step
        ds = data.step_dpo_pairs(ts, round=options.get("round", 0), source=options.get("source", "mc"))
    else:
        ds = {"pairs": data.step_pairs, "labels": data.step_labels, "traces": data.verified_traces}[kind](ts, **options)
    if kind == "pairs":
        ds = data.with_trace_pairs(ds, ts, whole, round=options.get("round", 0))
    out = Path(out)
    saved = []
    if holdout > 0:
        flags = [heldout(pid, holdout) for pid in ds["problem_id"]]
        held = ds.select([i for i, f in enumerate(flags) if f])
        ds = ds.select([i for i, f in enumerate(flags) if not f])
        saved.append((f"{kind} (held out)", data.summary(held), data.save_dataset(held, out.with_name(out.name + "-heldout"))))
    saved.append((kind, data.summary(ds), data.save_dataset(ds, out)))
    return saved


def train(kind: str, model: str, data: str | Path | None, out: str | Path, **options: Any) -> Path:
    """Train a policy with DPO, SFT or GRPO, or a PRM, on a built dataset; returns the merged model dir.
    GRPO needs no dataset (`data=None`): it samples completions of the `task` option's training
    problems (`problems` of them) and rewards them with the task's verifier.

    `options`: any field of the trainer's config (`sharpen.train.TRAINERS[kind].config`: TRL's
    `DPOConfig`/`SFTConfig` or transformers' `TrainingArguments` plus `SharpenArgs`), by its TRL
    name: `max_steps`, `learning_rate`, `per_device_train_batch_size`, `beta`, `lora`, `soft`, ..."""
    from sharpen.backends.models import resolve_model
    from sharpen.train import get_trainer, make_config

    trainer = get_trainer(kind)  # an unknown trainer is a one-line error before anything is loaded
    resolve_model(model)
    if data is None and not trainer.needs_data:
        if not options.get("task"):
            raise ConfigError(f"{kind} without --data needs a task (fix: --task gym:chain_sum, or --data a prompts dataset)")
    elif data is None or not Path(data).is_dir():
        raise ConfigError(f"dataset dir not found: {data} (fix: run `sharpen build ...` first)")
    steps = options.get("max_steps", 100)
    if isinstance(steps, int) and steps >= 1:
        options.setdefault("save_steps", max(1, min(50, steps // 4)))
    cfg = make_config(kind, "train", model=model, data=str(data or ""), output_dir=str(out), **options)
    if cfg.max_steps < 1 or cfg.per_device_train_batch_size < 1 or cfg.learning_rate <= 0:
        raise ConfigError("max_steps and the batch size must be >= 1 and the learning rate > 0 (fix: positive values)")
    return Path(trainer.train(cfg))


def train_eval(kind: str, model: str, data: str | Path, ref: str | None = None, beta: float = 0.1) -> dict[str, Any]:
    """Held-out quality of a trained model: DPO reward accuracy on pairs, or PRM AUROC (bootstrap 95% CI)."""
    from sharpen.backends.models import resolve_model
    from sharpen.train.data import load_dataset_dir

    if kind not in ("dpo", "prm"):
        raise ConfigError(f"unknown kind {kind!r} (fix: dpo or prm)")
    if not Path(data).is_dir():
        raise ConfigError(f"dataset dir not found: {data} (fix: run `sharpen build ... --holdout 0.2` first)")
    if kind == "dpo":
        from sharpen.train.metrics import dpo_reward_accuracy

        policy = str(resolve_model(model))
        return dpo_reward_accuracy(policy, str(resolve_model(ref or model)), load_dataset_dir(data), beta=beta)
    from sharpen.train.metrics import prm_auroc

    return prm_auroc(model, load_dataset_dir(data))
