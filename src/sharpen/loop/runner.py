"""`sharpen run`: rounds of collect -> build -> train -> evaluate, resumable after kill -9.

Round 0 evaluates the starting policy. Round r (1..R) searches training problems with round r-1's
model (the oracle scorer is allowed here: this is training-data collection), builds datasets from
the trees, trains with TRL, and evaluates the new policy on the same held-out problems (an online
recipe, `grpo`, searches nothing: collect writes the round's problems, build their prompts, and the
trainer samples its own completions). Each stage is recorded in the manifest when finished; a stage
that was interrupted restarts, and collection/evaluation skip problems already written to their JSONL.
A recipe that trains the `digits-ddpm` denoiser runs the same stages in `DenoiseRunner` (`runner_for`)."""

from __future__ import annotations

import gc
import json
import math
import random
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from sharpen.core.errors import ConfigError
from sharpen.core.io import atomic_write_json, atomic_write_text, read_jsonl
from sharpen.core.seeding import derive_seed
from sharpen.core.stats import auroc
from sharpen.loop.config import LoopConfig, dump
from sharpen.loop.manifest import Manifest
from sharpen.loop.recipes import get_recipe
from sharpen.search.credit import scores_are_monte_carlo

ProgressFactory = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]
Say = Callable[[str], None]


def _no_progress(description: str, total: int) -> AbstractContextManager[Callable[[int], None]]:
    return nullcontext(lambda n=1: None)


