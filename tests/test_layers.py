"""The package's layers, read from its own imports (every `import`, at module level or inside a
function): no module imports a higher layer, and no import cycle exists anywhere.

    core  <  backends  <  search  <  train  <  report  <  loop  <  api, serve, cli

`python -m pytest tests/test_layers.py -q` names the offending import when this stops holding.
"""

from __future__ import annotations

import ast
from pathlib import Path

import sharpen

SRC = Path(sharpen.__file__).parent
LAYERS = ["core", "backends", "search", "train", "report", "loop", "faces"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in SRC.rglob("*.py")}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The sharpen modules `name` imports (`from a import b` counts as a.b when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in known and m != name}


def layer(name: str) -> int:
    parts = name.split(".")
    if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS):
        return LAYERS.index(parts[1])
    return LAYERS.index("faces")  # sharpen, sharpen.api, sharpen.cli, sharpen.serve, sharpen.__main__


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def test_every_module_is_in_a_layer():
    for name in modules():
        parts = name.split(".")
        assert len(parts) <= 2 or parts[1] in LAYERS[:-1], f"{name} is in no layer (fix: move it under one of {LAYERS[:-1]})"


def test_no_module_imports_a_higher_layer():
    bad = [f"{a} ({LAYERS[layer(a)]}) imports {b} ({LAYERS[layer(b)]})"
           for a, targets in sorted(graph().items()) for b in sorted(targets) if layer(b) > layer(a)]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    g = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checks_see_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The reader above finds what it is for: a planted upward import and cycle are reported."""
    pkg = tmp_path / "sharpen"
    (pkg / "core").mkdir(parents=True)
    (pkg / "loop").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "loop" / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("def f():\n    from sharpen.loop import b\n")
    (pkg / "loop" / "b.py").write_text("from sharpen.core.a import f\n")
    monkeypatch.setattr(__import__(__name__), "SRC", pkg)
    g = graph()
    assert g["sharpen.core.a"] == {"sharpen.loop.b"} and g["sharpen.loop.b"] == {"sharpen.core.a"}
    assert layer("sharpen.loop.b") > layer("sharpen.core.a")
    try:
        test_no_import_cycles()
    except AssertionError as e:
        assert "sharpen.core.a" in str(e)
    else:
        raise AssertionError("a planted cycle was not found")
