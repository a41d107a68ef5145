"""Reward against NFE of best-of-N, particle filtering (SMC), beam search and SVDD on the denoising process
(`digits-ddpm`, prepared once with `sharpen.backends.diffusion.prepare_digits()`).

For each budget in denoiser forward passes (NFE) and each algorithm, over the same `--n` problems (a target
class each, `sharpen.search.denoise.problems("test", n, seed=0)`; problem i is searched with seed i by every
algorithm, so the cells are paired by problem and seed), the chosen x_0's mean reward, the share whose class
is the target, the mean NFE and reward calls spent, the diversity of the chosen images (mean pairwise L2
within a target class, `sharpen.search.denoise.diversity`), pf's mean effective sample size, and each
algorithm's paired bootstrap 95% interval (`sharpen.core.stats.paired_bootstrap`) of the mean reward
difference against best-of-N at the same budget and against one unguided DDPM sample of the same problem
and seed. Prints figures; writes nothing.

Options at a budget of B NFE and S reverse steps, c = B // S (what one unguided sample costs is S NFE, so
each algorithm gets c samples' worth, spent the way the algorithm spends it):

- bon: whole samples until the budget is spent (c of them; `batch` c is speed only), selection by reward.
- pf: c particles (a particle costs 1 NFE a step: its value's forward is the one that steps it on), valued
  by `--scorer`, weights softmax(value / `--pf-temperature`), resampling when the ESS falls below half the
  particles, `fill` (a budget left over starts fresh particles); the answer is pf's vote weighted by reward
  (the particles' x_0 rewards: the best-rewarded class wins, the best of it is chosen).
- beam: width w = floor(sqrt(c)), expansions c // w (w x e candidates a step, each valued: about c NFE a
  step), the best-valued finished beam.
- svdd: one chain of m = c candidates a step (SVDD's setting: M candidates, Li et al. 2024, arXiv
  2408.08252), valued by `--scorer` (x0-reward: SVDD-PM, mc-reward: SVDD-MC), kept by argmax (`--alpha` 0),
  `fill` (a chain's cost left over starts another).

All four select by the same reward and value; none sees the class label except through the reward.

    .venv/bin/python benchmarks/denoise_search.py --n 40 --budgets 200 400 800
"""

from __future__ import annotations

import argparse
import math
import time

from sharpen.backends.diffusion import load_digits_model, prepare_digits
from sharpen.core.stats import paired_bootstrap
from sharpen.search.algorithms import ALGORITHMS
from sharpen.search.denoise import DenoiseProcess, diversity, problems, strip_states
from sharpen.search.scorers import make_scorer

ALGOS = ("bon", "pf", "beam", "svdd")


def chosen_reward(tree) -> float:
    """The reward of the chosen x_0 (0 when the search chose none or stopped before x_0)."""
    node = tree.nodes[tree.chosen[-1]] if tree.chosen else None
    return float(node.meta["reward"]) if node is not None and node.terminal else 0.0


