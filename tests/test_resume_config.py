"""`sharpen search --out D` and `sharpen eval --out D` resume from the rows in D only when D was
started with the same settings: a setting that changes the rows is a one-line error naming it (exit
2) and D is left as it was; settings that change no row (n, batch sizes) may differ."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import build_tiny_model
from typer.testing import CliRunner

from sharpen.cli import app, main
from sharpen.core.errors import ConfigError
from sharpen.core.io import read_jsonl

TASK = ["--task-arg", "min_terms=2", "--task-arg", "max_terms=2", "--task-arg", "min_digits=1",
        "--task-arg", "max_digits=1"]


def invoke(args: list[str]):
    return CliRunner().invoke(app, args, catch_exceptions=True)


def refused(args: list[str], monkeypatch, capsys) -> str:
    """Run `sharpen ARGS` as the console script does: it must exit 2 with one line; returns it."""
    monkeypatch.setattr(sys, "argv", ["sharpen", *args])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    r = invoke(args)
    assert isinstance(r.exception, ConfigError), r.output
    msg = str(r.exception)
    assert "\n" not in msg and "(fix: " in msg
    return msg


def snapshot(d) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def test_search_out_refuses_other_settings_and_extends_n(tmp_path, tiny_model_dir, monkeypatch, capsys):
    out = tmp_path / "s"
    base = ["search", "--model", tiny_model_dir, "--algo", "vote", *TASK, "--budget", "16", "--rollout-tokens", "8",
            "--seed", "1", "--out", str(out), "--json"]
    r = invoke([*base, "--n", "2", "--parallel", "2"])
    assert r.exit_code == 0, r.output
    before = snapshot(out)
    assert len(before["trees.jsonl"].splitlines()) == 2
    for change, field in ((["--budget", "24"], "budget"), (["--seed", "2"], "seed"),
                          (["--algo", "bon", "--scorer", "self"], "algo"), (["--arg", "batch=4"], "args.batch"),
                          (["--rollout-tokens", "9"], "rollout_tokens"), (["--collect"], "collect")):
        args = [*base, "--n", "2", *change]
        msg = refused(args, monkeypatch, capsys)
        assert f"another {field}:" in msg, (change, msg)
        assert snapshot(out) == before, change  # nothing rewritten, config.json included
    # the model of another directory: refused the same way
    other = build_tiny_model(str(tmp_path / "other-model"), seed=1)
    assert "another model:" in refused([*base, "--n", "2", "--model", other], monkeypatch, capsys)
    # an option given at its default value is the same search
    r = invoke([*base, "--n", "2", "--arg", "batch=8"])
    assert r.exit_code == 0, r.output
    assert (out / "trees.jsonl").read_bytes() == before["trees.jsonl"]
    # a longer run with other speed settings (batch, parallel) extends the file
    r = invoke([*base, "--n", "3", "--parallel", "1", "--batch", "4"])
    assert r.exit_code == 0, r.output
    rows = list(read_jsonl(out / "trees.jsonl"))
    assert len(rows) == 3 and json.loads(r.output.strip().splitlines()[-1])["n"] == 3
    assert (out / "trees.jsonl").read_bytes().startswith(before["trees.jsonl"])  # the first two reused
    assert json.loads((out / "config.json").read_text())["n"] == 3


def test_eval_out_refuses_another_model(tmp_path, tiny_model_dir, monkeypatch, capsys):
    out = tmp_path / "e"
    base = ["eval", *TASK, "--samples", "2", "--max-tokens", "4", "--out", str(out), "--json"]
    r = invoke([*base, "--model", tiny_model_dir, "--n", "2"])
    assert r.exit_code == 0, r.output
    before = snapshot(out)
    other = build_tiny_model(str(tmp_path / "other-model"), seed=1)
    msg = refused([*base, "--model", other, "--n", "2"], monkeypatch, capsys)
    assert "another model:" in msg and other in msg
    assert snapshot(out) == before
    for change, field in ((["--samples", "3"], "samples"), (["--temperature", "1.0"], "temperature"),
                          (["--seed", "4"], "seed"), (["--max-tokens", "5"], "max_tokens"),
                          (["--task-arg", "max_terms=3"], "task_args.max_terms")):
        msg = refused([*base, "--model", tiny_model_dir, "--n", "2", *change], monkeypatch, capsys)
        assert f"another {field}:" in msg, (change, msg)
        assert snapshot(out) == before
    # a search directory is not an eval one
    assert "another command:" in refused(["search", "--model", tiny_model_dir, *TASK, "--algo", "vote", "--n", "2",
                                          "--out", str(out)], monkeypatch, capsys)
    # more problems, another batch: the two rows reused, one added
    r = invoke([*base, "--model", tiny_model_dir, "--n", "3", "--batch", "1"])
    assert r.exit_code == 0, r.output
    assert (out / "problems.jsonl").read_bytes().startswith(before["problems.jsonl"])
    assert len(list(read_jsonl(out / "problems.jsonl"))) == 3


def test_refuse_changed_config_names_the_first_field():
    from sharpen.core.io import refuse_changed_config

    rec = {"a": 1, "s": {"t": 0.7, "batch": 8}, "n": 5, "extra": "kept"}
    refuse_changed_config("d", rec, {"a": 1, "s": {"t": 0.7, "batch": 4}, "n": 9}, free=("n", "s.batch"))
    with pytest.raises(ConfigError, match=r"^d was started with another s\.t: 0\.7 there, 0\.8 now \(fix: x\)$"):
        refuse_changed_config("d", rec, {"a": 1, "s": {"t": 0.8, "batch": 8}, "n": 5}, fix="x")
    with pytest.raises(ConfigError, match="another a: 1 there, 2 now and 1 more"):
        refuse_changed_config("d", rec, {"a": 2, "s": {"t": 0.8, "batch": 8}, "n": 5})
    with pytest.raises(ConfigError, match=r"older sharpen \(no new\)"):
        refuse_changed_config("d", rec, {"a": 1, "new": 0})
    refuse_changed_config("d", rec, {"a": 1, "new": 0}, free=("new",))
