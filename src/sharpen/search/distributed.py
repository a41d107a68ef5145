"""Scale-out with Ray: shard a search's or an evaluation's problems over actors, each with its own
backend (HF in its process on its node, or a client of that node's server), and get the same
results as one process.

    sharpen search ... --ray local --actors 2        # a local Ray cluster
    sharpen eval ... --ray auto                      # the cluster this machine belongs to (`ray start`)
    sharpen search ... --ray ray://HEAD:10001        # a remote cluster through Ray Client
    sharpen run CONFIG --ray local                   # or `cluster: {address: local, actors: 2}` in CONFIG

Problems are cut into the groups one process would work on together: the lockstep groups of a search
(`--parallel` problems), the generate calls of an evaluation (`EvalConfig.problems_per_call`
problems). Group g goes to an actor, which handles it exactly as the single process would (same
group composition, same per-row random streams, same number of torch threads), so every tree and
every evaluation row is identical, byte for byte. Each group's rows are appended to their JSONL as
soon as the group finishes, in the order groups finish, so a run stopped at any point (a kill, an
error in another group, Ctrl-C) keeps every finished group, and a resumed run skips the problems
whose ids are in the file. Once every group is in, the file is put in problem order: a finished
file is the one a single process writes. An actor that dies has its group retried on a new actor.
One driver (`run_groups`) does this for both.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sharpen.core.errors import ConfigError

MAX_RETRIES = 3


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray (fix: pip install 'sharpen[ray]')") from None
    return ray


class Worker:
    """One actor: a backend and a task, built once; for search also a process and a scorer, built
    at the first search. Each method returns its rows and the backend usage they cost."""

    def __init__(self, model: str, seed: int, backend_options: dict, task: str, task_args: dict, threads: int):
        import torch

        from sharpen.search.spec import load_model, load_task

        torch.set_num_threads(threads)  # as many as the driver: the same kernels, the same floats
        self.backend = load_model(model, seed=seed, **backend_options)
        self.task = load_task(task, **task_args)
        self.searcher: tuple[Any, Any, Any] | None = None  # (its spec, process, scorer)

    def search(self, problems: list[dict], spec: dict, seed: int, split: str | None) -> tuple[list[dict], dict]:
        """`execute` of the `SearchSpec` whose `model_dump()` is `spec` (validated again here) over
        `problems`, searched together as one lockstep group."""
        from sharpen.core.tasks import Problem
        from sharpen.search.spec import SearchSpec, execute

        the_spec = SearchSpec.model_validate(spec)
        key = (the_spec.settings, the_spec.scorer, the_spec.collect, the_spec.strict_answers)
        if self.searcher is None or self.searcher[0] != key:
            process = the_spec.process(self.backend, self.task)
            self.searcher = (key, process, the_spec.make_scorer(process))
        _, process, the_scorer = self.searcher
        group = [Problem(**p) for p in problems]
        before = self.backend.meter.snapshot()
        trees = execute(the_spec, process, group, the_scorer, seed=seed, parallel=len(group), split=split)
        return [t.to_dict() for t in trees], (self.backend.meter.snapshot() - before).to_dict()

    def evaluate(self, problems: list[dict], cfg: dict) -> tuple[list[dict], dict]:
        from sharpen.core.tasks import Problem
        from sharpen.search.evaluate import EvalConfig, evaluate_chunk

        before = self.backend.meter.snapshot()
        rows = evaluate_chunk(self.backend, self.task, [Problem(**p) for p in problems], EvalConfig(**cfg))
        return rows, (self.backend.meter.snapshot() - before).to_dict()


def connect(address: str, actors: int = 1) -> Any:
    """Ray, connected to the cluster at `address` (checked to answer first); `actors` is checked too."""
    if actors < 1:
        raise ConfigError("--actors must be >= 1 (fix: e.g. --actors 2)")
    ray = _ray()
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        fix = "(fix: --ray local, auto on a node that ran `ray start`, or ray://HEAD:10001)"
        host, _, port = address.removeprefix("ray://").rpartition(":")
        if host and port.isdigit():  # Ray itself waits minutes on an address nobody listens at
            import socket

            try:
                socket.create_connection((host, int(port)), timeout=10).close()
            except OSError as e:
                raise ConfigError(f"no Ray cluster answers at {address!r} ({e.strerror or e}) {fix}") from None
        try:
            if address == "local":
                ray.init(**kw)
            else:
                ray.init(address=address, **kw)
        except (ConnectionError, RuntimeError, ValueError) as e:
            msg = " ".join(str(e).split())[:200]
            raise ConfigError(f"cannot connect to the Ray cluster at {address!r}: {msg} {fix}") from None
    return ray


def run_groups(address: str, actors: int, worker_args: tuple, problems: list, size: int, key: str,
               out_jsonl: str | Path | None, call: Callable[[Any, list[dict]], Any],
               on_progress: Callable[[int], None] | None = None, actor_cpus: float = 1.0) -> tuple[dict[str, dict], Any]:
    """The one driver: cut `problems` into groups of `size`, run `call(actor, group as dicts)` (a remote
    method call returning `(rows, usage dict)`) for each group not already in `out_jsonl` on a pool
    of `actors` `Worker`s built from `worker_args`, and append each group's rows (identified by
    `row[key]`; rows already in the file are skipped) to `out_jsonl` as the group finishes. When all
    have finished, `out_jsonl` is rewritten in problem order (`_in_problem_order`). Returns the rows
    by problem id (those already in the file too) and the `Usage` the groups run now cost."""
    from sharpen.core.io import JsonlAppender, read_jsonl
    from sharpen.core.meter import Usage

    done: dict[str, dict] = {}
    if out_jsonl is not None and Path(out_jsonl).exists():
        done = {d[key]: d for d in read_jsonl(out_jsonl)}
    if on_progress and done:
        on_progress(sum(p.id in done for p in problems))
    size = max(1, size)
    groups = [problems[i : i + size] for i in range(0, len(problems), size)]
    todo = [g for g, group in enumerate(groups) if not all(p.id in done for p in group)]
    usage = Usage()
    if not todo:
        if out_jsonl is not None:
            _in_problem_order(out_jsonl, key, [p.id for p in problems])
        return done, usage
    ray = connect(address, actors)
    n = min(actors, len(todo))
    if address == "local":  # more actors than cores: they share the cores rather than wait forever for one
        actor_cpus = min(actor_cpus, ray.cluster_resources().get("CPU", 1.0) / n)
    remote = ray.remote(num_cpus=actor_cpus, max_restarts=0)(Worker)
    pool = [remote.remote(*worker_args) for _ in range(n)]
    running: dict[Any, tuple[int, int, int]] = {}  # ref -> (group, actor index, attempt)
    free = list(range(len(pool)))
    queue = [(g, 0) for g in todo]
    writer = JsonlAppender(out_jsonl) if out_jsonl is not None else None

    def launch() -> None:
        while queue and free:
            g, attempt = queue.pop(0)
            a = free.pop(0)
            running[call(pool[a], [p.to_dict() for p in groups[g]])] = (g, a, attempt)

    try:
        launch()
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            ref = ready[0]
            g, a, attempt = running.pop(ref)
            try:
                rows, spent = ray.get(ref)
                usage = usage + Usage(**spent)
                free.append(a)
            except ray.exceptions.RayActorError:
                if attempt + 1 >= MAX_RETRIES:
                    raise ConfigError(f"Ray actors died {MAX_RETRIES} times on problems {groups[g][0].id}.. "
                                      "(fix: check the actors' memory and logs)") from None
                pool[a] = remote.remote(*worker_args)  # a new actor in the dead one's place
                free.append(a)
                queue.insert(0, (g, attempt + 1))
            except ray.exceptions.RayTaskError as e:
                cause = e.cause if getattr(e, "cause", None) is not None else e
                raise cause from None
            else:
                for d in rows:
                    if d[key] not in done:  # a group cut short by a kill: only its missing rows
                        done[d[key]] = d
                        if writer:
                            writer.write(d)
                        if on_progress:
                            on_progress(1)
            launch()
    finally:
        if writer:
            writer.close()
        for actor in pool:
            ray.kill(actor)
    if out_jsonl is not None:
        _in_problem_order(out_jsonl, key, [p.id for p in problems])
    return done, usage


def _in_problem_order(path: str | Path, key: str, ids: list[str]) -> None:
    """Rewrite the JSONL at `path` (atomically, each line's bytes kept) with its rows in the order of
    `ids`; rows of other problems follow in their file order. Nothing is written when the file is
    in that order already."""
    from sharpen.core.io import atomic_write_text, jsonl_objects

    path = Path(path)
    if not path.exists():
        return
    with open(path, "rb") as f:
        lines = f.readlines()  # as `jsonl_objects` numbers them
    rows = list(jsonl_objects(path))  # (line number, row): blank lines and a torn tail are left out
    rank = {pid: i for i, pid in enumerate(ids)}
    ordered = sorted(rows, key=lambda r: rank.get(r[1].get(key), len(ids)))
    if [n for n, _ in ordered] == [n for n, _ in rows]:
        return
    text = b"".join(lines[n - 1].rstrip(b"\r\n") + b"\n" for n, _ in ordered).decode("utf-8")
    atomic_write_text(path, text)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def search_on_ray(address: str, actors: int, model: str, task: str, task_args: dict, spec: Any, problems: list,
                  seed: int, split: str | None, out_jsonl: str | Path | None,
                  on_progress: Callable[[int], None] | None = None, actor_cpus: float = 1.0, *,
                  backend_seed: int | None = None, backend_options: dict | None = None) -> list:
    """`sharpen.search.spec.execute` of `spec` (a `SearchSpec`, sent to the actors as its
    `model_dump()`) over `problems` on `actors` Ray actors (see the module docstring), in groups of
    `spec.settings.parallel`; returns the trees in problem order and appends them to `out_jsonl`
    (problems already there are skipped). The backends are seeded with `backend_seed` (default
    `seed`) and built with `max_batch=spec.settings.batch` and `backend_options`."""
    from sharpen.core.tree import Tree

    dump = spec.model_dump()
    worker = (model, seed if backend_seed is None else backend_seed,
              {"max_batch": spec.settings.batch, **(backend_options or {})}, task, task_args, _threads())

    def call(actor: Any, group: list[dict]) -> Any:
        return actor.search.remote(group, dump, seed, split)

    done, _ = run_groups(address, actors, worker, problems, spec.settings.parallel, "problem_id", out_jsonl, call,
                         on_progress, actor_cpus)
    return [Tree.from_dict(done[p.id]) for p in problems]


def eval_on_ray(address: str, actors: int, model: str, task: str, task_args: dict, problems: list, cfg: Any,
                out_jsonl: str | Path | None, batch: int = 32, on_progress: Callable[[int], None] | None = None,
                actor_cpus: float = 1.0) -> dict[str, Any]:
    """`sharpen.search.evaluate.evaluate` on `actors` Ray actors: each chunk of `cfg.problems_per_call`
    problems on an actor (backend seeded with `cfg.seed`, `max_batch=batch`); the rows are appended
    to `out_jsonl` in problem order (problems already there are skipped) and the metrics computed
    here, with the usage summed over the actors. Returns the metrics dict."""
    from sharpen.search.evaluate import eval_metrics

    t0 = time.perf_counter()
    c = cfg.model_dump()

    def call(actor: Any, group: list[dict]) -> Any:
        return actor.evaluate.remote(group, c)

    done, usage = run_groups(address, actors, (model, cfg.seed, {"max_batch": batch}, task, task_args, _threads()),
                             problems, cfg.problems_per_call, "id", out_jsonl, call, on_progress, actor_cpus)
    return eval_metrics([done[p.id] for p in problems], cfg, usage, time.perf_counter() - t0) | {"actors": actors}
