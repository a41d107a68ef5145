"""The report shows only what a run measured: no pass@k / majority columns and no accuracy-vs-tokens
plot for a greedy-only evaluation (`eval.samples: 0`), and no exploitation AUROC where the
collection scorer is the oracle (the scorer is the verifier: 1.0 by construction)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sharpen.report.run import collect_facts, summary_table, write_report
from sharpen.report.tracking import round_scalars


def _eval(samples: int, greedy: float) -> dict[str, Any]:
    """metrics.json in the shape `evaluate.summarize` + the runner's eval stage write."""
    m: dict[str, Any] = {"n": 10, "samples": samples, "greedy": greedy, "greedy_tokens": 31.5,
                         "exploration": 0.0, "model": "m", "tokens_per_second": 100.0}
    if samples:
        m.update({"pass@1": greedy + 0.05, "pass@2": greedy + 0.1, "pass@4": greedy + 0.15,
                  "majority@4": greedy + 0.02, "mean_tokens": 33.0, "exploration": 1.2})
    return m


def _collect(scorer: str | None, auroc: float | None) -> dict[str, Any]:
    """metrics.json in the shape the runner's collect stage writes (search_metrics + monitors)."""
    m: dict[str, Any] = {"accuracy": 0.55, "mean_generated_tokens": 420.0, "exploration": 1.75,
                         "exploitation_auroc": auroc, "model": "m"}
    if scorer is not None:
        m["scorer"] = scorer
    return m


def fake_run(tmp_path: Path, samples: int, collects: list[dict[str, Any]]) -> Path:
    """A run directory as `sharpen run` leaves it: round 0 evaluated, then per round collect, data, eval."""
    run = tmp_path / "run"
    rounds = len(collects)

    def put(rel: str, obj: Any) -> None:
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(json.dumps(obj))

    stages = {"round-0/eval": {"status": "done", "started": 0.0, "finished": 5.0}}
    put("round-0/eval/metrics.json", _eval(samples, 0.2))
    for r, c in enumerate(collects, 1):
        put(f"round-{r}/collect/metrics.json", c)
        put(f"round-{r}/data/summary.json", {"rows": {"pairs": 12 * r}})
        put(f"round-{r}/eval/metrics.json", _eval(samples, 0.2 + 0.1 * r))
        for st in ("collect", "build", "train", "eval"):
            stages[f"round-{r}/{st}"] = {"status": "done", "started": 10.0 * r, "finished": 10.0 * r + 2}
    put("manifest.json", {"stages": stages})
    put("paired.json", {"from_round": 0, "to_round": rounds, "before": 0.2, "after": 0.2 + 0.1 * rounds,
                        "delta": 0.1 * rounds, "ci95": [0.0, 0.2], "n": 10})
    (run / "config.yaml").write_text(f"name: fake\neval:\n  samples: {samples}\n")
    return run


def _header(md: str) -> str:
    return next(line for line in md.splitlines() if line.startswith("| round | greedy"))


def test_greedy_only_run_shows_no_sampled_columns_or_token_plot(tmp_path):
    run = fake_run(tmp_path, samples=0, collects=[_collect("prm:/x", 0.7)])
    assert summary_table(collect_facts(run))[0] == ["round", "greedy", "pairs"]
    write_report(run)
    md, page = (run / "report.md").read_text(), (run / "report.html").read_text()
    header = _header(md)
    for col in ("pass@1", "majority", "tokens/sol", "labels", "traces"):
        assert col not in header
        assert f"<th>{col}</th>" not in page
    assert "| 1 | 0.300 | 12 |" in md
    # one greedy dot per round is no accuracy-vs-tokens curve
    assert not (run / "plots" / "accuracy_vs_tokens.png").exists()
    assert "accuracy_vs_tokens" not in md and "accuracy_vs_tokens" not in page
    assert (run / "plots" / "accuracy_per_round.png").exists()


def test_sampled_run_keeps_sampled_columns_and_token_plot(tmp_path):
    run = fake_run(tmp_path, samples=4, collects=[_collect("prm:/x", 0.7)])
    write_report(run)
    md = (run / "report.md").read_text()
    assert _header(md).split(" | ")[:5] == ["| round", "greedy", "pass@1", "majority", "tokens/sol"]
    assert (run / "plots" / "accuracy_vs_tokens.png").exists() and "accuracy_vs_tokens.png" in md


@pytest.mark.parametrize(
    "scorer,auroc",
    [("oracle", 1.0), ("oracle:1", 1.0), ("oracle:4", 0.98), (None, 1.0), ("prm:/x", None), ("self", None)],
)
def test_no_exploitation_auroc_where_nothing_was_measured(tmp_path, scorer, auroc):
    run = fake_run(tmp_path, samples=2, collects=[_collect(scorer, auroc)])
    write_report(run)
    md, page = (run / "report.md").read_text(), (run / "report.html").read_text()
    for text in (md, page):
        assert "AUROC" not in text and "exploitation (" not in text
    assert "## Collection (B-STaR monitors)" in md and "| 1 | 0.550 | 420 | 1.75 |" in md
    facts = collect_facts(run)
    assert "exploitation_auroc" not in facts["rounds"][1]["collect"]
    assert "collect/exploitation_auroc" not in round_scalars(facts)[1]  # nor logged to a tracker


def test_exploitation_auroc_shown_for_a_learned_scorer(tmp_path):
    # prm-guided: round 1 collects with the oracle, round 2 with the PRM trained in round 1
    run = fake_run(tmp_path, samples=2, collects=[_collect("oracle:1", 1.0), _collect("prm:/r1/prm", 0.73)])
    write_report(run)
    md = (run / "report.md").read_text()
    assert "exploitation (scorer AUROC)" in md
    assert "| 1 | 0.550 | 420 | 1.75 | n/a |" in md
    assert "| 2 | 0.550 | 420 | 1.75 | 0.730 |" in md
    assert round_scalars(collect_facts(run))[2]["collect/exploitation_auroc"] == pytest.approx(0.73)


def test_corrupt_metrics_file_is_a_one_line_error(tmp_path):
    from sharpen.core.errors import ConfigError

    run = fake_run(tmp_path, samples=0, collects=[_collect("self", 0.6)])
    (run / "round-1" / "eval" / "metrics.json").write_bytes(b'{"n": 10, "gree')
    with pytest.raises(ConfigError, match=r"round-1/eval/metrics.json: not valid JSON .*\(fix: ") as e:
        write_report(run)
    assert "\n" not in str(e.value)
    assert not (run / "report.html").exists()
