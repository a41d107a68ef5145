"""One registry for search algorithms and scorers, each with a typed, documented options class.

As in TRL (an `XConfig` beside each `XTrainer`), every algorithm declares its options next to its
function and registers once:

    class MyOptions(Options):
        k: int = Field(4, ge=1, description="candidates per step")

    @algorithm("mine", MyOptions)
    def mine(process, scorer, problem, budget_tokens, seed, **options) -> Tree:
        o = MyOptions.parse(options, "mine")
        ...

An options class names its row counts in `counts` (e.g. `counts = ("k",)`): each of them, and
their product, is at most the budget in tokens (every row costs at least one), checked by
`AlgorithmEntry.parse(raw, budget)` before any work (`check_counts`).

The CLI (`--algo`, `--arg k=v`, `sharpen algos`), run configs (`collect.algo`, `collect.args`),
error messages for unknown or bad options and the docs are all read from here, so adding an
algorithm is one file: modules in `sharpen.search.algorithms` are imported on first use, other packages can
register through the entry-point group `sharpen.algorithms`, and a module of your own through the
environment variable `SHARPEN_PLUGINS=my_module`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from sharpen.core.errors import ConfigError

MAX_ROWS = 4096
"""The largest row count (particles, beams, samples, k) an algorithm option may ask for, whatever the budget."""


class Options(BaseModel):
    """Base of every options class: unknown keys are errors, values are coerced from strings."""

    model_config = ConfigDict(extra="forbid")
    positional: ClassVar[tuple[str, ...]] = ()  # scorer spec `name:a:b` fills these fields in order
    counts: ClassVar[tuple[str, ...]] = ()  # fields that are numbers of rows: bounded by the budget (`check_counts`)

    @classmethod
    def parse(cls, raw: dict[str, Any] | None, owner: str, budget: int | None = None) -> Options:
        """Validate `raw` into this class; any problem becomes a one-line `ConfigError` naming the
        option and the valid ones. With `budget` (generated tokens), the row counts are checked
        against it too (`check_counts`)."""
        raw = dict(raw or {})
        unknown = [k for k in raw if k not in cls.model_fields]
        if unknown:
            raise ConfigError(f"{owner} has no option {unknown[0]!r} (fix: one of {describe_fields(cls) or 'none'})")
        try:
            options = cls.model_validate(raw)
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(x) for x in first["loc"])
            raise ConfigError(f"{owner}: option {loc}={raw.get(loc)!r}: {first['msg']} "
                              f"(fix: {describe_fields(cls, only=loc)})") from None
        if budget is not None:
            check_counts(options, owner, budget)
        return options


def check_counts(options: Options, owner: str, budget: int) -> None:
    """A one-line `ConfigError` when a row count of `options` (its class's `counts`), or their
    product, exceeds `budget`: every row costs at least one generated token, so more rows than
    tokens can never be spent and only allocate memory. A budget below 1 is left to the budget's
    own check."""
    if budget < 1:
        return
    values = {name: getattr(options, name) for name in type(options).counts if getattr(options, name) is not None}
    for name, v in values.items():
        if v > budget:
            raise ConfigError(f"{owner}: option {name}={v} asks for more rows than a budget of {budget} tokens "
                              f"can pay for, at one token a row at least (fix: {name} <= {budget}, or a larger budget)")
    product = math.prod(values.values())
    if len(values) > 1 and product > budget:
        names = " x ".join(f"{n}={v}" for n, v in values.items())
        raise ConfigError(f"{owner}: {names} = {product} rows a step, more than a budget of {budget} tokens "
                          f"can pay for, at one token a row at least (fix: a product <= {budget}, or a larger budget)")


def describe_fields(cls: type[Options], only: str | None = None) -> str:
    """`name=default (description)` for each field, for help texts and error messages."""
    parts = []
    for name, f in cls.model_fields.items():
        if only is not None and name != only:
            continue
        default = "required" if f.is_required() else repr(f.default)
        parts.append(f"{name}={default}" + (f" ({f.description})" if f.description and only else ""))
    return ", ".join(parts)


@dataclass(frozen=True)
class AlgorithmEntry:
    name: str
    fn: Callable[..., Any]
    options: type[Options]
    needs_scorer: bool
    summary: str

    def parse(self, raw: dict[str, Any] | None, budget: int | None = None) -> Options:
        """The validated options; with `budget` (generated tokens a search), also their row counts
        against it (`check_counts`): what the CLI, the API, collection and the server check before
        any work."""
        return self.options.parse(raw, f"algorithm {self.name}", budget)


@dataclass(frozen=True)
class ScorerEntry:
    name: str
    factory: Callable[..., Any]  # factory(process, options, collect) -> scorer
    options: type[Options]
    summary: str
    collect_only: bool = False  # reads reference answers: training-data collection only

    def parse(self, raw: dict[str, Any] | None) -> Options:
        return self.options.parse(raw, f"scorer {self.name}")


ALGORITHMS: dict[str, AlgorithmEntry] = {}
SCORERS: dict[str, ScorerEntry] = {}


def _summary(obj: Any) -> str:
    import inspect

    doc = inspect.getdoc(obj) or inspect.getdoc(inspect.getmodule(obj)) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def algorithm(name: str, options: type[Options], needs_scorer: bool = True, summary: str = ""):
    """Register a search algorithm `fn(process, scorer, problem, budget_tokens, seed, **options) -> Tree`."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        ALGORITHMS[name] = AlgorithmEntry(name, fn, options, needs_scorer, summary or _summary(fn))
        return fn

    return deco


def scorer(name: str, options: type[Options], collect_only: bool = False, summary: str = ""):
    """Register a scorer factory `factory(process, options, collect) -> Scorer`."""

    def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
        SCORERS[name] = ScorerEntry(name, factory, options, summary or _summary(factory), collect_only)
        return factory

    return deco


_loaded = False


def _load() -> None:
    """Import every module of `sharpen.search.algorithms` (each registers itself), the built-in scorers,
    whatever other packages register through the `sharpen.algorithms` / `sharpen.scorers` entry
    points, and the modules named in the environment variable `SHARPEN_PLUGINS` (comma-separated)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib
    import pkgutil
    from importlib.metadata import entry_points

    algorithms_pkg = importlib.import_module("sharpen.search.algorithms")  # loaded by name, as plugins are
    for mod in pkgutil.iter_modules(algorithms_pkg.__path__):
        importlib.import_module(f"sharpen.search.algorithms.{mod.name}")
    importlib.import_module("sharpen.search.scorers")
    for group in ("sharpen.algorithms", "sharpen.scorers"):
        for ep in entry_points(group=group):
            ep.load()
    for name in filter(None, (m.strip() for m in os.environ.get("SHARPEN_PLUGINS", "").split(","))):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"SHARPEN_PLUGINS names {name!r}, which cannot be imported ({e}) "
                              "(fix: a module on PYTHONPATH, or unset SHARPEN_PLUGINS)") from None


def algorithms() -> dict[str, AlgorithmEntry]:
    _load()
    return ALGORITHMS


def scorers() -> dict[str, ScorerEntry]:
    _load()
    return SCORERS


def get_algorithm(name: str) -> AlgorithmEntry:
    algos = algorithms()
    if name not in algos:
        raise ConfigError(f"unknown algorithm {name!r} (fix: one of {', '.join(algos)})")
    return algos[name]


@dataclass(frozen=True)
class ScorerSpec:
    """A parsed scorer spec: `name[:positional...][:key=value...]`, e.g. `rollout:4:pool`, `oracle:1`,
    `prm:runs/x/prm`, `self`."""

    name: str
    options: Options
    text: str

    @property
    def entry(self) -> ScorerEntry:
        return scorers()[self.name]


def parse_scorer(spec: str) -> ScorerSpec:
    """Validate a scorer spec without loading anything (no model, no files)."""
    regs = scorers()
    name, _, rest = spec.partition(":")
    if name not in regs:
        raise ConfigError(f"unknown scorer {spec!r} (fix: one of {', '.join(scorer_grammar().values())}, or none)")
    entry = regs[name]
    raw: dict[str, Any] = {}
    pos = list(entry.options.positional)
    if rest:
        # a path may hold colons: the last positional field takes the remainder
        items = rest.split(":")
        while items:
            item = items.pop(0)
            if "=" in item and item.split("=", 1)[0] in entry.options.model_fields:
                key, value = item.split("=", 1)
                raw[key] = value
            elif item in entry.options.model_fields and entry.options.model_fields[item].annotation is bool:
                raw[item] = True
            elif pos:
                field = pos.pop(0)
                if field == "path":  # a path may hold colons: it runs up to the first `known_key=value`
                    while items and not _is_option(items[0], entry.options):
                        item += ":" + items.pop(0)
                raw[field] = item
            else:
                raise ConfigError(f"bad scorer {spec!r}: unexpected {item!r} (fix: {scorer_grammar()[name]})")
    return ScorerSpec(name, entry.parse(raw), spec)


def _is_option(item: str, options: type[Options]) -> bool:
    key, eq, _ = item.partition("=")
    return bool(eq) and key in options.model_fields


def scorer_grammar() -> dict[str, str]:
    """name -> how to write it, e.g. `rollout[:k][:pool]`."""
    out = {}
    for name, e in scorers().items():
        parts = [f"[:{p}]" if not e.options.model_fields[p].is_required() else f":<{p}>" for p in e.options.positional]
        flags = [f"[:{f}]" for f, info in e.options.model_fields.items() if info.annotation is bool]
        out[name] = name + "".join(parts + flags)
    return out


def parse_algo_spec(spec: str, default_scorer: str | None) -> tuple[str, str | None]:
    """`algo` or `algo@scorer` (the sweep's grammar): the algorithm and the scorer it uses (None for
    an algorithm that needs none)."""
    algo, _, sc = spec.strip().partition("@")
    entry = get_algorithm(algo)
    if not entry.needs_scorer:
        return algo, sc or None
    return algo, sc or default_scorer
