import json

import pytest

from sharpen.core.errors import ConfigError, TaskError
from sharpen.core.tasks import last_boxed, load_task, parse_task_args

CHAIN = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1}


def test_gym_splits_are_deterministic_and_disjoint():
    task = load_task("gym:chain_sum", CHAIN)
    test_a = task.problems("test", 50, seed=0)
    test_b = task.problems("test", 50, seed=0)
    train = task.problems("train", 300, seed=0)
    assert [p.id for p in test_a] == [p.id for p in test_b]
    assert len({p.question for p in test_a}) == 50
    assert not {p.question for p in test_a} & {p.question for p in train}
    # asking for a different n or seed never moves a question across splits
    assert not {p.question for p in task.problems("test", 80, seed=3)} & {p.question for p in train}


def test_gym_verifier_uses_dataset_scorer():
    task = load_task("gym:chain_sum", CHAIN)
    p = task.problems("test", 1)[0]
    assert task.verify(p, p.answer)
    assert task.verify(p, p.answer + ".0")
    assert not task.verify(p, str(int(p.answer) + 1))
    assert not task.verify(p, None)


def test_gym_errors():
    with pytest.raises(TaskError, match="unknown reasoning-gym dataset"):
        load_task("gym:no_such_dataset")
    with pytest.raises(ConfigError, match="bad --task-arg"):
        load_task("gym:chain_sum", {"bogus": 1})
    with pytest.raises(ConfigError, match="key=value"):
        parse_task_args(["min_terms"])
    assert parse_task_args(["min_terms=2", "name=x"]) == {"min_terms": 2, "name": "x"}


def _write(tmp_path, rows, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return p


def test_gsm8k_task(tmp_path):
    rows = [{"question": f"Tom has {i} apples and buys 2. How many?", "answer": f"{i}+2={i + 2}\n#### {i + 2}"} for i in range(60)]
    task = load_task(f"gsm8k:{_write(tmp_path, rows)}")
    test = task.problems("test", 5)
    train = task.problems("train", 20)
    assert not {p.id for p in test} & {p.id for p in train}
    p = test[0]
    assert task.verify(p, p.answer) and task.verify(p, p.answer + ".0")
    assert not task.verify(p, "-1")


def test_gsm8k_real_file_format():
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "shared/data/gsm8k/test.jsonl"
    if not path.exists():
        pytest.skip("shared GSM8K file not present")
    task = load_task(f"gsm8k:{path}")
    assert len(task.rows) == 1319
    p = task.problems("test", 3)[0]
    assert task.verify(p, p.answer)


def test_math_task(tmp_path):
    rows = [{"problem": f"Compute {i}/2.", "solution": f"It is \\boxed{{\\frac{{{i}}}{{2}}}}."} for i in range(1, 40)]
    task = load_task(f"math:{_write(tmp_path, rows)}")
    p = task.problems("test", 2)[0]
    assert p.answer.startswith("\\frac")
    assert task.verify(p, p.answer)
    assert last_boxed("a \\boxed{x^{2}} b") == "x^{2}"
    assert last_boxed("none") is None


@pytest.mark.parametrize(
    "rows,match",
    [
        (['{"question": "q", "answer": "#### 1"}', "{not json"], r"d.jsonl:2: not valid JSON"),
        ([{"question": "q"}], r"d.jsonl:1: missing 'answer' field"),
        ([{"question": "q", "answer": "no marker"}], r"d.jsonl:1: no final answer"),
        (["[1, 2]"], r"d.jsonl:1: expected a JSON object"),
    ],
)
def test_malformed_jsonl(tmp_path, rows, match):
    with pytest.raises(TaskError, match=match):
        load_task(f"gsm8k:{_write(tmp_path, rows)}")


def test_missing_file_and_unknown_kind(tmp_path):
    with pytest.raises(TaskError, match="data file not found"):
        load_task(f"gsm8k:{tmp_path / 'nope.jsonl'}")
    with pytest.raises(TaskError, match="unknown task kind"):
        load_task("foo:bar")
    with pytest.raises(TaskError, match="bad task"):
        load_task("chain_sum")
