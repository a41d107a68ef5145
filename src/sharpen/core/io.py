"""Atomic file writes and JSONL helpers (nothing half-written is ever left on disk), and the check
that an output directory being resumed was started with the same settings."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from sharpen.core.errors import ConfigError, TaskError

T = TypeVar("T")

_UMASK = os.umask(0)
os.umask(_UMASK)


def _publish(tmp: str, path: Path) -> None:
    """mkstemp creates 0600 files; give the result the permissions a plain open() would."""
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temp file in the same directory, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_dir(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp_dir)` on a temp dir beside `path`, then rename it to `path`, replacing an
    old one: the directory appears complete or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~_UMASK)
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old."))
            os.replace(path, old / "d")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


class JsonlAppender:
    """Append one JSON object per line, flushed and fsynced per record, so a kill loses at most
    the line being written. A torn last line (from a kill mid-write) is dropped on read."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _truncate_torn_tail(self.path)
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, obj: Any) -> None:
        self._f.write(json.dumps(obj, sort_keys=True) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _truncate_torn_tail(path: Path) -> None:
    """Drop a torn last line before appending; a last line that is complete JSON but lacks its
    newline (as `read_jsonl` reads it: a record) gets the newline instead."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        if _parse_line(data[keep:], first=keep == 0) not in (_TORN, _BLANK):
            with open(path, "ab") as f:
                f.write(b"\n")
            return
        with open(path, "r+b") as f:
            f.truncate(keep)


_BOM = b"\xef\xbb\xbf"
_TORN, _BLANK = object(), object()
_JSONL_FIX = "one JSON object per line, UTF-8 text"


def _parse_line(raw: bytes, first: bool) -> Any:
    """The JSON value of one line, _BLANK for a blank one, _TORN when it is not UTF-8 JSON."""
    if first and raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    try:
        text = raw.decode("utf-8").strip()
        return json.loads(text) if text else _BLANK
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
        return _TORN


def jsonl_values(path: str | os.PathLike, fix: str = _JSONL_FIX, torn_tail: bool = True) -> Iterator[tuple[int, Any]]:
    """(line number, JSON value) for each non-blank line, reading files as people have them: a
    UTF-8 byte-order mark and CRLF line ends are fine. A line that is not UTF-8 or not JSON raises
    a one-line TaskError naming the file and line, with `fix` as the hint. With `torn_tail`, a last
    line without a newline that does not parse (a write cut short by a kill) is skipped silently;
    a last line that parses is a complete record even without its newline."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise
    except OSError as e:
        raise TaskError(f"{path}: cannot read ({e.strerror or e}) (fix: {fix})") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            value = _parse_line(raw, first=lineno == 1)
            if value is _TORN:
                if torn_tail and not raw.endswith(b"\n"):
                    return
                raise TaskError(f"{path}:{lineno}: {_line_problem(raw, lineno == 1)} (fix: {fix})")
            if value is not _BLANK:
                yield lineno, value


def _line_problem(raw: bytes, first: bool) -> str:
    if first and raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if first and raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
            return "not UTF-8 text (UTF-16 text)"
        return f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}; a binary file?)"
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        return f"not valid JSON ({e.msg} at column {e.colno})"
    return "not valid JSON"


def _kind(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def jsonl_objects(path: str | os.PathLike, fix: str = _JSONL_FIX, torn_tail: bool = True) -> Iterator[tuple[int, dict]]:
    """Like `jsonl_values`, but every line must hold a JSON object (else a TaskError)."""
    for lineno, value in jsonl_values(path, fix, torn_tail):
        if not isinstance(value, dict):
            raise TaskError(f"{path}:{lineno}: expected a JSON object, got {_kind(value)} (fix: {fix})")
        yield lineno, value


def read_jsonl(path: str | os.PathLike, fix: str = _JSONL_FIX) -> Iterator[dict]:
    """Yield complete records; a torn final line is skipped. Malformed lines raise TaskError."""
    for _, obj in jsonl_objects(path, fix):
        yield obj


def read_records(path: str | os.PathLike, parse: Callable[[dict], T], what: str, fix: str) -> Iterator[T]:
    """`parse(obj)` for each record of a JSONL file; a record `parse` rejects (wrong or missing
    fields) raises a one-line TaskError: '<file>:<line>: not <what> (<why>) (fix: <fix>)'."""
    for lineno, obj in jsonl_objects(path, fix):
        try:
            yield parse(obj)
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            why = " ".join(str(e).split()) or type(e).__name__
            raise TaskError(f"{path}:{lineno}: not {what} ({why}) (fix: {fix})") from None


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def config_diff(recorded: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted names of the fields whose values differ, in `current`'s order (then `recorded`'s);
    dicts on both sides are compared field by field (`settings.temperature`), and a field on one side
    only differs."""
    keys = []
    for k in [*current, *(k for k in recorded if k not in current)]:
        a, b = recorded.get(k), current.get(k)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            keys += config_diff(a, b, f"{prefix}{k}.")
        elif a != b or (k in recorded) != (k in current):
            keys.append(f"{prefix}{k}")
    return keys


def _short(value: Any, width: int = 120) -> str:
    """`value` as JSON, its middle cut out when longer than `width` (a path's tail tells paths apart)."""
    text = json.dumps(value, sort_keys=True, default=str)
    half = (width - 3) // 2
    return text if len(text) <= width else text[:half] + "..." + text[-half:]


def refuse_changed_config(where: str | os.PathLike, recorded: Mapping[str, Any], current: Mapping[str, Any],
                          free: Collection[str] = (), fix: str = "the settings it was started with, or another --out"
                          ) -> None:
    """Before a command reuses the results in `where`, check that they were produced with the same
    settings: `recorded` is what `where` recorded when it was started, `current` what is asked now.

    Only the top-level fields of `current` are checked (a record may hold more, such as a sweep's
    results), nested dicts field by field. A field named in `free` (a dotted name, or a prefix of
    one) may differ: the caller lists those that do not change any reused result, such as batch
    sizes. Any other difference is a one-line ConfigError naming the first differing field and
    both values; a checked field the record lacks (written by an older sharpen) is one too.
    `sharpen search`/`eval --out` (`sharpen.api`), `sharpen sweep` (`sharpen.search.sweep.prior_cells`)
    and `sharpen run --seeds` (`sharpen.loop.seeds.run_seeds`) all check through this function."""
    def is_free(name: str) -> bool:
        return any(name == f or name.startswith(f + ".") for f in free)

    old = {k: recorded[k] for k in current if k in recorded}
    differs = [k for k in config_diff(old, {k: current[k] for k in old}) if not is_free(k)]
    missing = [k for k in current if k not in recorded and not is_free(k)]
    if missing and not differs:
        raise ConfigError(f"{where} was recorded by an older sharpen (no {missing[0]}) (fix: another --out)")
    if differs:
        name = differs[0]

        def at(d: Mapping[str, Any]) -> Any:
            for part in name.split("."):
                d = d.get(part) if isinstance(d, Mapping) else None
            return d

        more = f" and {len(differs) + len(missing) - 1} more" if len(differs) + len(missing) > 1 else ""
        raise ConfigError(f"{where} was started with another {name}: {_short(at(old))} there, {_short(at(current))} "
                          f"now{more} (fix: {fix})")
