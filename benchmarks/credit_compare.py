"""Two seeds experiments of one task side by side, at the generated tokens each spent: a baseline (e.g.
outcome grpo) and a candidate (e.g. `train.advantage: mc`), both run with `sharpen run CONFIG --seeds ...`
on the same seeds and thread count. Reads finished run dirs only (no model run):

    .venv/bin/python benchmarks/credit_compare.py OUTCOME_SEEDS_DIR CANDIDATE_SEEDS_DIR [--round 3] \\
        [--plot accuracy_vs_tokens.png]

Prints, for every seed both hold: greedy accuracy by round and the generated tokens summed over rounds
(`sharpen.report.run.generated_per_round`: an online round's samples, credit rollouts and replaced groups; an
offline round's search), for both; then
- the median over seeds of the candidate's minus the baseline's round-R greedy accuracy, with a paired
  bootstrap 95% interval that resamples evaluation problems and keeps each problem's seeds together
  (a resample draws problem ids; every seed's difference on a drawn problem goes in);
- per seed, the generated tokens the candidate had spent when it first reached the baseline's round-R
  accuracy (interpolated between rounds; none if it never did), as a share of the baseline's tokens over
  its R rounds.
`--plot`: accuracy against cumulative generated tokens, one line per seed and run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

from sharpen.core.errors import ConfigError
from sharpen.core.io import atomic_write_bytes
from sharpen.core.stats import bootstrap_ci
from sharpen.loop.runner import greedy_by_problem
from sharpen.report.run import collect_facts, generated_per_round, md_table, plot_png
from sharpen.report.seeds import seed_dirs


def curve(run: Path) -> tuple[list[float], list[float]]:
    """(cumulative generated tokens, greedy accuracy) after each evaluated round, from round 0."""
    facts = collect_facts(run)
    tokens, acc, spent = [], [], 0.0
    for entry in facts["rounds"]:
        spent += generated_per_round(entry) or 0.0
        if (entry.get("eval") or {}).get("greedy") is None:
            break
        tokens.append(spent)
        acc.append(float(entry["eval"]["greedy"]))
    return tokens, acc


def tokens_to_reach(tokens: list[float], acc: list[float], target: float) -> float | None:
    """The generated tokens at which the accuracy curve first reaches `target` (linear between rounds)."""
    for i, a in enumerate(acc):
        if a >= target:
            if i == 0:
                return tokens[0]
            t0, t1, a0 = tokens[i - 1], tokens[i], acc[i - 1]
            return t0 + (t1 - t0) * (target - a0) / (a - a0)
    return None


def median_difference(rows: np.ndarray) -> float:
    """Rows of (seed index, difference on one problem): the median over seeds of each seed's mean."""
    means = [rows[rows[:, 0] == s, 1].mean() for s in np.unique(rows[:, 0])]
    return float(statistics.median(means))


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit code 2."""
    print(message, file=sys.stderr)
    sys.exit(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("baseline")
    ap.add_argument("candidate")
    ap.add_argument("--round", type=int, default=None, help="the round compared (default: the baseline's last)")
    ap.add_argument("--plot", default=None, help="write accuracy vs cumulative generated tokens here (PNG)")
    args = ap.parse_args()
    a_dirs, b_dirs = seed_dirs(args.baseline), seed_dirs(args.candidate)
    seeds = sorted(set(a_dirs) & set(b_dirs))
    if not seeds:
        fail(f"no seed both hold: {args.baseline} has {sorted(a_dirs)}, {args.candidate} has {sorted(b_dirs)} "
                 "(fix: two `sharpen run CONFIG --seeds ...` output dirs)")
    try:
        curves = {s: (curve(a_dirs[s]), curve(b_dirs[s])) for s in seeds}
    except ConfigError as e:
        fail(str(e))
    r = args.round if args.round is not None else len(curves[seeds[0]][0][1]) - 1
    table = [["seed", "baseline greedy by round", "candidate greedy by round", f"r{r}: cand. - base",
              "base tokens", "cand. tokens", "cand. tokens to base's r-acc. (share)"]]
    rows, done = [], []
    for k, s in enumerate(seeds):
        (ta, aa), (tb, ab) = curves[s]
        if len(aa) <= r or len(ab) <= r:
            table.append([str(s), " / ".join(f"{x:.3f}" for x in aa), " / ".join(f"{x:.3f}" for x in ab),
                          "not reached", "", "", ""])
            continue
        ga, gb = greedy_by_problem(a_dirs[s], r), greedy_by_problem(b_dirs[s], r)
        if set(ga) != set(gb):
            fail(f"seed {s}: the two runs were evaluated on other problems (fix: the same task, eval.n, eval.split)")
        rows += [(k, i, gb[i] - ga[i]) for i in sorted(ga)]
        reach = tokens_to_reach(tb, ab, aa[r])
        share = f"{reach:,.0f} ({reach / ta[r]:.2f})" if reach is not None else "never"
        table.append([str(s), " / ".join(f"{x:.3f}" for x in aa[: r + 1]), " / ".join(f"{x:.3f}" for x in ab[: r + 1]),
                      f"{ab[r] - aa[r]:+.3f}", f"{ta[r]:,.0f}", f"{tb[r]:,.0f}", share])
        done.append(s)
    print("\n".join(md_table(table)))
    if rows:
        values = np.array([(k, d) for k, _, d in rows], dtype=float)
        groups = [i for _, i, _ in rows]
        med = median_difference(values)
        lo, hi = bootstrap_ci(values, stat=median_difference, groups=groups, seed=0)
        print(f"\nround {r}, candidate - baseline, median over seeds {done}: {med:+.3f} [{lo:+.3f}, {hi:+.3f}] "
              f"(paired bootstrap 95%, problems resampled with their seeds together, {len(set(groups))} problems)")
    if args.plot:
        def draw(ax):
            for s in seeds:
                (ta, aa), (tb, ab) = curves[s]
                ax.plot(ta, aa, color="tab:blue", marker="o", alpha=0.7, label="baseline" if s == seeds[0] else None)
                ax.plot(tb, ab, color="tab:orange", marker="s", alpha=0.7, label="candidate" if s == seeds[0] else None)
            ax.set_xlabel("generated tokens for training data, cumulative")
            ax.set_ylabel("greedy accuracy")
            ax.set_title(f"{Path(args.baseline).name} vs {Path(args.candidate).name}: one line per seed")
            ax.legend()

        atomic_write_bytes(Path(args.plot), plot_png(draw))
        print(f"wrote {args.plot}")

if __name__ == "__main__":
    main()
