"""Reward against NFE of best-of-N and particle filtering on the denoising process (`digits-ddpm`, prepared
once with `sharpen.backends.diffusion.prepare_digits()`): for each budget in denoiser forward passes, the
mean reward (the classifier's probability of the target class) of the chosen x_0, the share whose class is
the target, the NFE and reward calls spent, and each algorithm's paired bootstrap 95% interval against one
unguided DDPM sample of the same problem. Problems, seeds and the unguided samples are the same in every
cell (paired by problem and seed). Prints figures; writes nothing.

    .venv/bin/python benchmarks/denoise_search.py --n 40 --steps 50 --budgets 200 400 800
"""

from __future__ import annotations

import argparse
import time

from sharpen.backends.diffusion import load_digits_model, prepare_digits
from sharpen.core.stats import paired_bootstrap
from sharpen.search.algorithms import ALGORITHMS
from sharpen.search.denoise import DenoiseProcess, problems
from sharpen.search.scorers import make_scorer


def chosen_reward(tree) -> float:
    """The reward of the chosen x_0 (0 when the search chose none or stopped before x_0)."""
    node = tree.nodes[tree.chosen[-1]] if tree.chosen else None
    return float(node.meta["reward"]) if node is not None and node.terminal else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="problems (target classes)")
    ap.add_argument("--steps", type=int, default=50, help="reverse steps of the sampler")
    ap.add_argument("--budgets", type=int, nargs="+", default=[200, 400, 800], help="NFE per search")
    ap.add_argument("--particles", type=int, default=None,
                    help="pf particles (default: what the budget carries to x_0, budget // (2 x steps), at least 2)")
    ap.add_argument("--scorer", default="x0-reward", help="the value both algorithms use")
    ap.add_argument("--model", default=None, help="a prepared digits-ddpm directory (default: the cache)")
    args = ap.parse_args()

    model = load_digits_model(prepare_digits(args.model))
    probs = problems("test", args.n, seed=0)
    base_proc = DenoiseProcess(model, steps=args.steps)
    base, base_hits = [], 0
    for i, p in enumerate(probs):
        tree = base_proc.new_tree(p, seed=i)
        node = tree.nodes[base_proc.complete(tree, [0], 1)[0][0]]
        base.append(node.meta["reward"])
        base_hits += base_proc.verify(tree, node.answer)
    print(f"unguided DDPM ({args.steps} NFE): mean reward {sum(base) / len(base):.3f}, "
          f"target class {base_hits / len(base):.2f} (n={args.n})")
    print("algo      budget  mean NFE  reward calls  reward  target  vs unguided [95% CI]  seconds")
    for budget in args.budgets:
        n = args.particles or max(2, budget // (2 * args.steps))  # a step costs n forwards and n values
        for algo, options in (("bon", {"batch": 4}), ("pf", {"n": n})):
            proc = DenoiseProcess(model, steps=args.steps)
            scorer = make_scorer(args.scorer, proc)
            t0 = time.perf_counter()
            trees = [ALGORITHMS[algo](proc, scorer, p, budget, seed=i, **options) for i, p in enumerate(probs)]
            seconds = time.perf_counter() - t0
            rewards = [chosen_reward(t) for t in trees]
            hits = sum(bool(t.chosen) and proc.verify(t, t.answer) for t in trees) / len(trees)
            nfe = sum(t.usage.get("nfe", 0) for t in trees) / len(trees)
            calls = sum(t.usage.get("reward_calls", 0) for t in trees) / len(trees)
            d, (lo, hi) = paired_bootstrap(base, rewards, seed=0)
            label = f"{algo}(n={n})" if algo == "pf" else f"{algo}(4)"
            print(f"{label:9} {budget:6d}  {nfe:8.0f}  {calls:12.0f}  {sum(rewards) / len(rewards):6.3f}  "
                  f"{hits:6.2f}  {d:+.3f} [{lo:+.3f}, {hi:+.3f}]  {seconds:7.1f}")


if __name__ == "__main__":
    main()
