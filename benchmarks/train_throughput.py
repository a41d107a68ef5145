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
from pathlib import Path


def _pairs(n: int, prompt_of) -> list:
    from sharpen.core.tree import Tree

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

    from sharpen.backends.models import load_tokenizer, resolve_model
    from sharpen.train.data import save_dataset, step_pairs
    from sharpen.train.dpo import DPOTrainConfig, build_trainer

    path = resolve_model(args.model)
    tok = load_tokenizer(path)

    from sharpen.core.tasks import Problem, load_task

    task = load_task("gym:chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1})

    def prompt_of(q: str) -> str:
        msgs = task.messages(Problem(id=q, question=q, answer=""))
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    work = Path(tempfile.mkdtemp(prefix="sharpen-bench-"))
    data = save_dataset(step_pairs(_pairs(args.pairs, prompt_of)), work / "pairs")
    opts = dict(max_steps=args.steps, per_device_train_batch_size=args.batch_size, save_steps=10**9, logging_steps=10**9)
    rows = args.steps * args.batch_size

    from datasets import load_from_disk

    ds = load_from_disk(str(data)).select_columns(["prompt", "chosen", "rejected"])
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ref = DPOTrainConfig(model=args.model, output_dir=str(work / "trl"), **opts)
    # TRL's own DPOConfig with the same TrainingArguments and DPO fields, and TRL's own forward
    keep = ("output_dir", "max_steps", "per_device_train_batch_size", "learning_rate", "save_steps", "logging_steps",
            "seed", "beta", "max_length", "bf16", "report_to", "disable_tqdm", "dataloader_num_workers")
    plain = {k: getattr(ref, k) for k in keep}
    direct = DPOTrainer(
        model=model,
        args=DPOConfig(**plain),
        train_dataset=ds,
        processing_class=tok,
        peft_config=ref.peft_config(),
    )
    t0 = time.perf_counter()
    direct.train()
    theirs = rows / (time.perf_counter() - t0)

    ours = {}
    for share in (False, True):
        trainer = build_trainer(DPOTrainConfig(model=args.model, data=str(data), output_dir=str(work / f"sharpen-{share}"),
                                               share_prefix=share, **opts))
        t0 = time.perf_counter()
        trainer.train()
        ours[share] = rows / (time.perf_counter() - t0)
    print(json.dumps({"trl_pairs_per_s": theirs, "sharpen_plain_pairs_per_s": ours[False],
                      "sharpen_shared_prefix_pairs_per_s": ours[True], "ratio_plain": ours[False] / theirs,
                      "ratio_shared_prefix": ours[True] / theirs}, indent=2))


if __name__ == "__main__":
    main()
