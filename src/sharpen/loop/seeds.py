"""Seeds as an axis: `sharpen run CONFIG --seeds 0,1,2` runs one config once per seed and writes
one combined report (`sharpen.report.seeds`).

`runs/<name>/seed-<s>/` holds seed s's run and `runs/<name>/` the combined report. Nested rather
than `runs/<name>-seed<s>` siblings: one directory is the whole experiment (copy, delete or `--out`
it as one), and the combined report has a home that belongs to no single seed. `--out DIR` names
that parent directory.

Seeds run one after another in this process; each seed is an independent run, so they could
become Ray tasks without changing the layout or the report. Re-running the same command resumes:
a finished seed (its `paired.json` written) is skipped, a started one continues with `--resume`
semantics, a missing one starts; a seed dir started with another config is an error, since the
combined report would compare unlike runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sharpen.core.errors import ConfigError
from sharpen.core.io import refuse_changed_config
from sharpen.report.seeds import seed_dir, seeds_facts, write_seeds_report

SEEDS_FIX = "comma-separated distinct integers >= 0, e.g. --seeds 0,1,2"
MAX_SEED = 2**31 - 1  # numpy and torch take seeds below 2**32; the seeds derived from it are 31-bit too


def parse_seeds(text: str) -> list[int]:
    """`"0,1,2"` -> [0, 1, 2]; anything else (empty, not integers, negative, repeated) is a ConfigError."""
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise ConfigError(f"--seeds is empty (fix: {SEEDS_FIX})")
    try:
        seeds = [int(p) for p in parts]
    except ValueError:
        bad = next(p for p in parts if not re.fullmatch(r"[+-]?\d+", p))
        raise ConfigError(f"bad --seeds {text!r}: {bad!r} is not an integer (fix: {SEEDS_FIX})") from None
    if any(not 0 <= s <= MAX_SEED for s in seeds):
        raise ConfigError(f"bad --seeds {text!r}: seeds must be in 0..{MAX_SEED} (fix: {SEEDS_FIX})")
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise ConfigError(f"bad --seeds {text!r}: {', '.join(map(str, dup))} given twice (fix: {SEEDS_FIX})")
    return seeds


def run_seeds(
    config: str | Path,
    seeds: list[int],
    out: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    progress: Any = None,
    say: Callable[[str], None] | None = None,
    ray: str | None = None,
    actors: int | None = None,
) -> dict[str, Any]:
    """Run `config` once per seed (the config's own `seed` is replaced), one after another, each in
    `<out or runs/<name>>/seed-<s>/`, resuming started seeds and skipping finished ones; then write
    the combined report. Every check runs before anything is written. Returns the parent dir, the
    report path, the combined facts (`seeds_facts`) and each seed's run dir."""
    import yaml

    from sharpen.backends.models import check_model
    from sharpen.loop.config import load_config, validate, with_cluster
    from sharpen.loop.recipes import get_recipe
    from sharpen.loop.runner import run

    say = say or (lambda s: None)
    overrides = dict(overrides or {})
    if "seed" in overrides:
        raise ConfigError("--set seed=... and --seeds both set the seed (fix: drop one of them)")
    seeds = parse_seeds(",".join(map(str, seeds)))
    cfg = load_config(config, overrides)
    if getattr(get_recipe(cfg.recipe), "denoise", False):
        raise ConfigError(f"--seeds combines held-out greedy accuracy; the {cfg.recipe} recipe measures a "
                          "denoiser's mean reward, one seed a run (fix: sharpen run CONFIG --set seed=S per seed)")
    with_cluster(cfg, ray, actors)  # --actors without a cluster fails here, before any seed runs
    parent = Path(out) if out is not None else Path("runs") / cfg.name
    if parent.exists() and not parent.is_dir():
        raise ConfigError(f"--out {parent} is a file (fix: pass a directory path)")
    if (parent / "manifest.json").exists():
        raise ConfigError(f"{parent} holds a single run, not seeds (fix: another name or --out for --seeds, "
                          "or `sharpen run --resume` without --seeds to continue that run)")
    check_model(cfg.model)
    plan: list[tuple[int, Path, str]] = []
    for s in seeds:
        d = seed_dir(parent, s)
        if (d / "config.yaml").exists():
            theirs = validate(yaml.safe_load((d / "config.yaml").read_text()), str(d / "config.yaml"))
            mine = cfg.model_copy(update={"seed": s})
            # every field but the cluster: a resumed seed runs on its own config.yaml, so a value
            # given now that differs would be silently ignored; where a stage runs changes nothing
            refuse_changed_config(d, theirs.model_dump(mode="json"), mine.model_dump(mode="json"), free=("cluster",),
                                  fix="rerun with the config and --set values it was started with, or another --out")
            plan.append((s, d, "done" if (d / "paired.json").exists() else "resume"))
        elif d.exists() and any(d.iterdir()):
            raise ConfigError(f"{d} is not empty and holds no run (fix: remove it, or another --out)")
        else:
            plan.append((s, d, "new"))
    if ray is not None and ray != "local" and any(state != "done" for *_, state in plan):
        from sharpen.search.distributed import connect  # no answer: an error before any seed runs

        connect(ray)
    runs: dict[int, str] = {}
    for s, d, state in plan:
        runs[s] = str(d)
        if state == "done":
            say(f"seed {s}: finished already ({d}), skipped")
            continue
        say(f"seed {s}: {'resuming' if state == 'resume' else 'starting'} in {d}")
        run(config, out=d, resume=state == "resume", overrides=overrides | {"seed": s}, progress=progress,
            say=lambda msg, s=s: say(f"seed {s}: {msg}"), ray=ray, actors=actors)
    unused = get_recipe(cfg.recipe).unused
    report = write_seeds_report(parent, unused)
    return {"parent": str(parent), "report": str(report), "facts": seeds_facts(parent, unused), "runs": runs}
