"""Seconds per optimizer step of `sharpen train grpo` on the real model, for layouts of the same
16 completions a step (issue 16: "make its training step affordable here: report seconds per step").

    python benchmarks/grpo_step.py --model smollm2-135m --steps 3

Task, completions per prompt, lengths, temperature and learning rate are configs/chain_sum-grpo.yaml's;
the layouts (each 2 prompts x 8 completions an optimizer step) differ in micro-batches and sampler:
- `two-prompts`: one micro-batch of 16 completions, both prompts generated together by TRL's
  `generate` (the config's layout before the twenty-eighth stop). Two left-padded prompts share no
  prefix unless they have one length, so `share_prefix` rarely splits.
- `one-prompt-trl`: micro-batches of 8 (one prompt's completions), 2 accumulation steps, generation
  at every micro-step (`steps_per_generation: 1`), TRL's `generate` (the config of the twenty-eighth
  stop). Every micro-batch's rows start with the same prompt, so the shared-prefix forward runs it once.
- `one-prompt` (the config's): the same with `sampler: sharpen` (sharpen's HF sampler over the
  training policy: the prompt's KV once for its 8 samples, finished rows leave the batch, a
  completion ends with its `Answer:` line), drawing from a copy with the LoRA update merged into
  its weights (`merged_sampling`, since the thirty-first stop).
- `one-prompt-adapters`: that sampling through the LoRA adapter layers (`merged_sampling: false`:
  the config's before the thirty-first stop).
- `one-prompt-plain`: that with `share_prefix: false` (what the prefix sharing alone saves).

Prints, per layout, seconds per optimizer step (median of the steps after the first), the part of it
spent generating (TRL's `_generate`, timed), and how many forwards the prefix
sharing split. The first step is left out (warm-up). Each layout trains from the base model.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

CONFIG = Path(__file__).parents[1] / "configs" / "chain_sum-grpo.yaml"
ONE = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2, "steps_per_generation": 1}
LAYOUTS = {
    "two-prompts": {"per_device_train_batch_size": 16, "gradient_accumulation_steps": 1, "sampler": "trl"},
    "one-prompt-trl": {**ONE, "sampler": "trl"},
    "one-prompt": {**ONE, "sampler": "sharpen"},
    "one-prompt-adapters": {**ONE, "sampler": "sharpen", "merged_sampling": False},
    "one-prompt-plain": {**ONE, "sampler": "sharpen", "share_prefix": False},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per layout (the first is warm-up)")
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    args = ap.parse_args()

    import yaml

    run_cfg = yaml.safe_load(CONFIG.read_text())
    train = run_cfg["train"]

    from transformers import TrainerCallback

    from sharpen.train.common import quiet
    from sharpen.train.grpo import GRPOTrainConfig, build_trainer
    from sharpen.train.prefix import backbone_of

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._t0 = 0.0

        def on_step_begin(self, *a, **k) -> None:
            self._t0 = time.perf_counter()

        def on_step_end(self, *a, **k) -> None:
            self.seconds.append(time.perf_counter() - self._t0)

    rows = []
    for name in args.layouts.split(","):
        layout = dict(LAYOUTS[name])
        with tempfile.TemporaryDirectory() as out:
            cfg = GRPOTrainConfig(
                model=args.model, output_dir=out, task=run_cfg["task"], task_args=run_cfg["task_args"],
                problems=4 * args.steps, max_steps=args.steps, save_steps=10_000,
                **{k: train[k] for k in ("num_generations", "max_completion_length", "temperature", "learning_rate")},
                **layout)
            trainer, budget = build_trainer(cfg)
            quiet(trainer)
            clock = Clock()
            trainer.add_callback(clock)
            generating: list[float] = []
            generate = trainer._generate  # TRL 1.16: sampling, without scoring or the loss

            def timed(*a, _generate=generate, _log=generating, **k):
                t0 = time.perf_counter()
                try:
                    return _generate(*a, **k)
                finally:
                    _log.append(time.perf_counter() - t0)

            trainer._generate = timed
            trainer.train()
            steady = clock.seconds[1:] or clock.seconds
            per_step = statistics.median(steady)
            gen = sum(generating) / max(1, len(clock.seconds))
            shared = getattr(backbone_of(trainer.model), "_sharpen_shared_calls", 0)
            rows.append((name, per_step, gen, budget.generated / len(clock.seconds), shared))
            print(f"{name}: steps {[round(s, 1) for s in clock.seconds]}", flush=True)

    print("\n| layout | s / step (median after the first) | of it generating (mean) | generated tokens / step "
          "| forwards split by share_prefix |")
    print("|---|---|---|---|---|")
    for name, per_step, gen, toks, shared in rows:
        print(f"| {name} | {per_step:.1f} | {gen:.1f} | {toks:.0f} | {shared} |")


if __name__ == "__main__":
    main()
