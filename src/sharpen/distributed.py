"""Scale-out with Ray: shard a search's problems over actors, each with its own backend (HF in its
process on its node, or a client of that node's server), and get the same trees as one process.

    sharpen search ... --ray local --actors 2        # a local Ray cluster
    sharpen search ... --ray auto                    # the cluster this machine belongs to (`ray start`)
    sharpen search ... --ray ray://HEAD:10001        # a remote cluster through Ray Client

Problems are cut into the lockstep groups one process would search together (`--parallel` problems
each); group g goes to an actor, which searches it exactly as the single process would (same group
composition, same per-row random streams, same number of torch threads), so every tree is identical,
byte for byte. Trees are appended to trees.jsonl in problem order as groups finish, so a run killed
at any point resumes where its file ends. An actor that dies has its group retried on a new actor.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sharpen.errors import ConfigError

MAX_RETRIES = 3


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray (fix: pip install 'sharpen[ray]')") from None
    return ray


class SearchWorker:
    """One actor: a backend, a process and a scorer, built once; searches groups of problems."""

    def __init__(self, model: str, task: str, task_args: dict, settings: dict, scorer: str | None, collect: bool,
                 seed: int, threads: int):
        import torch

        from sharpen.api import load_model, load_task, make_process
        from sharpen.process import SearchSettings
        from sharpen.scorers import make_scorer

        torch.set_num_threads(threads)  # as many as the driver: the same kernels, the same floats
        s = SearchSettings(**settings)
        self.process = make_process(load_model(model, seed=seed, max_batch=s.batch), load_task(task, **task_args), s)
        self.scorer = make_scorer(scorer, self.process, collect=collect)

    def search(self, problems: list[dict], algo: str, budget: int, seed: int, options: dict, split: str | None,
               scorer_spec: str | None) -> list[dict]:
        from sharpen.collect import search_problems
        from sharpen.tasks import Problem

        group = [Problem(**p) for p in problems]
        trees = search_problems(self.process, self.scorer, algo, group, budget, seed=seed, algo_args=options,
                                parallel=len(group), split=split, scorer_spec=scorer_spec)
        return [t.to_dict() for t in trees]


def connect(address: str) -> Any:
    ray = _ray()
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address == "local":
            ray.init(**kw)
        else:
            ray.init(address=address, **kw)
    return ray


def search_on_ray(address: str, actors: int, model: str, task: str, task_args: dict, settings: Any,
                  scorer: str | None, collect: bool, algo: str, problems: list, budget: int, seed: int,
                  options: dict, split: str | None, out_jsonl: str | Path | None,
                  on_progress: Callable[[int], None] | None = None, actor_cpus: float = 1.0) -> list:
    """Search `problems` on `actors` Ray actors (see the module docstring); returns the trees in
    problem order and appends them to `out_jsonl` (problems already there are skipped)."""
    import torch

    from sharpen.io import JsonlAppender, read_jsonl
    from sharpen.tree import Tree

    if actors < 1:
        raise ConfigError("--actors must be >= 1 (fix: e.g. --actors 2)")
    ray = connect(address)
    done: dict[str, Tree] = {}
    if out_jsonl is not None and Path(out_jsonl).exists():
        done = {d["problem_id"]: Tree.from_dict(d) for d in read_jsonl(out_jsonl)}
    if on_progress and done:
        on_progress(sum(p.id in done for p in problems))
    size = max(1, settings.parallel)
    groups = [problems[i : i + size] for i in range(0, len(problems), size)]
    todo = [g for g, group in enumerate(groups) if not all(p.id in done for p in group)]
    finished = set(range(len(groups))) - set(todo)  # groups already in the file
    remote = ray.remote(num_cpus=actor_cpus, max_restarts=0)(SearchWorker)
    args = (model, task, task_args, settings.model_dump(), scorer, collect, seed, torch.get_num_threads())
    pool = [remote.remote(*args) for _ in range(min(actors, max(1, len(todo))))]
    running: dict[Any, tuple[int, int, int]] = {}  # ref -> (group, actor index, attempt)
    free = list(range(len(pool)))
    queue = [(g, 0) for g in todo]
    results: dict[int, list[dict]] = {}
    writer = JsonlAppender(out_jsonl) if out_jsonl is not None else None
    next_group = 0  # groups are written in order

    def launch() -> None:
        while queue and free:
            g, attempt = queue.pop(0)
            a = free.pop(0)
            ref = pool[a].search.remote([p.to_dict() for p in groups[g]], algo, budget, seed, options, split, scorer)
            running[ref] = (g, a, attempt)

    try:
        launch()
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            ref = ready[0]
            g, a, attempt = running.pop(ref)
            try:
                results[g] = ray.get(ref)
                free.append(a)
            except ray.exceptions.RayActorError:
                if attempt + 1 >= MAX_RETRIES:
                    raise ConfigError(f"Ray actors died {MAX_RETRIES} times on problems {groups[g][0].id}.. "
                                      "(fix: check the actors' memory and logs)") from None
                pool[a] = remote.remote(*args)  # a new actor in the dead one's place
                free.append(a)
                queue.insert(0, (g, attempt + 1))
            except ray.exceptions.RayTaskError as e:
                cause = e.cause if getattr(e, "cause", None) is not None else e
                raise cause from None
            while next_group < len(groups) and (next_group in results or next_group in finished):
                for d in results.pop(next_group, []):
                    if d["problem_id"] not in done:
                        done[d["problem_id"]] = Tree.from_dict(d)
                        if writer:
                            writer.write(d)
                        if on_progress:
                            on_progress(1)
                next_group += 1
            launch()
    finally:
        if writer:
            writer.close()
        for actor in pool:
            ray.kill(actor)
    return [done[p.id] for p in problems]
