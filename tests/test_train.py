"""Trainers on the tiny model: 2-step DPO (LoRA and full), SFT and PRM runs save models that load
and generate / score; resume; held-out metrics."""

from __future__ import annotations

import json

import pytest

from sharpen.core.errors import ModelError, TaskError
from sharpen.core.tree import Tree
from sharpen.train.data import save_dataset, step_labels, step_pairs, verified_traces


def _trees() -> list[Tree]:
    trees = []
    for i in range(4):
        t = Tree(
            problem_id=f"p{i}",
            question=f"What is {i} + 2?",
            prompt=f"<|user|>What is {i} + 2?<|end|>\n<|assistant|>",
        )
        a = t.add(0, step=f"{i} + 2 = {i + 2}", score=0.9)
        t.add(a.id, step=f"Answer: {i + 2}", terminal=True, answer=str(i + 2), correct=True)
        b = t.add(0, step=f"{i} + 2 = {i + 3}", score=0.1)
        t.add(b.id, step=f"Answer: {i + 3}", terminal=True, answer=str(i + 3), correct=False)
        trees.append(t)
    return trees


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    trees = _trees()
    return {
        "pairs": str(save_dataset(step_pairs(trees), d / "pairs")),
        "traces": str(save_dataset(verified_traces(trees), d / "traces")),
        "labels": str(save_dataset(step_labels(trees), d / "labels")),
    }


def _opts(**kw) -> dict:
    return dict(max_steps=kw.pop("max_steps", 2), per_device_train_batch_size=2, save_steps=1, logging_steps=1, **kw)


