"""Bad input: a one-line error naming the problem and the fix, exit code 2, no traceback,
nothing written."""

import json
import os
import subprocess
import sys

import pytest

SHARPEN = [sys.executable, "-m", "sharpen"]


def run(args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(SHARPEN + args, cwd=cwd, capture_output=True, text=True, env=env, timeout=120)


def _bad_rows(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"question": "q", "answer": "#### 1"}\n{oops\n')
    return p


def _no_answer(tmp_path):
    p = tmp_path / "noans.jsonl"
    p.write_text('{"question": "q"}\n')
    return p


def _weightless_dir(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    return d


@pytest.mark.parametrize(
    "make_args,needle",
    [
        (lambda t: ["--task", "gym:not_a_dataset"], "unknown reasoning-gym dataset"),
        (lambda t: ["--task", "wat:x"], "unknown task kind"),
        (lambda t: ["--task", f"gsm8k:{t / 'missing.jsonl'}"], "data file not found"),
        (lambda t: ["--task", f"gsm8k:{_bad_rows(t)}"], "bad.jsonl:2: not valid JSON"),
        (lambda t: ["--task", f"gsm8k:{_no_answer(t)}"], "noans.jsonl:1: missing 'answer'"),
        (lambda t: ["--model", "no-such-model"], "unknown model"),
        (lambda t: ["--model", str(_weightless_dir(t))], "has no weights"),
        (lambda t: ["--task-arg", "min_terms"], "key=value"),
        (lambda t: ["--task-arg", "bogus=1"], "bad --task-arg"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, make_args, needle):
    out = tmp_path / "out"
    r = run(["eval", *make_args(tmp_path), "--n", "2", "--out", str(out)], cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert needle in lines[0] and "fix" in lines[0]
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_eval_json_on_tiny_model(tmp_path, tiny_model_dir):
    out = tmp_path / "ev"
    r = run(
        ["eval", "--model", tiny_model_dir, "--task", "gym:chain_sum", "--task-arg", "max_terms=2", "--task-arg", "max_digits=1",
         "--n", "3", "--samples", "2", "--max-tokens", "6", "--out", str(out), "--json"],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["n"] == 3 and "pass@2" in m and "greedy" in m
    assert json.loads((out / "metrics.json").read_text())["n"] == 3
    assert len((out / "problems.jsonl").read_text().splitlines()) == 3


def test_models_list(tmp_path):
    r = run(["models", "list"], cwd=tmp_path)
    assert r.returncode == 0 and "smollm2-135m" in r.stdout


def test_models_gguf(tmp_path):
    r = run(["models", "gguf", "smollm2-135m"], tmp_path)
    assert r.returncode == 0 and r.stdout.strip().endswith(".gguf"), r.stderr
    assert os.path.getsize(r.stdout.strip()) > 10_000_000  # the real weights, not a pointer
    r = run(["models", "gguf", "nope"], tmp_path)
    assert r.returncode == 2 and "smollm2-135m" in r.stderr and "Traceback" not in r.stderr


def test_train_sft_command_and_bad_data_dir(tmp_path, tiny_model_dir):
    from datasets import Dataset

    from sharpen.train.data import save_dataset

    rows = {"prompt": ["What is 1 + 2?\n"] * 4, "completion": ["1 + 2 = 3\nAnswer: 3"] * 4,
            "problem_id": ["p"] * 4, "node_id": [1] * 4, "num_steps": [2] * 4, "round": [0] * 4,
            "recipe": ["rft"] * 4, "answer": ["3"] * 4}
    save_dataset(Dataset.from_dict(rows), tmp_path / "traces")
    r = run(["train", "sft", "--model", tiny_model_dir, "--data", str(tmp_path / "traces"), "--out",
             str(tmp_path / "sft"), "--max-steps", "1", "--batch-size", "2"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "sft" / "merged" / "config.json").exists()
    r = run(["train", "dpo", "--model", tiny_model_dir, "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "d")],
            cwd=tmp_path)
    assert r.returncode == 2 and "dataset dir not found" in r.stderr and not (tmp_path / "d").exists()


def test_serve_unknown_dtype_one_line_exit_2(tmp_path):
    r = run(["serve", "--dtype", "fp8", "--port", "1"], cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "unknown dtype 'fp8'" in lines[0] and "fix" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
