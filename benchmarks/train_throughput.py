"""Pairs/s of `sharpen train dpo` against TRL's DPOTrainer called directly on the same data
(issue 4 asks for >= 0.9x), with and without sharpen's shared-prefix forward (`share_prefix`,
`sharpen.train.prefix`). All runs: same model, pairs, LoRA config, steps, batch size. The prompts
are the task's real ones (system prompt + two worked examples + the question), as in the loop.

    python benchmarks/train_throughput.py --model smollm2-135m --pairs 64 --steps 8

TRL runs first: `share_prefix` switches TRL's LM head to completion-only scoring for the process.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def _pairs(n: int, prompt_of) -> list:
    from sharpen.tree import Tree

    trees = []
    for i in range(n):
        a, b = i % 10, (i * 7) % 10
        t = Tree(problem_id=f"p{i}", question="", prompt=prompt_of(f"What is {a} + {b}?"))
        t.add(0, step=f"{a} + {b} = {a + b}", score=0.9)
        t.add(0, step=f"{a} + {b} = {a + b + 1}", score=0.1)
        trees.append(t)
    return trees


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from sharpen.data import save_dataset, step_pairs
    from sharpen.models import resolve_model
    from sharpen.train.common import TrainOptions, load_tokenizer, trainer_kwargs
    from sharpen.train.dpo import DPOTrainConfig, build_trainer

    path = resolve_model(args.model)
    tok = load_tokenizer(path)

    from sharpen.tasks import Problem, load_task

    task = load_task("gym:chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1})

    def prompt_of(q: str) -> str:
        msgs = task.messages(Problem(id=q, question=q, answer=""))
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    work = Path(tempfile.mkdtemp(prefix="sharpen-bench-"))
    data = save_dataset(step_pairs(_pairs(args.pairs, prompt_of)), work / "pairs")
    opts = TrainOptions(max_steps=args.steps, batch_size=args.batch_size, save_steps=10**9, logging_steps=10**9)
    rows = args.steps * args.batch_size

    from datasets import load_from_disk

    ds = load_from_disk(str(data)).select_columns(["prompt", "chosen", "rejected"])
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    beta = DPOTrainConfig(model="", data="", out="").beta
    direct = DPOTrainer(
        model=model,
        args=DPOConfig(**trainer_kwargs(opts, work / "trl"), beta=beta, max_length=opts.max_length),
        train_dataset=ds,
        processing_class=tok,
        peft_config=opts.lora_options.peft_config(),
    )
    t0 = time.perf_counter()
    direct.train()
    theirs = rows / (time.perf_counter() - t0)

    ours = {}
    for share in (False, True):
        o = replace(opts, share_prefix=share)
        trainer = build_trainer(DPOTrainConfig(model=args.model, data=str(data), out=str(work / f"sharpen-{share}"), train=o))
        t0 = time.perf_counter()
        trainer.train()
        ours[share] = rows / (time.perf_counter() - t0)
    print(json.dumps({"trl_pairs_per_s": theirs, "sharpen_plain_pairs_per_s": ours[False],
                      "sharpen_shared_prefix_pairs_per_s": ours[True], "ratio_plain": ours[False] / theirs,
                      "ratio_shared_prefix": ours[True] / theirs}, indent=2))


if __name__ == "__main__":
    main()