class LoopRunner:
    def __init__(self, cfg: LoopConfig, run_dir: Path, progress: ProgressFactory | None = None, say: Say | None = None):
        self.cfg = cfg
        self.run = Path(run_dir)
        self.progress = progress or _no_progress
        self.say = say or (lambda s: None)
        self.recipe = get_recipe(cfg.recipe)
        self.task = self.load_task()
        need = cfg.collect.problems * cfg.rounds
        self.spare_pool: list = []  # collect.screen's extra candidates: the pool's unused problems, shuffled
        if cfg.collect.pool is None:
            self.train_pool = self.draw("train", need)
        else:  # validated: pool >= need
            pool = self.draw("train", cfg.collect.pool)
            self.train_pool = random.Random(derive_seed(cfg.seed, "train-pool")).sample(pool, need)
            picked = {p.id for p in self.train_pool}
            self.spare_pool = [p for p in pool if p.id not in picked]
            random.Random(derive_seed(cfg.seed, "spare-pool")).shuffle(self.spare_pool)
        if cfg.eval.split == "test":
            self.test = self.draw("test", cfg.eval.n)
        else:  # validated: the pool holds eval.n problems beyond what the rounds train on
            self.test, self.spare_pool = self.spare_pool[: cfg.eval.n], self.spare_pool[cfg.eval.n :]
        self.manifest = Manifest(self.run)

    def load_task(self) -> Any:
        """The run's task (`task`, `task_args`)."""
        from sharpen.core.tasks import load_task

        return load_task(self.cfg.task, self.cfg.task_args)

    def draw(self, split: str, n: int) -> list:
        """The first `n` problems of the task's `split`, seeded by the run's seed."""
        return self.task.problems(split, n, seed=self.cfg.seed)

    # -- driver ----------------------------------------------------------------------------
    def run_all(self) -> dict[str, Any]:
        from sharpen.core.threads import torch_threads

        with torch_threads(self.cfg.threads) as threads:
            self.manifest.data.setdefault("threads", []).append(threads)  # one entry per (re)start
            self.manifest.save()
            return self._run_all()

    def _run_all(self) -> dict[str, Any]:
        self._stage("round-0/eval", lambda: self.evaluate(0, self.cfg.model))
        model = self.cfg.model
        for r in range(1, self.cfg.rounds + 1):
            self._stage(f"round-{r}/collect", lambda r=r, m=model: self.collect(r, m))
            self._stage(f"round-{r}/build", lambda r=r: self.build(r))
            start = self.cfg.model if self.cfg.train.init == "base" else model
            self._stage(f"round-{r}/train", lambda r=r, m=start: self.train(r, m))
            model = self.manifest.get(f"round-{r}/train")["model"]
            self._stage(f"round-{r}/eval", lambda r=r, m=model: self.evaluate(r, m))
        paired = self.paired(0, self.cfg.rounds)
        atomic_write_json(self.run / "paired.json", paired)
        from sharpen.report.run import write_report

        report = write_report(self.run, self.recipe.unused)
        return {"paired": paired, "report": str(report), "model": model}

    def _stage(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        if self.manifest.done(name):
            self.say(f"{name}: done already, skipped")
            return
        self.manifest.start(name)
        info = fn()
        artifacts = info.pop("artifacts", {})
        self.manifest.finish(name, artifacts, **info)
        gc.collect()

    def _dir(self, r: int, stage: str) -> Path:
        d = self.run / f"round-{r}" / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    # -- stages ----------------------------------------------------------------------------
    def evaluate(self, r: int, model: str) -> dict[str, Any]:
        from sharpen.backends import load_backend
        from sharpen.report.run import distinct_correct
        from sharpen.search.evaluate import EvalConfig, evaluate

        d = self._dir(r, "eval")
        e, cluster = self.cfg.eval, self.cfg.cluster
        cfg = EvalConfig(samples=e.samples, temperature=e.temperature, max_tokens=e.max_tokens, seed=self.cfg.seed,
                         problems_per_call=e.batch, greedy=True)
        with self.progress(f"round {r}: evaluate", len(self.test)) as advance:
            if cluster is not None:
                from sharpen.search.distributed import eval_on_ray

                metrics = eval_on_ray(cluster.address, cluster.actors, model, self.cfg.task, self.cfg.task_args,
                                      self.test, cfg, d / "problems.jsonl", batch=e.batch, on_progress=advance)
            else:
                with load_backend(model, seed=self.cfg.seed, max_batch=e.batch) as backend:
                    metrics = evaluate(backend, self.task, self.test, cfg, out_jsonl=d / "problems.jsonl",
                                       on_progress=advance)
        metrics["exploration"] = distinct_correct(d / "problems.jsonl")
        metrics["model"] = model
        metrics["split"] = self.cfg.eval.split
        atomic_write_json(d / "metrics.json", metrics)
        shown = ", ".join(f"{k} {metrics[k]:.3f}" for k in ("greedy", "pass@1") if k in metrics)
        self.say(f"round {r}: {shown} (n={metrics['n']})")
        return {"artifacts": {"problems": f"round-{r}/eval/problems.jsonl", "metrics": f"round-{r}/eval/metrics.json"}}

    def round_problems(self, r: int) -> list:
        """Round `r`'s training problems: the next `collect.problems` of the pool."""
        n = self.cfg.collect.problems
        return self.train_pool[(r - 1) * n : r * n]

    def round_seed(self, r: int) -> int:
        """Round `r`'s seed (its search, screening and training draw from it): `derive_seed(seed, r)`
        in 31 bits, so no round of one seed reuses a round of another."""
        return derive_seed(self.cfg.seed, r, bits=31)

    def screen_candidates(self, r: int) -> list:
        """Round `r`'s candidates under collect.screen: its own problems, then its share of the spare pool."""
        share = len(self.spare_pool) // max(1, self.cfg.rounds - 1)
        return self.round_problems(r) + self.spare_pool[(r - 2) * share : (r - 1) * share]

    def collect_settings(self, r: int) -> Any:
        """The collect section as round `r` uses it (collect.temperature_step applied)."""
        c = self.cfg.collect
        return c.model_copy(update={"temperature": c.temperature + (r - 1) * c.temperature_step}) if c.temperature_step else c

    def screen(self, r: int, backend: Any, d: Path) -> tuple[list, dict[str, Any]]:
        """collect.screen: sample each candidate's solutions from the policy `backend` (as `sharpen eval` samples,
        at the round's collection temperature), keep `collect.problems` of them, those solved some of the time
        first (right share nearest 1/2), then in candidate order. Written to screen.jsonl, which a resumed round
        reads instead of sampling again."""
        from sharpen.search.evaluate import EvalConfig, evaluate_chunk

        c = self.collect_settings(r)
        candidates = self.screen_candidates(r)
        path = d / "screen.jsonl"
        if path.exists():
            rows = list(read_jsonl(path))
        else:
            sampling = EvalConfig(samples=c.screen, temperature=c.temperature, max_tokens=c.step_tokens + c.rollout_tokens,
                                  seed=self.round_seed(r), greedy=False)
            rows, start = [], backend.meter.snapshot()
            with self.progress(f"round {r}: screen ({c.screen} samples)", len(candidates)) as advance:
                for i in range(0, len(candidates), sampling.problems_per_call):
                    chunk = candidates[i : i + sampling.problems_per_call]
                    for p, row in zip(chunk, evaluate_chunk(backend, self.task, chunk, sampling), strict=True):
                        right = sum(self.task.verify(p, self.task.extract(x["text"], strict=c.strict_format))
                                    for x in row["samples"])
                        rows.append({"id": p.id, "right": right, "samples": c.screen})
                    advance(len(chunk))
            rows.append({"usage": (backend.meter.snapshot() - start).to_dict()})
            atomic_write_text(path, "".join(json.dumps(x) + "\n" for x in rows))
        usage, right = rows[-1]["usage"], {x["id"]: x["right"] for x in rows[:-1]}

        def mixed(p: Any) -> bool:
            return 0 < right[p.id] < c.screen

        order = sorted(range(len(candidates)), key=lambda i: (not mixed(candidates[i]),
                                                             abs(right[candidates[i].id] / c.screen - 0.5), i))
        problems = [candidates[i] for i in sorted(order[: c.problems])]
        info = {"candidates": len(candidates), "mixed": sum(map(mixed, candidates)),
                "kept_mixed": sum(map(mixed, problems)), "never": sum(right[p.id] == 0 for p in candidates),
                "always": sum(right[p.id] == c.screen for p in candidates), "usage": usage}
        self.say(f"round {r}: screen: {info['mixed']} of {len(candidates)} candidates solved some of the time; "
                 f"searching {info['kept_mixed']} of them and {len(problems) - info['kept_mixed']} others "
                 f"({usage['generated_tokens']} generated tokens)")
        return problems, info

    def collect(self, r: int, model: str) -> dict[str, Any]:
        from sharpen.backends import load_backend
        from sharpen.backends.base import close_all
        from sharpen.search.collect import search_metrics
        from sharpen.search.process import SearchSettings
        from sharpen.search.spec import SearchSpec, execute

        c, cluster = self.collect_settings(r), self.cfg.cluster
        d = self._dir(r, "collect")
        problems = self.round_problems(r)
        if self.recipe.online:  # the trainer samples its own completions: nothing to search
            atomic_write_text(d / "problems.jsonl", "".join(json.dumps(p.to_dict()) + "\n" for p in problems))
            self.say(f"round {r}: collect: no search ({self.cfg.recipe} samples while it trains); "
                     f"{len(problems)} training problems picked")
            return {"artifacts": {"problems": f"round-{r}/collect/problems.jsonl"}, "searched": 0}
        # drop_finished=False: HF `generate`. Steps are short, so letting finished rows leave the batch
        # saved nothing here (258 s against 259 s for 40 problems); both decoders draw the same rows.
        def policy() -> Any:
            return load_backend(model, seed=self.cfg.seed, max_batch=c.batch, drop_finished=False)

        screened = backend = scorer = None
        try:  # the policy (with the reference, a mixture) and a prover are closed however collection ends
            if c.screen and r >= 2:  # validated: not with a cluster; the search below reuses the loaded policy
                backend = policy()
                problems, screened = self.screen(r, backend, d)
            spec = self.recipe.scorer_spec(self.cfg, self.run, r)
            search = SearchSpec(algorithm=c.algo, scorer=spec, budget=c.budget, options=c.args, collect=True,
                                settings=SearchSettings(**{k: getattr(c, k) for k in SearchSettings.model_fields}),
                                strict_answers=c.strict_format)
            step_rows = None  # with collect.reference_share: step rows sampled by the policy and by the reference
            with self.progress(f"round {r}: collect ({c.algo}, {spec.split(':')[0]})", len(problems)) as advance:
                if cluster is not None:
                    from sharpen.search.distributed import search_on_ray

                    trees = search_on_ray(cluster.address, cluster.actors, model, self.cfg.task, self.cfg.task_args,
                                          search, problems, self.round_seed(r), "train", d / "trees.jsonl",
                                          on_progress=advance, backend_seed=self.cfg.seed,
                                          backend_options={"drop_finished": False})
                else:
                    backend = backend if backend is not None else policy()
                    mixture = None
                    if c.reference_share > 0 and model != self.cfg.model:  # a trained policy: part of its steps
                        from sharpen.backends.mixture import MixtureBackend  # from the starting model

                        backend = mixture = MixtureBackend(backend, load_backend(
                            self.cfg.model, seed=self.cfg.seed, max_batch=c.batch, drop_finished=False),
                            c.reference_share)
                    process = search.process(backend, self.task)
                    if mixture is not None:
                        process.row_split = mixture.to_other
                    scorer = search.make_scorer(process)
                    trees = execute(search, process, problems, scorer, seed=self.round_seed(r),
                                    out_jsonl=d / "trees.jsonl", on_progress=advance, split="train")
                    if mixture is not None:  # counted in the trees: those a resumed stage read too
                        step_rows = {k: sum(t.meta.get("step_rows", {}).get(k, 0) for t in trees)
                                     for k in ("policy", "reference")}
        finally:
            close_all(scorer, backend)
        metrics = search_metrics(trees, c.budget)
        metrics.update(collect_monitors(trees), scorer=spec, model=model, temperature=c.temperature)
        if step_rows is not None:
            metrics["step_rows"] = step_rows
        if screened is not None:
            metrics["screen"] = screened
        atomic_write_json(d / "metrics.json", metrics)
        self.say(f"round {r}: collected {len(trees)} trees, search accuracy {metrics['accuracy']:.3f}")
        return {"artifacts": {"trees": f"round-{r}/collect/trees.jsonl"}}

    def build(self, r: int) -> dict[str, Any]:
        from sharpen.core.tree import Tree, check_trainable
        from sharpen.train import data

        d = self._dir(r, "data")
        collected = self.run / f"round-{r}" / "collect"
        if self.recipe.online:
            from sharpen.core.tasks import Problem

            sets = self.recipe.build_prompts(self.task, [Problem(**p) for p in read_jsonl(collected / "problems.jsonl")], r)
        else:
            trees = [Tree.from_dict(t) for t in read_jsonl(collected / "trees.jsonl")]
            check_trainable(trees, f"round-{r}/collect/trees.jsonl")
            # which scores count as Monte Carlo values is decided by `sharpen.search.credit.scores_are_monte_carlo`
            sets = self.recipe.build(trees, self.cfg, r)
        for name, ds in sets.items():
            data.save_dataset(ds, d / name)
        rows = {k: len(v) for k, v in sets.items()}
        record: dict[str, Any] = {"rows": rows, "recipe": self.cfg.recipe}
        if "pairs" in sets:  # step pairs and whole-solution pairs apart: starvation is counted in step pairs
            record["pair_kinds"] = dict(Counter(sets["pairs"]["recipe"]))
        atomic_write_json(d / "summary.json", record)
        mixed = len(record.get("pair_kinds", {})) > 1
        self.say(f"round {r}: data {rows}" + (f", pairs by kind {record['pair_kinds']}" if mixed else ""))
        return {"artifacts": {k: f"round-{r}/data/{k}" for k in sets}, "rows": rows}

    def train(self, r: int, model: str) -> dict[str, Any]:
        from sharpen.loop.config import trainer_options
        from sharpen.train import data, get_trainer, make_config
        from sharpen.train.common import trainer_fields

        t = self.cfg.train
        d = self._dir(r, "train")
        data_dir = self.run / f"round-{r}" / "data"
        rows = dict(self.manifest.get(f"round-{r}/build").get("rows", {}))
        kind = self.recipe.trains
        train_data = data_dir / kind
        if t.replay and r > 1:
            train_data = self._replay(r, kind, d / "replay")
            rows[kind] = len(data.load_dataset_dir(train_data))
        trainer = self.recipe.trainer
        opts = trainer_options(self.cfg, trainer)
        defaults = trainer_fields(get_trainer(trainer).config)
        o = defaults | opts
        batch = o["per_device_train_batch_size"] * o["gradient_accumulation_steps"]  # rows an optimizer step takes
        samples = rows.get(kind, 0) * self.recipe.samples_per_row(opts, defaults)
        steps = train_steps(o["max_steps"], t.max_epochs, samples, batch)
        opts |= {"max_steps": steps, "seed": self.round_seed(r), "save_steps": max(1, steps // 4)}
        opts |= self.recipe.policy_options(self.cfg)
        if opts.get("precompute_ref_log_probs", "auto") == "auto" and trainer == "dpo":
            # precomputing costs one reference forward per pair; on the fly costs one per pair visit
            opts["precompute_ref_log_probs"] = steps * batch >= 2 * max(1, rows.get(kind, 0))
        info: dict[str, Any] = {"kind": kind, "rows": rows.get(kind, 0), "steps": steps, "start": model}
        info |= self.recipe.train_extra(self, r, model, data_dir, d, opts, rows)
        if rows.get(kind, 0) == 0:
            self.say(f"round {r}: no {kind} to train on; the policy is unchanged")
            info["model"] = model
        else:
            cfg = make_config(trainer, "train", model=model, data=str(train_data), output_dir=str(d / "policy"), **opts)
            with self._status(f"round {r}: {self.recipe.describe(rows[kind], cfg)}, {steps} steps"):
                info["model"] = str(get_trainer(trainer).train(cfg))
            info |= self.recipe.train_record(d / "policy")
        atomic_write_json(d / "summary.json", info)
        return {"artifacts": {"model": str(Path(info["model"]).relative_to(self.run))} if info["model"] != model else {},
                **info}

    def _replay(self, r: int, kind: str, out: Path) -> Path:
        """This round's `kind` rows and every earlier round's, exact duplicates dropped (newest kept
        first), saved as one dataset under `out`."""
        from datasets import concatenate_datasets

        from sharpen.train import data

        sets = [data.load_dataset_dir(self.run / f"round-{q}" / "data" / kind) for q in range(r, 0, -1)]
        both = concatenate_datasets(sets)
        text_cols = [c for c in ("prompt", "chosen", "rejected", "completion") if c in both.column_names]
        seen: set[tuple] = set()
        keep = []
        for i, row in enumerate(both.select_columns(text_cols)):
            key = tuple(json.dumps(row[c], sort_keys=True) for c in text_cols)  # a chat prompt is a list of dicts
            if key not in seen:
                seen.add(key)
                keep.append(i)
        return data.save_dataset(both.select(keep), out)

    def _status(self, text: str) -> AbstractContextManager:
        self.say(text)
        return nullcontext()

    # -- summaries -------------------------------------------------------------------------
    def paired(self, r0: int, r1: int, iters: int = 2000) -> dict[str, Any]:
        """Greedy accuracy change between two rounds on the same held-out problems, with a
        paired-bootstrap 95% interval."""
        import numpy as np

        from sharpen.core.stats import paired_bootstrap

        a, b = greedy_by_problem(self.run, r0), greedy_by_problem(self.run, r1)
        ids = [p.id for p in self.test if p.id in a and p.id in b]
        before, after = [a[i] for i in ids], [b[i] for i in ids]
        delta, (lo, hi) = paired_bootstrap(before, after, iters=iters, seed=self.cfg.seed)
        return {"from_round": r0, "to_round": r1, "n": len(ids), "before": float(np.mean(before)),
                "after": float(np.mean(after)), "delta": delta, "ci95": [lo, hi]}


class DenoiseRunner(LoopRunner):
    """The loop for a recipe that trains the `digits-ddpm` denoiser (`sharpen.loop.recipes.DenoiseRecipe`),
    with the stages, manifest and resuming of every run.

    - evaluate: the unguided sampler of the round's denoiser, one sample per held-out problem (all of
      the target class; `DenoiseProcess.complete` from the root), its noise seeded by the run's seed
      and the problem, so every round draws from the same noise; each sample's reward (the
      classifier's probability of the target), class and x_0 are appended to `eval/problems.jsonl`
      as it is drawn (a resumed stage skips those there). Its metrics: the mean reward with a
      bootstrap 95% interval, the share classified as the target, and the diversity (mean pairwise
      L2 distance between the x_0; `class_diversity`), as `benchmarks/denoise_train.py` measures them.
    - collect and build: the recipe's `collect_data` and `build_data`; the data is written to
      `data/<kind>.pt`.
    - train: one `train_round` from the last round's denoiser (resumed from its checkpoint when the
      stage was killed), `train.max_epochs` capping its steps as for every recipe.
    - `paired`: the change in mean reward (paired bootstrap by problem) instead of greedy accuracy."""

    def load_task(self) -> Any:
        from sharpen.search.spec import load_task

        return load_task(self.cfg.task, **self.cfg.task_args)

    def draw(self, split: str, n: int) -> list:
        """The first `n` problems of `split` whose target is `train.target`."""
        return self.recipe.problems(self.task, split, n, self.cfg)

    def evaluate(self, r: int, model: str) -> dict[str, Any]:
        from sharpen.backends.diffusion import load_digits_model
        from sharpen.core.io import JsonlAppender
        from sharpen.search.denoise import encode_state
        from sharpen.train.diffusion import unguided_samples

        d = self._dir(r, "eval")
        path = d / "problems.jsonl"
        target = self.recipe.target(self.cfg)
        done = {row["id"]: row for row in read_jsonl(path)} if path.exists() else {}
        todo = [(i, p) for i, p in enumerate(self.test) if p.id not in done]
        with self.progress(f"round {r}: evaluate (unguided samples)", len(self.test)) as advance:
            if done:
                advance(len(self.test) - len(todo))
            if todo:
                # one row per forward (chunk 1): the same floats every round, 16x less padding than the default
                denoiser = load_digits_model(denoiser_dir(model), chunk=1)
                writer = JsonlAppender(path)
                try:
                    for i, p in todo:
                        x0, rewards, classes, nfe = unguided_samples(denoiser, [p], 1, steps=self.task.options.steps,
                                                                     seed=self.cfg.seed)
                        row = {"id": p.id, "index": i, "reward": rewards[0], "class": classes[0],
                               "correct": classes[0] == target, "nfe": nfe, "x": encode_state(x0[0])}
                        writer.write(row)
                        done[p.id] = row
                        advance(1)
                finally:
                    writer.close()
        metrics = unguided_metrics([done[p.id] for p in self.test], target, self.cfg.seed)
        metrics["model"] = model
        atomic_write_json(d / "metrics.json", metrics)
        self.say(f"round {r}: mean reward {metrics['mean_reward']:.3f}, target share {metrics['target_share']:.3f} "
                 f"(n={metrics['n']})")
        return {"artifacts": {"problems": f"round-{r}/eval/problems.jsonl", "metrics": f"round-{r}/eval/metrics.json"}}

    def collect(self, r: int, model: str) -> dict[str, Any]:
        d = self._dir(r, "collect")
        metrics, artifacts = self.recipe.collect_data(self, r, model, d)
        metrics["model"] = model
        atomic_write_json(d / "metrics.json", metrics)
        return {"artifacts": artifacts, "model": model}

    def build(self, r: int) -> dict[str, Any]:
        from sharpen.loop.recipes import save_data

        d = self._dir(r, "data")
        kind = self.recipe.trains
        data = self.recipe.build_data(self, r)
        save_data(data, d / f"{kind}.pt")
        record: dict[str, Any] = {"rows": {kind: len(data)}, "recipe": self.cfg.recipe, "nfe": data.nfe,
                                  "steps": data.steps}
        if kind == "pairs":
            record |= {"trees": data.trees, "mean_gap": float(data.gap.mean()) if len(data) else None}
        else:
            record["mean_reward"] = float(data.reward.mean()) if len(data) else None
        atomic_write_json(d / "summary.json", record)
        self.say(f"round {r}: data {record['rows']}")
        return {"artifacts": {kind: f"round-{r}/data/{kind}.pt"}, "rows": record["rows"]}

    def train(self, r: int, model: str) -> dict[str, Any]:
        import dataclasses

        from sharpen.loop.recipes import load_data
        from sharpen.train.diffusion import SUMMARY, train_round

        d = self._dir(r, "train")
        kind = self.recipe.trains
        data = load_data(self.run / f"round-{r}" / "data" / f"{kind}.pt")
        cfg = self.recipe.train_config(self.cfg, self.round_seed(r))
        cfg = dataclasses.replace(cfg, max_steps=train_steps(cfg.max_steps, self.cfg.train.max_epochs, len(data),
                                                             cfg.batch))
        info: dict[str, Any] = {"kind": kind, "rows": len(data), "steps": cfg.max_steps, "start": model,
                                "method": cfg.method}
        if not len(data):
            self.say(f"round {r}: no {kind} to train on; the denoiser is unchanged")
            info["model"] = model
        else:
            text = f"round {r}: {self.recipe.describe(len(data), cfg)}, {cfg.max_steps} steps"
            with self.progress(text, cfg.max_steps) as advance:
                out = train_round(denoiser_dir(model), data, d / "policy", cfg, on_step=lambda step, loss: advance(1))
            info["model"] = str(out)
            info["metrics"] = json.loads((out / SUMMARY).read_text())["metrics"]
        atomic_write_json(d / "summary.json", info)
        return {"artifacts": {"model": str(Path(info["model"]).relative_to(self.run))} if info["model"] != model else {},
                **info}

    def paired(self, r0: int, r1: int, iters: int = 2000) -> dict[str, Any]:
        """The change in the unguided sampler's mean reward between two rounds on the same held-out
        problems (the same noise), with a paired-bootstrap 95% interval (resampling problems)."""
        import numpy as np

        from sharpen.core.stats import paired_bootstrap

        a, b = reward_by_problem(self.run, r0), reward_by_problem(self.run, r1)
        ids = [p.id for p in self.test if p.id in a and p.id in b]
        before, after = [a[i] for i in ids], [b[i] for i in ids]
        delta, (lo, hi) = paired_bootstrap(before, after, iters=iters, seed=self.cfg.seed)
        return {"metric": "mean_reward", "from_round": r0, "to_round": r1, "n": len(ids),
                "before": float(np.mean(before)), "after": float(np.mean(after)), "delta": delta, "ci95": [lo, hi]}


def runner_for(cfg: LoopConfig) -> type[LoopRunner]:
    """The runner class of the config's recipe: `DenoiseRunner` for a recipe that trains a denoiser."""
    return DenoiseRunner if get_recipe(cfg.recipe).denoise else LoopRunner


def denoiser_dir(model: str) -> Path:
    """The directory of a denoising model: `digits-ddpm` prepared on first use, or a prepared directory."""
    from sharpen.backends import prepare_model
    from sharpen.backends.models import DIFFUSION_BUILTIN, diffusion_path

    return prepare_model(model) if model in DIFFUSION_BUILTIN else diffusion_path(model)


def unguided_metrics(rows: list[dict[str, Any]], target: int, seed: int = 0) -> dict[str, Any]:
    """A denoising round's held-out metrics from its `eval/problems.jsonl` rows: the mean reward with
    its bootstrap 95% interval, the share of samples classified as `target`, the diversity of the
    x_0 (mean pairwise L2 distance; None with fewer than two) and the NFE spent."""
    import torch

    from sharpen.core.stats import bootstrap_ci
    from sharpen.search.denoise import decode_state
    from sharpen.train.diffusion import SHAPE, class_diversity

    n = len(rows)
    rewards = [float(row["reward"]) for row in rows]
    lo, hi = bootstrap_ci(rewards, seed=seed)
    x0 = torch.stack([decode_state(row["x"], SHAPE) for row in rows]) if rows else torch.zeros((0, *SHAPE))
    return {"n": n, "target": target, "mean_reward": sum(rewards) / max(1, n), "mean_reward_ci95": [lo, hi],
            "target_share": sum(bool(row["correct"]) for row in rows) / max(1, n),
            "diversity": class_diversity(x0, [target] * n), "nfe": sum(int(row["nfe"]) for row in rows)}


def reward_by_problem(run: Path, r: int) -> dict[str, float]:
    """Round `r`'s held-out reward of the unguided sample (a denoising run), by problem id."""
    return {row["id"]: float(row["reward"]) for row in read_jsonl(Path(run) / f"round-{r}" / "eval" / "problems.jsonl")}


def greedy_by_problem(run: Path, r: int) -> dict[str, float]:
    """Round `r`'s held-out greedy correctness (0 or 1), by problem id."""
    rows = read_jsonl(Path(run) / f"round-{r}" / "eval" / "problems.jsonl")
    return {row["id"]: float(row["greedy"]["correct"]) for row in rows}


def train_steps(max_steps: int, max_epochs: float | None, rows: int, batch_size: int) -> int:
    """Optimizer steps for a round: `max_steps`, capped at `max_epochs` passes over its `rows`, so
    a round that found little data is not trained on for many epochs (it overfits)."""
    if max_epochs is None or rows <= 0:
        return max_steps
    return max(1, min(max_steps, math.ceil(max_epochs * rows / batch_size)))


def collect_monitors(trees: list) -> dict[str, Any]:
    """B-STaR's exploration (distinct correct solutions per problem) and exploitation (how well
    the scorer ranks correct terminals above incorrect ones: AUROC of node scores; None when the
    scorer is the verifier itself, the oracle, whose AUROC is 1 by construction and means nothing)."""
    distinct = []
    pos, neg = [], []
    for t in trees:
        seen = set()
        for n in t.terminals():
            if n.correct:
                seen.add(" ".join(t.text(n.id).split()))
            if n.score is not None and n.correct is not None:
                (pos if n.correct else neg).append(n.score)
        distinct.append(len(seen))
    oracle = any(scores_are_monte_carlo(t) for t in trees)
    return {"exploration": sum(distinct) / max(1, len(distinct)),
            "exploitation_auroc": None if oracle else auroc(pos, neg)}


def prepare_run_dir(cfg: LoopConfig, run_dir: Path, resume: bool) -> LoopConfig:
    """A new run writes its resolved config; a resumed one reads it back (the run's own config wins)."""
    from sharpen.loop.config import validate

    cfg_path = run_dir / "config.yaml"
    if resume:
        if not cfg_path.exists():
            raise ConfigError(f"nothing to resume in {run_dir}: no config.yaml (fix: drop --resume to start the run)")
        import yaml

        return validate(yaml.safe_load(cfg_path.read_text()), str(cfg_path))
    if (run_dir / "manifest.json").exists():
        raise ConfigError(f"{run_dir} already holds a run (fix: --resume to continue it, or another name/--out)")
    if run_dir.exists() and any(p.name != "config.yaml" for p in run_dir.iterdir()):
        raise ConfigError(f"{run_dir} is not empty (fix: choose another run name or --out)")
    atomic_write_text(cfg_path, dump(cfg))
    return cfg


def run(
    config: str | Path,
    out: str | Path | None = None,
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
    progress: Any = None,
    say: Callable[[str], None] | None = None,
    ray: str | None = None,
    actors: int | None = None,
) -> dict[str, Any]:
    """Rounds of collect -> build -> train -> evaluate from a YAML config (resumable); returns the
    paired before/after change, the report path, the final model and the run directory.
    `ray`/`actors` set the config's `cluster` section (collect and evaluate on Ray actors), also
    on a resumed run: where a stage runs changes none of its results."""
    from sharpen.backends.models import check_model
    from sharpen.loop.config import load_config, with_cluster

    cfg = load_config(config, overrides)
    run_dir = Path(out) if out is not None else Path("runs") / cfg.name
    check_model(cfg.model)
    if resume:  # the run's own config, on the cluster asked for now
        cfg = with_cluster(prepare_run_dir(cfg, run_dir, resume), ray, actors)
    else:  # the cluster is written into the run's config.yaml
        cfg = with_cluster(cfg, ray, actors)
        if cfg.cluster is not None and cfg.cluster.address != "local":  # no answer: an error before the run dir
            from sharpen.search.distributed import connect

            connect(cfg.cluster.address)
        cfg = prepare_run_dir(cfg, run_dir, resume)
    result = runner_for(cfg)(cfg, run_dir, progress=progress, say=say).run_all()
    return result | {"run": str(run_dir), "config": cfg}