def options(algo: str, budget: int, steps: int, args: argparse.Namespace) -> dict:
    """The options each algorithm gets at `budget` NFE (see the module docstring)."""
    c = max(1, budget // steps)
    if algo == "bon":
        return {"batch": c}
    if algo == "pf":
        return {"n": c, "temperature": args.pf_temperature, "fill": True}
    if algo == "beam":
        w = max(1, math.isqrt(c))
        return {"width": w, "expansions": max(1, c // w)}
    return {"n": 1, "m": c, "alpha": args.alpha, "fill": True}


def label(algo: str, o: dict) -> str:
    short = {"batch": "", "n": "n", "m": "m", "width": "w", "expansions": "e"}
    return algo + "(" + ",".join(f"{short[k]}{v}" for k, v in o.items() if k in short) + ")"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="problems (target classes), paired across every cell")
    ap.add_argument("--steps", type=int, default=50, help="reverse steps of the sampler")
    ap.add_argument("--budgets", type=int, nargs="+", default=[200, 400, 800], help="NFE per search")
    ap.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS)
    ap.add_argument("--scorer", default="x0-reward", help="the value pf, beam and svdd use")
    ap.add_argument("--reward", default="class", help="the process's reward: class, realism or product")
    ap.add_argument("--pf-temperature", type=float, default=0.02,
                    help="pf's softmax temperature on values (0.02 of 0.5, 0.1, 0.02 on --split train, n=20, 200 NFE)")
    ap.add_argument("--alpha", type=float, default=0.0, help="svdd's selection temperature (0: argmax)")
    ap.add_argument("--model", default=None, help="a prepared digits-ddpm directory (default: the cache)")
    ap.add_argument("--split", default="test", choices=("train", "test"),
                    help="the problems' stream: choose options on train, report on test")
    args = ap.parse_args()
    if args.n < 1 or args.steps < 1 or min(args.budgets) < args.steps:
        ap.error("need --n >= 1, --steps >= 1 and every budget >= --steps (one unguided sample)")

    start = time.perf_counter()
    model = load_digits_model(prepare_digits(args.model))
    probs = problems(args.split, args.n, seed=0)
    base_proc = DenoiseProcess(model, steps=args.steps, reward=args.reward)
    base, base_trees = [], []
    for i, p in enumerate(probs):
        tree = base_proc.new_tree(p, seed=i)
        node = tree.nodes[base_proc.complete(tree, [0], 1)[0][0]]
        tree.chosen, tree.answer = [node.id], node.answer
        base.append(node.meta["reward"])
        base_trees.append(strip_states(tree))
    hits = sum(base_proc.verify(t, t.answer) for t in base_trees) / len(base_trees)
    div = diversity(base_trees)
    print(f"unguided DDPM ({args.steps} NFE, reward {args.reward}): mean reward {sum(base) / len(base):.3f}, "
          f"target class {hits:.2f}, diversity {div:.2f} (n={args.n})")
    print(f"{'algo':15} {'budget':>6} {'NFE':>5} {'rcalls':>6} {'reward':>6} {'target':>6} {'divers':>6} {'ESS':>5}  "
          f"{'vs bon [95% CI]':26} {'vs unguided [95% CI]':26} {'sec':>6}")
    for budget in args.budgets:
        bon_rewards = None
        for algo in args.algos:
            o = options(algo, budget, args.steps, args)
            proc = DenoiseProcess(model, steps=args.steps, reward=args.reward)
            scorer = make_scorer(args.scorer, proc)
            t0 = time.perf_counter()
            trees = [strip_states(ALGORITHMS[algo](proc, scorer, p, budget, seed=i, **o)) for i, p in enumerate(probs)]
            seconds = time.perf_counter() - t0
            rewards = [chosen_reward(t) for t in trees]
            if algo == "bon":
                bon_rewards = rewards
            hits = sum(bool(t.chosen) and proc.verify(t, t.answer) for t in trees) / len(trees)
            nfe = sum(t.usage.get("nfe", 0) for t in trees) / len(trees)
            calls = sum(t.usage.get("reward_calls", 0) for t in trees) / len(trees)
            ess = [e for t in trees for e in t.meta.get("ess", []) if e is not None]
            div = diversity(trees)
            vs_bon = "-"
            if bon_rewards is not None and algo != "bon":
                d, (lo, hi) = paired_bootstrap(bon_rewards, rewards, seed=0)
                vs_bon = f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
            d, (lo, hi) = paired_bootstrap(base, rewards, seed=0)
            print(f"{label(algo, o):15} {budget:6d} {nfe:5.0f} {calls:6.0f} {sum(rewards) / len(rewards):6.3f} "
                  f"{hits:6.2f} {(div if div is not None else float('nan')):6.2f} "
                  f"{(sum(ess) / len(ess) if ess else float('nan')):5.1f}  {vs_bon:26} "
                  f"{f'{d:+.3f} [{lo:+.3f}, {hi:+.3f}]':26} {seconds:6.1f}", flush=True)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
