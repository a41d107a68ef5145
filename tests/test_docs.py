"""The docs stay true to the code: every `sharpen ...` command shown in README.md and docs/guide/*.md
parses (its subcommand's `--help` exits 0 and lists every `--option` the command uses), every relative
markdown link in README.md and docs/ resolves, and the generated reference pages are what
docs/scripts/reference.py writes today. Fast: no model is loaded."""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from sharpen.cli import app

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "guide"
REFERENCE = ROOT / "docs" / "scripts" / "reference.py"
GENERATED = ("configuration.md", "algorithms.md")


def command_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(GUIDE.glob("*.md"))]


def link_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


# -- commands -----------------------------------------------------------------------------------
FENCE = re.compile(r"^\s*```[^\n]*\n(.*?)^\s*```", re.S | re.M)


def shown_commands(text: str) -> list[str]:
    """The `sharpen ...` command lines of a page's code blocks, continuation lines joined."""
    found = []
    for block in FENCE.findall(text):
        lines = block.replace("\\\n", " ").splitlines()
        for line in lines:
            # `sharpen ...`, also as a module under a launcher (`accelerate launch -m sharpen train ...`)
            m = re.match(r"^\s*(?:\$ )?(?:\S.*?\s-m )?(sharpen .*)$", line)
            if m:
                found.append(m.group(1))
    return found


