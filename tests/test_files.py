"""Files as people have them: a UTF-8 byte-order mark and Windows CRLF line ends are read fine, and
anything malformed (bad JSON on line N, a value that is not an object, wrong fields, binary or
non-UTF-8 bytes, an empty file) is a one-line typed error naming the file, the line, the problem
and a fix; the CLI prints it as one line and exits 2, with no traceback and nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sharpen.core.errors import ConfigError, SharpenError, TaskError
from sharpen.core.io import JsonlAppender, read_jsonl
from sharpen.core.tasks import load_task
from sharpen.core.tree import Tree
from sharpen.loop.config import load_config
from sharpen.report.viewer import write_viewer
from sharpen.train.data import load_trees

BOM = b"\xef\xbb\xbf"
GSM8K_ROWS = [{"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"},
              {"question": "What is 10 - 4?", "answer": "#### 6"}]


def windows(rows: list[dict], final_newline: bool = True) -> bytes:
    """JSONL as a Windows editor saves it: a BOM, CRLF line ends."""
    text = "\r\n".join(json.dumps(r) for r in rows) + ("\r\n" if final_newline else "")
    return BOM + text.encode("utf-8")


def a_tree(i: int) -> Tree:
    t = Tree(f"p{i}", f"What is {i} + 1?", reference=str(i + 1), algo="best_of_n")
    t.add(0, step=f"Answer: {i + 1}", terminal=True, answer=str(i + 1), correct=True)
    t.chosen = [1]
    return t


def assert_one_line(e: SharpenError, *needles: str) -> None:
    msg = str(e)
    assert "\n" not in msg and "(fix: " in msg, msg
    for n in needles:
        assert n in msg, msg


# -- BOM and CRLF are fine ---------------------------------------------------------------------


@pytest.mark.parametrize("final_newline", [True, False])
def test_gsm8k_jsonl_with_bom_and_crlf_loads(tmp_path, final_newline):
    p = tmp_path / "gsm8k.jsonl"
    p.write_bytes(windows(GSM8K_ROWS, final_newline))
    task = load_task(f"gsm8k:{p}")
    assert [(r.question, r.answer) for r in task.rows] == [("What is 2 + 3?", "5"), ("What is 10 - 4?", "6")]


def test_math_jsonl_with_bom_and_crlf_loads(tmp_path):
    p = tmp_path / "math.jsonl"
    p.write_bytes(windows([{"problem": "1+1?", "solution": "so \\boxed{2}"}]))
    assert [r.answer for r in load_task(f"math:{p}").rows] == ["2"]


def test_trees_file_with_bom_and_crlf_loads_and_views(tmp_path):
    trees = [a_tree(i) for i in range(3)]
    p = tmp_path / "trees.jsonl"
    p.write_bytes(windows([t.to_dict() for t in trees]))
    assert load_trees(p) == trees
    assert load_trees(tmp_path) == trees
    assert list(read_jsonl(p)) == [t.to_dict() for t in trees]
    out = write_viewer(p, tmp_path / "view.html")
    assert all(t.problem_id in out.read_text(encoding="utf-8") for t in trees)


def test_yaml_config_with_bom_and_crlf_loads(tmp_path):
    p = tmp_path / "cfg.yaml"
    p.write_bytes(BOM + b"name: windows\r\nrounds: 2\r\ntrain:\r\n  max_steps: 3\r\n")
    cfg = load_config(p, {"collect.budget": 99})
    assert (cfg.name, cfg.rounds, cfg.train.max_steps, cfg.collect.budget) == ("windows", 2, 3, 99)


# -- torn tails (resume) stay silent; a complete last line without its newline is a record ------


def test_torn_last_line_is_skipped_and_a_complete_one_kept(tmp_path):
    p = tmp_path / "rows.jsonl"
    full = json.dumps({"id": 2, "x": "y"})
    p.write_bytes(b'{"id": 1}\n' + full[:-4].encode())  # killed mid-write
    assert list(read_jsonl(p)) == [{"id": 1}]
    with JsonlAppender(p) as w:  # resume drops the torn line and appends after the last complete one
        w.write({"id": 3})
    assert list(read_jsonl(p)) == [{"id": 1}, {"id": 3}]

    p.write_bytes(b'{"id": 1}\r\n' + full.encode())  # complete, only the newline missing
    assert list(read_jsonl(p)) == [{"id": 1}, {"id": 2, "x": "y"}]
    with JsonlAppender(p) as w:  # what was read as a record stays one
        w.write({"id": 3})
    assert list(read_jsonl(p)) == [{"id": 1}, {"id": 2, "x": "y"}, {"id": 3}]


# -- malformed files: one-line typed errors ---------------------------------------------------

GOOD = json.dumps(GSM8K_ROWS[0]).encode() + b"\n"
MALFORMED_TASKS = [
    (GOOD + b"{oops\n", "d.jsonl:2: not valid JSON"),
    (b"[1, 2]\n", "d.jsonl:1: expected a JSON object, got an array"),
    (GOOD + b"null\n", "d.jsonl:2: expected a JSON object, got null"),
    (b'{"question": "q", "answer": 12}\n', "d.jsonl:1: field 'answer' is not a string"),
    (b'{"q": "q", "a": "#### 1"}\n', "d.jsonl:1: missing 'question' field"),
    (GOOD + b"\x89PNG\r\n\x1a\n\x00\x00\xff\xd8\n", "d.jsonl:2: not UTF-8 text"),
    (GOOD + "{\"question\": \"caf\u00e9\", \"answer\": \"#### 1\"}\n".encode("latin-1"), "d.jsonl:2: not UTF-8 text"),
    (json.dumps(GSM8K_ROWS[0]).encode("utf-16") + b"\n", "d.jsonl:1: not UTF-8 text (UTF-16 text)"),
    (GOOD + b'{"question": "q", "ans', "d.jsonl:2: not valid JSON"),  # a cut-off last line is no torn write here
    (b"", "d.jsonl has no rows"),
    (BOM + b"\r\n\r\n", "d.jsonl has no rows"),
]


@pytest.mark.parametrize("data,needle", MALFORMED_TASKS, ids=[n for _, n in MALFORMED_TASKS])
def test_malformed_task_file_is_one_line_task_error(tmp_path, data, needle):
    p = tmp_path / "d.jsonl"
    p.write_bytes(data)
    with pytest.raises(TaskError) as e:
        load_task(f"gsm8k:{p}")
    assert_one_line(e.value, needle)


MALFORMED_TREES = [
    (b"hello\nworld\n", "bad.jsonl:1: not valid JSON"),
    (json.dumps(a_tree(0).to_dict()).encode() + b"\n[1]\n", "bad.jsonl:2: expected a JSON object"),
    (json.dumps(GSM8K_ROWS[0]).encode() + b"\n", "bad.jsonl:1: not a search tree"),
    (b'{"problem_id": "p", "question": "q", "wat": 1}\n', "bad.jsonl:1: not a search tree"),
    (b'{"problem_id": "p", "question": "q", "nodes": [1, 2]}\n', "bad.jsonl:1: not a search tree"),
    (b"\x00\x01\x02\xff\xfe\x00\n\x00", "bad.jsonl:1: not UTF-8 text"),
    (b"", "holds no trees"),
    (b"\r\n", "holds no trees"),
]


@pytest.mark.parametrize("data,needle", MALFORMED_TREES, ids=[n for _, n in MALFORMED_TREES])
def test_malformed_trees_file_is_one_line_error_and_no_html(tmp_path, data, needle):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(data)
    with pytest.raises(TaskError) as e:
        load_trees(p)
    assert_one_line(e.value, needle)
    out = tmp_path / "bad.html"
    with pytest.raises((TaskError, ConfigError)) as e:
        write_viewer(p, out)
    assert_one_line(e.value, needle)
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


MALFORMED_CONFIGS = [
    (b"", "c.yaml: the file is empty"),
    (BOM + b"# only a comment\r\n", "c.yaml: the file is empty"),
    (b"name: x\nrounds: [1,\n", "c.yaml:3: not valid YAML"),
    (b"name: x\n\x00\x01binary\n", "c.yaml:2: not valid YAML (unacceptable character"),
    (b"name: x\n\x89PNG\r\n\x1a\n\xff\n", "c.yaml:2: not UTF-8 text"),
    ("name: x\n".encode("utf-16"), "c.yaml:1: not UTF-8 text (UTF-16 text)"),
    (b"- a\n- b\n", "expected a mapping at the top level"),
    (b"rounds: zero\n", "rounds"),
]


@pytest.mark.parametrize("data,needle", MALFORMED_CONFIGS, ids=[n for _, n in MALFORMED_CONFIGS])
def test_malformed_config_is_one_line_config_error(tmp_path, data, needle):
    p = tmp_path / "c.yaml"
    p.write_bytes(data)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert_one_line(e.value, needle)


def test_override_into_a_non_section_is_a_config_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"name: x\ntrain: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, {"train.max_steps": 2})
    assert_one_line(e.value, "train is not a section")


# -- the CLI: one line on stderr, exit 2, no traceback, nothing written ------------------------


def sharpen(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "sharpen", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def assert_cli_error(r: subprocess.CompletedProcess, needle: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert needle in lines[0] and "fix" in lines[0], r.stderr
    assert "Traceback" not in r.stderr + r.stdout


@pytest.mark.parametrize(
    "name,data,needle",
    [("notatrees.txt", b"just some notes\nnot trees at all\n", "notatrees.txt:1: not valid JSON"),
     ("gsm8k.jsonl", json.dumps(GSM8K_ROWS[0]).encode() + b"\n", "gsm8k.jsonl:1: not a search tree"),
     ("image.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\n", "image.png:1: not UTF-8 text")],
    ids=["text", "gsm8k-rows", "binary"],
)
def test_cli_view_of_a_file_that_is_not_trees(tmp_path, name, data, needle):
    (tmp_path / name).write_bytes(data)
    r = sharpen(["view", name], tmp_path)
    assert_cli_error(r, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no HTML, no temp file


def test_cli_build_and_run_on_bad_files(tmp_path):
    (tmp_path / "trees.jsonl").write_bytes(BOM + b'{"problem_id": "p"}\r\n')
    r = sharpen(["build", "traces", "--trees", "trees.jsonl", "--out", "traces"], tmp_path)
    assert_cli_error(r, "trees.jsonl:1: not a search tree")
    assert not (tmp_path / "traces").exists()

    (tmp_path / "cfg.yaml").write_bytes(b"name: x\n\xff\xfe\x00binary\n")
    r = sharpen(["run", "cfg.yaml", "--out", "out"], tmp_path)
    assert_cli_error(r, "cfg.yaml:2: not UTF-8 text")
    assert not (tmp_path / "out").exists()