def _generates(path: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    enc = tok("<|user|>What is 1 + 2?<|end|>\n<|assistant|>", return_tensors="pt", add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > enc["input_ids"].shape[1]


def test_dpo_lora_saves_adapter_and_merged_and_resumes(tiny_model_dir, data_dirs, tmp_path):
    from sharpen.train.dpo import DPOTrainConfig, build_trainer, train_dpo

    out = tmp_path / "dpo"
    cfg = DPOTrainConfig(model=tiny_model_dir, data=data_dirs["pairs"], output_dir=str(out), **_opts())
    merged = train_dpo(cfg)
    assert merged == out / "merged" and (out / "adapter" / "adapter_config.json").exists()
    assert (out / "checkpoint-2").is_dir()
    _generates(str(merged))
    from sharpen.backends.models import resolve_model

    assert resolve_model(str(merged)) == merged  # `--model` accepts it
    summary = json.loads((out / "sharpen_train.json").read_text())
    assert summary["kind"] == "dpo" and summary["metrics"]["pairs"] == 4

    # resume: a longer run picks up the last checkpoint
    cfg.max_steps = 3
    train_dpo(cfg)
    summary = json.loads((out / "sharpen_train.json").read_text())
    assert summary["metrics"]["resumed_from"].endswith("checkpoint-2")

    # steps are not solution ends: no EOS after chosen / rejected
    trainer = build_trainer(
        DPOTrainConfig(model=tiny_model_dir, data=data_dirs["pairs"], output_dir=str(tmp_path / "x"))
    )
    eos = trainer.processing_class.eos_token_id
    row = trainer.train_dataset[0]
    assert row["chosen_ids"][-1] != eos and row["rejected_ids"][-1] != eos
    trainer_eos = build_trainer(
        DPOTrainConfig(
            model=tiny_model_dir, data=data_dirs["pairs"], output_dir=str(tmp_path / "y"), append_eos=True
        )
    )
    assert trainer_eos.train_dataset[0]["chosen_ids"][-1] == eos

    # a step that ended the solution carries its end token: kept once, not doubled, not dropped
    from datasets import Dataset

    tok = trainer.processing_class
    stop = Dataset.from_dict({"prompt": ["<|user|>What is 7 + 4 - 6?<|end|>\n<|assistant|>"],
                              "chosen": ["7 + 4 = 11\n"], "rejected": ["7 + 4 = 11" + tok.eos_token]})
    row = build_trainer(DPOTrainConfig(model=tiny_model_dir, data="-", output_dir=str(tmp_path / "z")), stop).train_dataset[0]
    assert row["chosen_ids"][-1] != eos and row["rejected_ids"][-1] == eos and row["rejected_ids"][-2] != eos
    assert row["chosen_ids"][:-1] == row["rejected_ids"][:-1]


def test_dpo_full_finetune_and_reward_accuracy(tiny_model_dir, data_dirs, tmp_path):
    from datasets import load_from_disk

    from sharpen.train.dpo import DPOTrainConfig, train_dpo
    from sharpen.train.metrics import dpo_reward_accuracy

    out = tmp_path / "dpo-full"
    merged = train_dpo(
        DPOTrainConfig(
            model=tiny_model_dir,
            data=data_dirs["pairs"],
            output_dir=str(out),
            **_opts(lora=False, learning_rate=1e-3),
        )
    )
    assert not (out / "adapter").exists()
    _generates(str(merged))
    pairs = load_from_disk(data_dirs["pairs"])
    before = dpo_reward_accuracy(tiny_model_dir, tiny_model_dir, pairs)
    assert before["reward_accuracy"] == 0.0 and before["n"] == 4
    after = dpo_reward_accuracy(merged, tiny_model_dir, pairs)
    assert set(after) >= {"reward_accuracy", "reward_margin", "logp_accuracy"}
    assert after["reward_margin"] > 0  # two steps at lr 1e-3 on the training pairs move the margin


def test_empty_pairs_raise(tiny_model_dir, tmp_path):
    from sharpen.train.dpo import DPOTrainConfig, train_dpo

    empty = save_dataset(step_pairs([]), tmp_path / "empty")
    with pytest.raises(TaskError):
        train_dpo(DPOTrainConfig(model=tiny_model_dir, data=str(empty), output_dir=str(tmp_path / "o")))


def test_sft(tiny_model_dir, data_dirs, tmp_path):
    from sharpen.train.sft import SFTTrainConfig, train_sft

    out = tmp_path / "sft"
    merged = train_sft(
        SFTTrainConfig(model=tiny_model_dir, data=data_dirs["traces"], output_dir=str(out), **_opts())
    )
    assert (out / "adapter").is_dir() and (out / "checkpoint-2").is_dir()
    _generates(str(merged))
    assert json.loads((out / "sharpen_train.json").read_text())["metrics"]["traces"] == 4


def test_prm_encode_puts_labels_on_newline_tokens(tiny_model_dir):
    from transformers import AutoTokenizer

    from sharpen.train.prm import encode

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids, pos = encode(tok, "<|user|>What is 1 + 2?<|end|>\n<|assistant|>", ["1 + 2 = 3", "Answer: 3"])
    assert len(pos) == 2 and pos[0] < pos[1] == len(ids) - 1
    for p in pos:
        assert "\n" in tok.decode([ids[p]])
    _, cut = encode(tok, "<|user|>x", ["1 + 2 = 3", "Answer: 3"], max_length=4)
    assert cut[-1] == -1


def _separable_trees(pairs) -> list[Tree]:
    """"What is a + b?": the step computing a + b leads to the verified answer, the step computing
    a - b to a wrong one, so step labels (from the verified terminals) separate "+" from "-"."""
    trees = []
    for a, b in pairs:
        q = f"What is {a} + {b}?"
        t = Tree(problem_id=f"s{a}-{b}", question=q, prompt=f"<|user|>{q}<|end|>\n<|assistant|>")
        good = t.add(0, step=f"{a} + {b} = {a + b}")
        t.add(good.id, step=f"Answer: {a + b}", terminal=True, answer=str(a + b), correct=True)
        bad = t.add(0, step=f"{a} - {b} = {a - b}")
        t.add(bad.id, step=f"Answer: {a - b}", terminal=True, answer=str(a - b), correct=False)
        trees.append(t)
    return trees


def test_prm_trains_loads_scores(tiny_model_dir, tmp_path):
    """A PRM trained on separable step labels ranks held-out good steps above bad ones (problems it
    never saw), and loads back with its trained head."""
    import random

    from sharpen.train.metrics import prm_auroc
    from sharpen.train.prm import PRMModel, PRMTrainConfig, train_prm

    problems = [(a, b) for a in range(10) for b in range(10) if a != b]
    random.Random(0).shuffle(problems)
    train_labels = save_dataset(step_labels(_separable_trees(problems[:24])), tmp_path / "labels")
    held_out = step_labels(_separable_trees(problems[24:36]))
    assert {r["label"] for r in held_out} == {0, 1}
    out = tmp_path / "prm"
    opts = dict(max_steps=30, per_device_train_batch_size=8, learning_rate=2e-3, save_steps=10, logging_steps=10)
    merged = train_prm(PRMTrainConfig(model=tiny_model_dir, data=str(train_labels), output_dir=str(out), **opts))
    fmt = json.loads((merged / "sharpen_prm.json").read_text())
    assert fmt["kind"] == "sharpen-prm"
    prm = PRMModel.load(out)  # the out dir or out/merged both work
    scores = prm.score(
        ["<|user|>What is 1 + 2?<|end|>\n<|assistant|>", "<|user|>x<|end|>\n<|assistant|>"],
        [["1 + 2 = 3", "Answer: 3"], ["Answer: 1"]],
    )
    assert [len(s) for s in scores] == [2, 1] and all(0.0 <= v <= 1.0 for s in scores for v in s)
    assert PRMModel.load(merged).score(["<|user|>x<|end|>\n<|assistant|>"], [["Answer: 1"]])[
        0
    ] == pytest.approx(scores[1])  # the head was saved, not re-initialised
    res = prm_auroc(merged, held_out, n_boot=200)
    assert res["n"] == len(held_out) == 48 and res["positives"] == 24
    # an untrained head on this backbone ranks them at 0.5-0.8; trained, near 1
    assert res["auroc"] >= 0.9 and res["ci_low"] > 0.75, res
    with pytest.raises(ModelError):
        PRMModel.load(tiny_model_dir)


def test_auroc():
    from sharpen.core.stats import labelled_auroc as auroc
    from sharpen.train.metrics import auroc_with_ci

    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert auroc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert auroc([0, 1], [0.5, 0.5]) == 0.5
    assert auroc([0, 1, 0, 1], [0.1, 0.4, 0.5, 0.8]) == 0.75
    assert auroc([1, 1], [0.2, 0.3]) is None  # undefined with one class, as `sharpen.core.stats.auroc` says
    r = auroc_with_ci([0, 1] * 50, [0.2, 0.8] * 50, n_boot=200)
    assert r["auroc"] == 1.0 and r["ci_low"] == 1.0 and r["n"] == 100 and r["resampled"] == "step"
    assert auroc_with_ci([1, 1], [0.2, 0.3], n_boot=20)["auroc"] is None


def test_last_checkpoint_skips_one_cut_off_mid_save(tmp_path):
    """A kill during the Trainer's save leaves checkpoint-N without trainer_state.json (written
    last); resume must use the newest complete checkpoint and drop the partial one."""
    from sharpen.train.common import last_checkpoint

    assert last_checkpoint(tmp_path) is None
    ck = tmp_path
    for n in (2, 4):
        (ck / f"checkpoint-{n}").mkdir(parents=True)
        (ck / f"checkpoint-{n}" / "trainer_state.json").write_text(json.dumps({"global_step": n}))
    (ck / "checkpoint-6").mkdir()
    (ck / "checkpoint-6" / "model.safetensors").write_text("partial")
    (ck / "checkpoint-10").mkdir()
    (ck / "checkpoint-10" / "trainer_state.json").write_text('{"global_st')
    assert last_checkpoint(tmp_path) == str(ck / "checkpoint-4")
    assert sorted(p.name for p in ck.iterdir()) == ["checkpoint-2", "checkpoint-4"]


def test_dpo_with_sft_term_raises_chosen_likelihood(tiny_model_dir, data_dirs, tmp_path):
    """sft_weight adds TRL's "sft" loss (NLL on the chosen step) beside the DPO loss (RPO)."""
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sharpen.train.dpo import DPOTrainConfig, build_trainer, train_dpo

    cfg = DPOTrainConfig(model=tiny_model_dir, data=data_dirs["pairs"], output_dir=str(tmp_path / "rpo"),
                         sft_weight=0.5, **_opts(lora=False, learning_rate=1e-3))
    args = build_trainer(cfg).args
    assert args.loss_type == ["sigmoid", "sft"] and args.loss_weights == [1.0, 0.5]
    merged = train_dpo(cfg)

    pairs = load_from_disk(data_dirs["pairs"])
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)

    def chosen_logp(path) -> float:
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        total = 0.0
        for row in pairs:
            p = tok(row["prompt"]).input_ids
            ids = torch.tensor([p + tok(row["prompt"] + row["chosen"]).input_ids[len(p):]])
            with torch.no_grad():
                logits = model(ids).logits[0, :-1].log_softmax(-1)
            total += logits[len(p) - 1:].gather(1, ids[0, len(p):, None]).sum().item()
        return total

    assert chosen_logp(merged) > chosen_logp(tiny_model_dir)


@pytest.mark.slow
def test_sft_under_a_two_process_distributed_launch(tiny_model_dir, data_dirs, tmp_path):
    """What `accelerate launch` or `torchrun` does on several GPUs, here on the CPU (gloo): two processes
    train one model with DDP, and only the first writes the outputs."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(Path(__file__).parent))
    from servers import free_port

    port = free_port()
    torchrun = Path(sys.executable).parent / "torchrun"
    out = tmp_path / "sft"
    r = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", str(port), "-m", "sharpen", "train",
                        "sft", "--model", tiny_model_dir, "--data", data_dirs["traces"], "--out", str(out),
                        "--max-steps", "2", "--batch-size", "2"],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert r.returncode == 0, r.stderr[-2000:]
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    # 4 traces, 2 a device on 2 devices: one step an epoch (one process alone would take two)
    assert state["global_step"] == 2 and state["num_train_epochs"] == 2
    AutoModelForCausalLM.from_pretrained(out / "merged")
    assert json.loads((out / "sharpen_train.json").read_text())["kind"] == "sft"