def tokens(command: str) -> list[str]:
    """The words of a command line, its `# comment` dropped and optional `[--flag ...]` unwrapped."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError:  # an unbalanced quote: split on spaces
        words = command.split("#", 1)[0].split()
    return [w.strip("[]") for w in words if w.strip("[]")]


def subcommand(words: list[str]) -> tuple[list[str], object]:
    """The subcommand path of `sharpen WORDS` (e.g. ["train", "dpo"]) and its command, read from the CLI's
    own groups (a group is whatever has `commands`: typer vendors its own click)."""
    cmd = typer.main.get_command(app)
    path = []
    for w in words:
        if w in getattr(cmd, "commands", {}):
            cmd = cmd.commands[w]
            path.append(w)
        else:
            break
    return path, cmd


@functools.cache
def help_text(path: tuple[str, ...]) -> tuple[int, str]:
    r = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
    return r.exit_code, r.output


def problems(command: str) -> list[str]:
    """What is wrong with one shown command: an unknown subcommand, a help that fails, or an option its
    help does not list. Placeholders (`...`, `<path>`, `KEY_FILE`) are values, not options, so they pass."""
    words = tokens(command)[1:]
    path, cmd = subcommand(words)
    rest = words[len(path):]
    if not path:
        return [f"{command!r}: no sharpen subcommand in {words[:1]}"]
    code, text = help_text(tuple(path))
    if code != 0:
        return [f"{command!r}: `sharpen {' '.join(path)} --help` exited {code}"]
    listed = set(re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", text))
    out = []
    for w in rest:
        if w.startswith("--") and len(w) > 2:
            option = w.split("=", 1)[0]
            if option not in listed:
                out.append(f"{command!r}: `sharpen {' '.join(path)}` has no option {option}")
    if hasattr(cmd, "commands"):
        out.append(f"{command!r}: `sharpen {' '.join(path)}` needs a subcommand")
    return out


def all_commands() -> list[tuple[str, str]]:
    return [(p.relative_to(ROOT).as_posix(), c) for p in command_pages() for c in shown_commands(p.read_text())]


def test_pages_show_commands():
    shown = all_commands()
    assert len(shown) > 20, shown
    assert any(c.startswith("sharpen serve") for _, c in shown)
    assert any(c.startswith("sharpen run") for _, c in shown)


@pytest.mark.parametrize("page", [p.relative_to(ROOT).as_posix() for p in command_pages()])
def test_shown_commands_parse(page):
    bad = [msg for c in shown_commands((ROOT / page).read_text()) for msg in problems(c)]
    assert not bad, f"{page}:\n" + "\n".join(bad)


def test_command_check_can_fail():
    assert problems("sharpen search --algo mcts --n 5") == []
    assert problems("sharpen train dpo --model M --data D --out O --max-steps 5  # a comment --bogus") == []
    assert any("--bogus-option" in m for m in problems("sharpen search --algo mcts --bogus-option 3"))
    assert any("--bogus" in m for m in problems("sharpen train dpo --model M [--bogus]"))
    assert problems("sharpen frobnicate --n 3")
    assert problems("sharpen train --model M")
    text = "text\n\n```bash\nsharpen eval --n 5 \\\n  --not-an-option 3   # x\n```\n"
    [command] = shown_commands(text)
    assert any("--not-an-option" in m for m in problems(command))
    [command] = shown_commands("```\ntorchrun --nproc_per_node 2 -m sharpen train sft --bogus 1\n```\n")
    assert command.startswith("sharpen train sft") and problems(command)


# -- links --------------------------------------------------------------------------------------
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")


def broken_links(page: Path, text: str | None = None) -> list[str]:
    """Relative links of `page` (anchors stripped; http(s), mailto and pure anchors ignored) whose target
    does not exist. Links inside code blocks and inline code are not links."""
    text = page.read_text() if text is None else text
    text = FENCE.sub("", text)
    text = re.sub(r"`[^`\n]*`", "", text)
    bad = []
    for m in LINK.finditer(text):
        target = m.group(1) or m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0].split("?", 1)[0]
        if not (page.parent / path).exists():
            bad.append(f"{page.relative_to(ROOT).as_posix()}: {target}")
    return bad


@pytest.mark.parametrize("page", [p.relative_to(ROOT).as_posix() for p in link_pages()])
def test_relative_links_resolve(page):
    bad = broken_links(ROOT / page)
    assert not bad, "\n".join(bad)


def test_link_check_can_fail():
    page = ROOT / "docs" / "guide" / "concepts.md"
    good = "[a](../design.md) [b](recipes.md#grpo) [c](https://example.com/x.md) [d](#tree) ![p](../results/README.md)"
    assert broken_links(page, good) == []
    assert broken_links(page, "see [gone](no-such-page.md#x)") == ["docs/guide/concepts.md: no-such-page.md#x"]
    assert broken_links(page, "![plot](missing.png)")
    assert broken_links(page, "```\n[not a link](nowhere.md)\n```\n") == []


# -- generated pages ----------------------------------------------------------------------------
def regenerate(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REFERENCE), "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def stale_pages(fresh: Path, committed: Path) -> list[str]:
    return [name for name in GENERATED
            if not (committed / name).is_file() or (committed / name).read_text() != (fresh / name).read_text()]


def test_generated_pages_are_current(tmp_path):
    r = regenerate(tmp_path)
    assert r.returncode == 0, r.stderr
    stale = stale_pages(tmp_path, GUIDE)
    assert not stale, f"stale: {stale} (fix: .venv/bin/python docs/scripts/reference.py)"
    for name in GENERATED:
        assert (tmp_path / name).read_text().startswith("<!-- generated by docs/scripts/reference.py; do not edit -->")


def test_generated_check_can_fail(tmp_path):
    fresh, committed = tmp_path / "fresh", tmp_path / "committed"
    assert regenerate(fresh).returncode == 0
    committed.mkdir()
    for name in GENERATED:
        (committed / name).write_text((fresh / name).read_text())
    assert stale_pages(fresh, committed) == []
    (committed / "algorithms.md").write_text((fresh / "algorithms.md").read_text() + "\nedited by hand\n")
    assert stale_pages(fresh, committed) == ["algorithms.md"]
    check = subprocess.run([sys.executable, str(REFERENCE), "--check", "--out", str(committed)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 1 and "algorithms.md" in check.stderr


# -- benchmarks ---------------------------------------------------------------------------------
def test_benchmarks_readme_lists_every_script():
    text = (ROOT / "benchmarks" / "README.md").read_text()
    listed = set(re.findall(r"^\| ([\w.]+\.py) \|", text, re.M))
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py")}
    assert scripts - listed == set(), f"benchmarks/README.md does not list {sorted(scripts - listed)}"
    assert listed - scripts == set(), f"benchmarks/README.md lists missing scripts {sorted(listed - scripts)}"
