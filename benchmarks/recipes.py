"""Runs of different recipes side by side (issue 16: "the table for mcts-dpo, rft and grpo side by side at
comparable generated tokens, with the tokens each spent"). Reads finished run dirs only (no model run):

    .venv/bin/python benchmarks/recipes.py runs/full-s0 runs/rft-s0 runs/grpo-s0

Per run: recipe and seed, held-out greedy accuracy after each round, the tokens the policy generated to make
its training data in each round (an offline round's search: collect's mean generated tokens x problems; a grpo
round: what GRPO sampled, `round-N/train/summary.json`), stage minutes, and the last evaluated round's paired change
against round 0. Then every run's last round against the first run's, problem by problem on the same held-out
problems (paired bootstrap 95% interval; runs evaluated on different problems are refused).
"""

from __future__ import annotations

import sys
from pathlib import Path

from sharpen.core.errors import ConfigError
from sharpen.core.stats import paired_bootstrap
from sharpen.loop.runner import greedy_by_problem
from sharpen.report.run import collect_facts, fmt, generated_per_round, md_table
from sharpen.report.seeds import config_dict, fmt_change


def last_evaluated(run: Path, facts: dict) -> int:
    """The last round of a run whose evaluation finished (a run still going has a later one started)."""
    done = [e["round"] for e in facts["rounds"] if (e.get("eval") or {}).get("greedy") is not None]
    if not done:
        sys.exit(f"{run} has no evaluated round yet (fix: wait for its round-0 evaluation, or pass another run)")
    return max(done)


def main() -> None:
    runs = [Path(a) for a in sys.argv[1:]]
    if not runs:
        sys.exit(__doc__)
    try:
        facts = [collect_facts(r) for r in runs]
    except ConfigError as e:
        sys.exit(str(e))
    rounds = max(len(f["rounds"]) for f in facts)
    table = [["run", "recipe", "seed", *(f"greedy r{r}" for r in range(rounds)),
              *(f"gen. tokens r{r}" for r in range(1, rounds)), "stage min", "last vs r0 [95% CI]"]]
    for run, f in zip(runs, facts, strict=True):
        cfg = config_dict(f["config"])
        by_round = f["rounds"] + [{}] * (rounds - len(f["rounds"]))  # rounds not reached: empty cells
        greedy = [fmt((e.get("eval") or {}).get("greedy")) for e in by_round]
        gen = [fmt(generated_per_round(e), 0) for e in by_round[1:]]
        table.append([run.name, str(cfg.get("recipe", "?")), str(cfg.get("seed", "?")), *greedy, *gen,
                      fmt(sum(f["stage_seconds"].values()) / 60, 1), fmt_change(f.get("paired"))])
    print("\n".join(md_table(table)))
    if len(runs) < 2:
        return
    base_run, base_last = runs[0], last_evaluated(runs[0], facts[0])
    base = greedy_by_problem(base_run, base_last)
    print(f"\nLast round against {base_run.name}'s round {base_last} (same held-out problems, paired):")
    for run, f in zip(runs[1:], facts[1:], strict=True):
        last = last_evaluated(run, f)
        other = greedy_by_problem(run, last)
        if set(other) != set(base):
            sys.exit(f"{run} was evaluated on other problems than {base_run} (fix: runs with the same task, eval.n "
                     "and eval split)")
        ids = sorted(base)
        delta, (lo, hi) = paired_bootstrap([base[i] for i in ids], [other[i] for i in ids])
        print(f"- {run.name} round {last} - {base_run.name}: {delta:+.3f} [{lo:+.3f}, {hi:+.3f}] (n = {len(ids)})")


if __name__ == "__main__":
    main()
