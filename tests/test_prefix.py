"""Shared-prefix training forward (`sharpen.train.prefix`): the same log-probs and the same LoRA
gradients as TRL's plain forward, on the tiny model, through DPO's own batches."""

from __future__ import annotations

import pytest
import torch

from sharpen.train.prefix import shared_prefix_len


def test_shared_prefix_len_respects_padding_and_leaves_a_token_per_row():
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 1, 0], [5, 6, 7, 8, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]])
    assert shared_prefix_len(ids, mask) == 3
    # identical rows: the shortest row keeps one token of its own
    same = torch.tensor([[5, 6, 7, 0], [5, 6, 7, 8]])
    assert shared_prefix_len(same, torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])) == 2
    # a padded position inside the common tokens ends the prefix (left padding is never shared)
    left = torch.tensor([[0, 6, 7], [0, 6, 7]])
    assert shared_prefix_len(left, torch.tensor([[0, 1, 1], [1, 1, 1]])) == 0
    assert shared_prefix_len(torch.tensor([[1, 2, 3]]), None) == 0  # one row: nothing to share


def _pairs(n: int = 6):
    from datasets import Dataset

    head = "<|system|>Solve step by step. The last line is Answer: n.<|end|>\n" * 2
    rows = []
    for i in range(n):
        prompt = f"{head}<|user|>What is {i} + {i % 3}?<|end|>\n<|assistant|>"
        if i % 2:
            prompt += f"{i} + 1 = {i + 1}\n"
        rows.append({"prompt": prompt, "chosen": f"{i} + {i % 3} = {i + i % 3}\n",
                     "rejected": f"Answer: {i + 7}<|end|>"})
    return Dataset.from_list(rows)


@pytest.mark.parametrize("lora", [True, False])
def test_dpo_forward_with_shared_prefix_matches_plain(tiny_model_dir, tmp_path, lora):
    from sharpen.train.dpo import DPOTrainConfig, build_trainer
    from sharpen.train.prefix import backbone_of, share_prefix

    opts = dict(max_steps=1, per_device_train_batch_size=6, lora=lora, share_prefix=False)
    trainer = build_trainer(DPOTrainConfig(model=tiny_model_dir, data="-", output_dir=str(tmp_path / "o"), **opts),
                            dataset=_pairs())
    batch = next(iter(trainer.get_train_dataloader()))
    assert shared_prefix_len(batch["input_ids"], batch["attention_mask"]) >= 20
    model = trainer.model
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)

    def logps_and_grads():
        model.zero_grad()
        lp = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                   fused_lm_head=True, use_cache=False).log_probs
        (lp * torch.linspace(0.5, 1.5, lp.numel()).view_as(lp)).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return lp.detach().clone(), grads

    plain, plain_grads = logps_and_grads()
    share_prefix(backbone_of(model), min_shared=4)
    shared, shared_grads = logps_and_grads()
    assert backbone_of(model)._sharpen_shared_calls == 1
    assert (labels[:, 1:] != -100).sum() > 0 and plain.abs().sum() > 0
    torch.testing.assert_close(shared, plain, rtol=1e-4, atol=1e-4)
    assert plain_grads.keys() == shared_grads.keys() and plain_grads
    for name, g in plain_grads.items():
        torch.testing.assert_close(shared_grads[name], g, rtol=1e-3, atol=1e-5, msg=name)


def test_sft_loss_with_shared_prefix_matches_plain(tiny_model_dir, tmp_path):
    from datasets import Dataset

    from sharpen.train.prefix import backbone_of, share_prefix
    from sharpen.train.sft import SFTTrainConfig, build_trainer

    rows = [{"prompt": r["prompt"], "completion": r["chosen"] + "Answer: 1"} for r in _pairs()]
    opts = dict(max_steps=1, per_device_train_batch_size=6, share_prefix=False)
    trainer = build_trainer(SFTTrainConfig(model=tiny_model_dir, data="-", output_dir=str(tmp_path / "o"), **opts),
                            dataset=Dataset.from_list(rows))
    batch = next(iter(trainer.get_train_dataloader()))
    plain = trainer.compute_loss(trainer.model, dict(batch)).detach()
    share_prefix(backbone_of(trainer.model), min_shared=4)
    shared = trainer.compute_loss(trainer.model, dict(batch)).detach()
    assert backbone_of(trainer.model)._sharpen_shared_calls == 1
    torch.testing.assert_close(shared, plain, rtol=1e-4, atol=1e-5)
