"""One training round of the `digits-ddpm` denoiser on what search found, step preferences (SPO's
step pairs with the Diffusion-DPO loss, arXiv 2406.04314 / 2311.12908) against reward-weighted
fine-tuning on whole unguided samples of the same sampling cost (RWR, arXiv 2302.12192); see
`sharpen.train.diffusion`.

The cached `digits-ddpm` (`prepare_digits()`; an existing preparation is reused, never rewritten) is
unconditional, so a round trains one target class: beam search with the `x0-reward` scorer on the
training-split problems of that class collects step pairs; RWR samples as many unguided x_0 as the
search's NFE buys; each trains a copy of the denoiser. Every model's unguided sampler (one
`DenoiseProcess.complete` from the root per problem, the same seeds for every model) is then run on
the test-split problems of that class: mean reward, the share classified as the target, the paired
bootstrap 95% interval of the change against the base model (and of dpo-step against rwr), and
diversity (mean pairwise L2 distance between the x_0). Prints figures; writes only under --out (a
temp dir by default), where a rerun reuses finished rounds.

    .venv/bin/python benchmarks/denoise_train.py --target 3 --train 400 --test 600
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from sharpen.backends.diffusion import load_digits_model, prepare_digits
from sharpen.core.stats import paired_bootstrap
from sharpen.train.diffusion import (
    DenoiseTrainConfig,
    class_diversity,
    collect_step_pairs,
    dpo_step_loss,
    sample_rewarded,
    target_problems,
    train_round,
    unguided_samples,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=int, default=3, help="the digit class the round trains")
    ap.add_argument("--train", type=int, default=400, help="training-split problems drawn (those of the target kept)")
    ap.add_argument("--test", type=int, default=600, help="test-split problems drawn (those of the target kept)")
    ap.add_argument("--steps", type=int, default=50, help="reverse steps of the sampler")
    ap.add_argument("--budget", type=int, default=500, help="NFE per beam search (collection)")
    ap.add_argument("--width", type=int, default=2, help="beam width")
    ap.add_argument("--expansions", type=int, default=4, help="siblings per beam and step")
    ap.add_argument("--min-gap", type=float, default=0.0, help="least value gap of a step pair")
    ap.add_argument("--train-steps", type=int, default=200, help="optimizer steps of each round")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (both methods)")
    ap.add_argument("--beta", type=float, default=1.0, help="dpo-step temperature")
    ap.add_argument("--tau", type=float, default=0.1, help="rwr temperature of softmax(reward / tau)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-chunk", type=int, default=1, help="denoiser rows per forward when evaluating (same for every model)")
    ap.add_argument("--model", default=None, help="a prepared digits-ddpm directory (default: the cache)")
    ap.add_argument("--out", default=None, help="where the rounds are written (default: a temp dir, removed)")
    args = ap.parse_args()
    if args.eval_chunk < 1:
        ap.error("--eval-chunk must be >= 1")

    base_dir = prepare_digits(args.model)
    model = load_digits_model(base_dir)
    train = target_problems("train", args.train, args.target)
    test = target_problems("test", args.test, args.target)
    if not train or not test:
        ap.error(f"no problems of target {args.target} among those drawn (fix: larger --train / --test)")
    print(f"target {args.target}: {len(train)} train problems, {len(test)} test problems, {args.steps} steps")

    t0 = time.perf_counter()
    pairs = collect_step_pairs(model, train, args.budget, algo="beam", scorer="x0-reward", steps=args.steps,
                               seed=args.seed, min_gap=args.min_gap, width=args.width, expansions=args.expansions)
    t1 = time.perf_counter()
    samples = sample_rewarded(model, train, pairs.nfe, steps=args.steps, seed=args.seed)
    t2 = time.perf_counter()
    print(f"step pairs: {len(pairs)} from {pairs.trees} beam searches, {pairs.nfe} NFE, mean gap "
          f"{float(pairs.gap.mean()):.3f} ({t1 - t0:.0f}s)")
    print(f"rwr samples: {len(samples)} unguided x_0, {samples.nfe} NFE, mean reward "
          f"{float(samples.reward.mean()):.3f} ({t2 - t1:.0f}s)")

    with tempfile.TemporaryDirectory(prefix="denoise_train.") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        common = dict(max_steps=args.train_steps, batch=args.batch, lr=args.lr, seed=args.seed)
        dirs = {"base": base_dir}
        for name, data, cfg in (("dpo-step", pairs, DenoiseTrainConfig("dpo-step", beta=args.beta, **common)),
                                ("rwr", samples, DenoiseTrainConfig("rwr", tau=args.tau, **common))):
            t = time.perf_counter()
            dirs[name] = train_round(base_dir, data, out / name, cfg)
            print(f"trained {name}: {args.train_steps} steps in {time.perf_counter() - t:.0f}s")
        before = dpo_step_loss(base_dir, base_dir, pairs, args.beta)
        after = dpo_step_loss(dirs["dpo-step"], base_dir, pairs, args.beta)
        print(f"dpo-step loss on its pairs: {before:.4f} before, {after:.4f} after")

        print(f"unguided sampler on {len(test)} test problems (one sample each, same seeds):")
        print("model     mean reward  target share  vs base [95% CI]           diversity  seconds")
        base_rewards, per_model = None, {}
        for name, d in dirs.items():
            t = time.perf_counter()
            m = load_digits_model(d, chunk=args.eval_chunk)
            x0, rewards, classes, _ = unguided_samples(m, test, 1, steps=args.steps, seed=args.seed)
            per_model[name] = rewards
            share = sum(c == args.target for c in classes) / len(classes)
            div = class_diversity(x0, [args.target] * len(classes))
            if base_rewards is None:
                base_rewards, vs = rewards, "-"
            else:
                dm, (lo, hi) = paired_bootstrap(base_rewards, rewards, seed=0)
                vs = f"{dm:+.3f} [{lo:+.3f}, {hi:+.3f}]"
            print(f"{name:9} {sum(rewards) / len(rewards):11.3f}  {share:12.2f}  {vs:26} {div:9.3f}  "
                  f"{time.perf_counter() - t:7.0f}")
        dm, (lo, hi) = paired_bootstrap(per_model["rwr"], per_model["dpo-step"], seed=0)
        print(f"dpo-step vs rwr (same problems and seeds): {dm:+.3f} [{lo:+.3f}, {hi:+.3f}]")


if __name__ == "__main__":
    main()
