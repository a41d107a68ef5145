"""Each shipped recipe runs a round end to end on the tiny random model: it builds rows of the
dataset it trains on, and what it trains moves away from where it started.

The tiny model is random, so rows come from sampling a lot on an easy task: 1-digit `a + b` /
`a - b` (answers -9..18), lenient answers (`strict_format: false`, it writes no `Answer:` lines), and
oracle rollouts or many whole samples: about one sample in twenty is right, enough for verified
traces, step labels of both kinds and step pairs."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import changed_tensors

from sharpen.core.errors import ConfigError
from sharpen.core.io import read_jsonl
from sharpen.core.tree import Tree
from sharpen.loop.config import load_config, validate
from sharpen.loop.runner import LoopRunner, prepare_run_dir
from sharpen.report.seeds import seeds_facts
from sharpen.train.data import load_dataset_dir

TASK_ARGS = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
MCTS = {"algo": "mcts", "scorer": "oracle:4", "problems": 8, "budget": 400}
VOTE = {"algo": "vote", "scorer": "none", "problems": 8, "budget": 384}  # 32 whole samples a problem


def _run(tmp_path: Path, model: str, recipe: str, collect: dict, rounds: int = 1, build: dict | None = None,
         name: str = "run") -> Path:
    cfg = validate({
        "name": recipe, "recipe": recipe, "model": model, "rounds": rounds, "seed": 3, "task_args": TASK_ARGS,
        "collect": {"step_tokens": 6, "rollout_tokens": 12, "max_depth": 2, "temperature": 1.0,
                    "strict_format": False, **collect},
        "build": build or {},
        "train": {"max_steps": 2, "per_device_train_batch_size": 2},
        "eval": {"n": 2, "samples": 0, "max_tokens": 4},
    })
    run = tmp_path / name
    cfg = prepare_run_dir(cfg, run, resume=False)
    LoopRunner(cfg, run).run_all()
    return run


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _trees(run: Path, r: int) -> dict[str, Tree]:
    return {t.problem_id: t for t in map(Tree.from_dict, read_jsonl(run / f"round-{r}" / "collect" / "trees.jsonl"))}




def _trained_policy(run: Path, r: int, start: str, kind: str, trainer: str) -> str:
    """Round `r` trained a new policy from `start` on its own `kind` rows; returns the policy."""
    summary = _json(run / f"round-{r}" / "train" / "summary.json")
    rows = len(load_dataset_dir(run / f"round-{r}" / "data" / kind))
    assert summary["kind"] == kind and summary["rows"] == rows > 0 and summary["start"] == start
    policy = summary["model"]
    assert policy != start and Path(policy).is_relative_to(run)
    record = _json(Path(policy).parent / "sharpen_train.json")
    assert record["kind"] == trainer and record["config"]["model"] == start
    assert record["config"]["data"] == str(run / f"round-{r}" / "data" / kind)
    assert changed_tensors(start, policy), "the trained policy has its start's weights"
    # the next stage evaluated it
    assert _json(run / f"round-{r}" / "eval" / "metrics.json")["model"] == policy
    return policy


def test_step_dpo_round_builds_first_wrong_step_pairs_and_trains(tmp_path, tiny_model_dir):
    run = _run(tmp_path, tiny_model_dir, "step-dpo", MCTS)
    pairs = load_dataset_dir(run / "round-1" / "data" / "pairs")
    assert len(pairs) >= 1
    trees = _trees(run, 1)
    for row in pairs:
        t = trees[row["problem_id"]]
        chosen, rejected = t.nodes[row["chosen_node_id"]], t.nodes[row["rejected_node_id"]]
        assert row["recipe"] == "step-dpo" and row["chosen"] != row["rejected"]
        assert chosen.parent == rejected.parent == row["prefix_node_id"]  # the same prefix
        assert row["rejected_value"] <= 0.0 < row["chosen_value"]
        # the rejected step is wrong: a failed solution runs through it and no correct one does
        below = [n for n in t.terminals() if rejected.id in [m.id for m in t.path(n.id)]]
        assert any(n.correct is False for n in below) and not any(n.correct for n in below)
    _trained_policy(run, 1, tiny_model_dir, "pairs", "dpo")


def test_trace_pairs_mix_whole_solutions_into_a_dpo_round(tmp_path, tiny_model_dir):
    """`build.trace_pairs`: a pair recipe's round also pairs a verified correct whole solution against a
    wrong one of the same problem; the data summary counts the two kinds apart and DPO trains on both."""
    run = _run(tmp_path, tiny_model_dir, "mcts-dpo", {**VOTE, "problems": 4}, build={"trace_pairs": 2},
               name="seed-0")
    pairs = load_dataset_dir(run / "round-1" / "data" / "pairs")
    kinds = _json(run / "round-1" / "data" / "summary.json")["pair_kinds"]
    whole = [r for r in pairs if r["recipe"] == "trace-pairs"]
    assert kinds == {k: sum(r["recipe"] == k for r in pairs) for k in kinds} and kinds["trace-pairs"] == len(whole) > 0
    trees = _trees(run, 1)
    for row in whole:
        t = trees[row["problem_id"]]
        c, r = t.nodes[row["chosen_node_id"]], t.nodes[row["rejected_node_id"]]
        assert c.correct is True and r.correct is False and row["prompt"] == t.prompt
        assert row["chosen"].startswith(t.text(c.id)) and row["rejected"].startswith(t.text(r.id))
    assert max(Counter(r["problem_id"] for r in whole).values()) <= 2
    # a `--seeds` report counts the two kinds apart (starvation is counted in step pairs)
    (rows,) = seeds_facts(tmp_path)["seeds"][0]["rows"]
    assert rows["pairs: trace-pairs"] == len(whole) and rows["pairs: mcts-dpo/best_worst"] == len(pairs) - len(whole)
    _trained_policy(run, 1, tiny_model_dir, "pairs", "dpo")
    with pytest.raises(ConfigError, match="build.trace_pairs"):
        validate({"recipe": "rft", "build": {"trace_pairs": 1}})


def test_rft_round_builds_verified_traces_and_trains(tmp_path, tiny_model_dir):
    run = _run(tmp_path, tiny_model_dir, "rft", VOTE)
    traces = load_dataset_dir(run / "round-1" / "data" / "traces")
    assert len(traces) >= 1
    trees = _trees(run, 1)
    for row in traces:
        t = trees[row["problem_id"]]
        node = t.nodes[row["node_id"]]
        assert node.terminal and node.correct is True  # verified against the reference
        assert row["completion"] == t.text(node.id) and row["answer"] == node.answer
    _trained_policy(run, 1, tiny_model_dir, "traces", "sft")


@pytest.mark.slow
def test_reference_share_draws_round_two_steps_from_the_starting_model(tmp_path, tiny_model_dir):
    """`collect.reference_share`: from round 2 on, part of the sampled steps come from the run's model."""
    run = _run(tmp_path, tiny_model_dir, "mcts-dpo", {**MCTS, "reference_share": 0.5},
               rounds=2)
    m1, m2 = (_json(run / f"round-{r}" / "collect" / "metrics.json") for r in (1, 2))
    assert "step_rows" not in m1  # round 1 samples the starting model itself
    assert m2["model"] != tiny_model_dir and m2["step_rows"]["reference"] > 0 and m2["step_rows"]["policy"] > 0
    with pytest.raises(ConfigError, match="reference_share"):
        validate({"collect": {"reference_share": 0.5}, "cluster": {"address": "local"}})


def test_collection_temperature_rises_by_round(tmp_path, tiny_model_dir):
    """`collect.temperature_step`: round r collects at temperature + (r - 1) x step."""
    run = _run(tmp_path, tiny_model_dir, "rft", {**VOTE, "problems": 2, "temperature_step": 0.5}, rounds=2)
    temps = [_json(run / f"round-{r}" / "collect" / "metrics.json")["temperature"] for r in (1, 2)]
    assert temps == [1.0, 1.5]
    with pytest.raises(ConfigError, match="temperature_step"):
        validate({"collect": {"temperature_step": -0.1}})


def test_prm_guided_round_trains_a_prm_and_the_policy(tmp_path, tiny_model_dir):
    from sharpen.train.prm import PRMModel

    run = _run(tmp_path, tiny_model_dir, "prm-guided", MCTS)
    labels = load_dataset_dir(run / "round-1" / "data" / "labels")
    assert set(labels["label"]) == {0, 1}  # steps that keep the answer reachable and steps that do not
    assert all(row["label"] == int(row["value"] >= 0.5) for row in labels)
    summary = _json(run / "round-1" / "train" / "summary.json")
    prm = summary["prm"]
    record = _json(Path(prm).parent / "sharpen_train.json")
    assert record["kind"] == "prm" and record["config"]["model"] == tiny_model_dir
    assert record["config"]["data"] == str(run / "round-1" / "data" / "labels")
    # the backbone moved (the classification head is new, so it has no start to compare with)
    assert changed_tensors(tiny_model_dir, prm), "the trained PRM has the policy's weights"
    (scores,) = PRMModel.load(prm).score([labels[0]["prompt"]], [list(labels[0]["prefix_steps"]) + [labels[0]["step"]]])
    assert len(scores) == len(labels[0]["prefix_steps"]) + 1 and all(0.0 <= s <= 1.0 for s in scores)
    # the policy trains on the verified traces the search found
    _trained_policy(run, 1, tiny_model_dir, "traces", "sft")


@pytest.mark.parametrize("empty", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_prm_guided_round_without_labels_falls_back(tmp_path, tiny_model_dir, monkeypatch, empty):
    """A round that builds no step labels trains no PRM. The next round must not fail on the missing
    PRM: it searches with the last PRM there is (round 1's, when round 2 is empty) or, when no round
    has trained one yet, the configured scorer."""
    from sharpen.train import data

    build_labels = data.step_labels

    def no_labels_in_round_empty(trees, *args, **kwargs):
        ds = build_labels(trees, *args, **kwargs)
        return ds.select([]) if kwargs.get("round") == empty else ds

    monkeypatch.setattr(data, "step_labels", no_labels_in_round_empty)
    collect = {"algo": "mcts", "scorer": "oracle:4", "problems": 2, "budget": 200}
    run = _run(tmp_path, tiny_model_dir, "prm-guided", collect, rounds=empty + 1)

    def collected_with(r: int) -> str:
        return _json(run / f"round-{r}" / "collect" / "metrics.json")["scorer"]

    assert _json(run / f"round-{empty}" / "data" / "summary.json")["rows"]["labels"] == 0
    assert "prm" not in _json(run / f"round-{empty}" / "train" / "summary.json")
    assert not (run / f"round-{empty}" / "train" / "prm").exists()
    if empty == 1:
        assert collected_with(2) == "oracle:4"
    else:
        prm1 = _json(run / "round-1" / "train" / "summary.json")["prm"]
        assert collected_with(2) == collected_with(3) == f"prm:{prm1}"
    assert all(v["status"] == "done" for v in _json(run / "manifest.json")["stages"].values())
    # the round after the empty one built labels and trained its own PRM
    assert "prm" in _json(run / f"round-{empty + 1}" / "train" / "summary.json")


def _grpo_config(model: str, **train) -> dict:
    """A grpo run small enough for the tiny model: 2 problems a round, 2 completions each per step
    (4 a step), at most 8 tokens each, and a round budget of 2 x 48 = 96 generated tokens: three
    generations' worst case (32 tokens each)."""
    return {"name": "grpo", "recipe": "grpo", "model": model, "rounds": 1, "seed": 3, "task_args": TASK_ARGS,
            "collect": {"problems": 2, "budget": 48, "strict_format": False},
            "train": {"max_steps": 6, "per_device_train_batch_size": 4, "num_generations": 2,
                      "max_completion_length": 8, "learning_rate": 1e-3, **train},
            "eval": {"n": 2, "samples": 0, "max_tokens": 4}}


def test_grpo_round_trains_online_within_the_token_budget(tmp_path, tiny_model_dir):
    """No search: collect writes the round's problems (the offline recipes' slice of the pool), build
    their chat prompts, and GRPO samples, rewards and trains; it never generates more than
    collect.budget x collect.problems tokens, and the report reads the run."""
    from conftest import random_prm

    from sharpen.report.run import write_report

    # a random PRM's scores as a process reward: rewards differ within a group, so the policy moves
    # (the random policy rarely verifies, and equal rewards give zero advantages)
    prm = random_prm(tmp_path / "prm", tiny_model_dir)
    cfg = prepare_run_dir(validate(_grpo_config(tiny_model_dir, process_reward=f"prm:{prm}", logging_steps=1)),
                          tmp_path / "run", False)
    runner = LoopRunner(cfg, tmp_path / "run")
    runner.run_all()
    run = tmp_path / "run"
    picked = [p["id"] for p in read_jsonl(run / "round-1" / "collect" / "problems.jsonl")]
    assert picked == [p.id for p in runner.train_pool[:2]] and not (run / "round-1" / "collect" / "trees.jsonl").exists()
    prompts = load_dataset_dir(run / "round-1" / "data" / "prompts")
    assert prompts["problem_id"] == picked and prompts[0]["prompt"] == runner.task.messages(runner.train_pool[0])

    summary = _json(run / "round-1" / "train" / "summary.json")
    cap, worst = 2 * 48, 4 * 8
    assert summary["kind"] == "prompts" and summary["rows"] == 2 and summary["token_budget"] == cap
    used = summary["generated_tokens"]
    assert 0 < used <= cap and used == summary["usage"]["generated_tokens"] and summary["usage"]["prompt_tokens"] > 0
    assert summary["usage"]["verifier_tokens"] > 0 and summary["completions"] == 4 * summary["usage"]["calls"]
    # the random policy writes all 8 tokens: 32 a step, and a 4th step could pass 96, so it stops after 3
    assert summary["steps"] == summary["stopped_by_budget_at"] == 3 and used + worst > cap
    policy = summary["model"]
    assert changed_tensors(tiny_model_dir, policy), "the trained policy has its start's weights"
    record = _json(Path(policy).parent / "sharpen_train.json")
    assert record["kind"] == "grpo" and record["config"]["task"] == "gym:chain_sum"
    assert _json(run / "round-1" / "eval" / "metrics.json")["model"] == policy
    assert "prompts" in _json(run / "round-1" / "data" / "summary.json")["rows"]
    # the report the run wrote shows what a GRPO user watches, and no config field grpo never reads
    report = (run / "report.md").read_text()
    assert "## Training" in report and "zero-advantage groups" in report and (run / "plots" / "training_per_step.png").exists()
    config = report.split("## Config")[1]
    assert "recipe: grpo" in config and "algo:" not in config and "scorer:" not in config and "build:" not in config
    assert write_report(run).exists()


def test_grpo_round_counts_accumulated_micro_batches_and_shares_each_prompt(tmp_path, tiny_model_dir):
    """One prompt's completions per micro-batch (per_device_train_batch_size == num_generations,
    generating at every micro-step) with 2 accumulation steps: an optimizer step takes 2 prompts,
    so one epoch of 2 prompts x 2 completions is 1 step, not 2; and every micro-batch's forward runs
    its shared prompt once (`share_prefix`)."""
    from sharpen.train.common import quiet
    from sharpen.train.grpo import GRPOTrainConfig, build_trainer
    from sharpen.train.prefix import backbone_of

    layout = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2, "steps_per_generation": 1}
    cfg = prepare_run_dir(validate(_grpo_config(tiny_model_dir, max_epochs=1.0, **layout)), tmp_path / "run", False)
    LoopRunner(cfg, tmp_path / "run").run_all()
    summary = _json(tmp_path / "run" / "round-1" / "train" / "summary.json")
    assert summary["steps"] == 1 and summary["usage"]["calls"] == 2 and summary["completions"] == 4

    trainer, _ = build_trainer(GRPOTrainConfig(
        model=tiny_model_dir, output_dir=str(tmp_path / "grpo"), task="gym:chain_sum", task_args=TASK_ARGS, problems=2,
        strict_answers=False, max_steps=1, num_generations=2, max_completion_length=8, **layout))
    quiet(trainer).train()
    assert backbone_of(trainer.model)._sharpen_shared_calls >= 2  # each micro-batch's loss forward split


@pytest.mark.parametrize("merged", [True, False])
def test_grpo_sharpen_sampler_draws_from_the_policy_as_it_is_now(tmp_path, tiny_model_dir, merged):
    """`sampler: sharpen` (TRL's rollout_func): G completions per prompt from sharpen's HF sampler
    over the training policy, token for token what a fresh backend over the same weights draws with
    the same seeds (`merged_sampling`: a plain model whose weights are W + B A alpha/r, computed here
    by hand; else the adapters themselves); after the weights move, no prompt KV from before is
    reused; the policy is left in training mode and its weights as they were; options it would
    ignore are refused."""
    import torch
    from transformers import AutoModelForCausalLM

    from sharpen.backends.base import mix_seed
    from sharpen.backends.hf import HFBackend
    from sharpen.core.errors import ConfigError
    from sharpen.train.grpo import GRPOTrainConfig, MergedCopy, SharpenRollout, build_trainer

    with pytest.raises(ConfigError, match="mask_truncated_completions=True is not supported by sampler=sharpen"):
        SharpenRollout(GRPOTrainConfig(model=tiny_model_dir, output_dir=str(tmp_path / "x"), task="gym:chain_sum",
                                       mask_truncated_completions=True), None)
    trainer, budget = build_trainer(GRPOTrainConfig(
        model=tiny_model_dir, output_dir=str(tmp_path / "grpo"), task="gym:chain_sum", task_args=TASK_ARGS,
        problems=2, strict_answers=False, max_steps=1, num_generations=3, per_device_train_batch_size=3,
        max_completion_length=12, temperature=1.0, sampler="sharpen", seed=5, merged_sampling=merged))
    rollout = trainer.rollout_func
    prompts = [row["prompt"] for row in trainer.train_dataset for _ in range(3)]
    policy = trainer.model.get_base_model()
    policy.train()
    frozen = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" not in n}

    def by_hand() -> object:  # the base weights plus each adapter's B A alpha/r
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        with torch.no_grad():
            for name, layer in policy.named_modules():
                if hasattr(layer, "lora_A") and "default" in layer.lora_A:
                    model.get_submodule(name).weight.add_(
                        layer.lora_B["default"].weight @ layer.lora_A["default"].weight * layer.scaling["default"])
        return model

    def fresh(call: int) -> list[list[int]]:
        model = by_hand() if merged else policy
        backend = HFBackend.from_model(model, rollout.tokenizer, seed=0)
        texts = [backend.chat_prompt(p) for p in prompts[::3]]
        training = model.training
        model.eval()
        groups = backend.generate(texts, rollout.params(3), seeds=[mix_seed(5, 0, 0, call, 0, i) for i in range(2)])
        model.train(training)
        return [c.token_ids for g in groups for c in g]

    out = rollout(prompts, trainer)
    sampling = budget._sampled  # the usage meter's seconds are the sampler's own, not the step's so far
    time.sleep(0.2)
    budget.record(1, 1, 0, 1)
    assert 0 < budget.usage["seconds"] == sampling and budget._sampled is None
    assert set(out) == {"prompt_ids", "completion_ids", "logprobs"} and len(out["completion_ids"]) == 6
    tok = rollout.tokenizer
    assert out["prompt_ids"][0] == out["prompt_ids"][2] != out["prompt_ids"][3]
    assert out["prompt_ids"][0] == tok(tok.apply_chat_template(prompts[0], tokenize=False, add_generation_prompt=True),
                                       add_special_tokens=False)["input_ids"]
    assert out["completion_ids"] == fresh(0) and policy.training
    assert (rollout.merged is not None) == merged and (rollout.backend.model is policy) != merged
    with torch.no_grad():  # the LoRA update moves the policy (B starts at zero)
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.add_(torch.randn_like(param))
    moved = fresh(1)
    assert rollout(prompts, trainer)["completion_ids"] == moved
    policy.eval()
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.zero_()
    assert fresh(1) != moved, "the perturbation did not change the draws: the check above proves nothing"
    # a process's share that splits a group: as many completions as each prompt has rows
    split = rollout(prompts[1:], trainer)
    assert [len(x) for x in split["completion_ids"]] and len(split["completion_ids"]) == 5
    assert split["prompt_ids"][:2] == out["prompt_ids"][:2] and split["prompt_ids"][2] == out["prompt_ids"][3]
    assert all(torch.equal(p, frozen[n]) for n, p in policy.named_parameters() if "lora_" not in n)
    policy.model.norm.weight.requires_grad_(True)  # a trainable weight outside the adapters: merging does not cover it
    assert MergedCopy.of(trainer.model) is None


def test_grpo_verifier_reward_counts_tokens():
    import json as _json_mod

    from sharpen.core.tasks import load_task
    from sharpen.train.grpo import TokenBudget, VerifierReward

    task = load_task("gym:chain_sum", TASK_ARGS)
    (p,) = task.problems("train", 1, seed=0)
    raw = _json_mod.dumps(p.to_dict())
    budget = TokenBudget(limit=10, per_generation=4)
    reward = VerifierReward(task, True, budget, {raw: 7})
    done = [{"role": "assistant", "content": f"Answer: {p.answer}"}]
    wrong = [{"role": "assistant", "content": f"Answer: {int(p.answer) + 1}"}]
    lenient = [{"role": "assistant", "content": f"so it is {p.answer}"}]  # no Answer: line
    assert reward([[]] * 3, [done, wrong, lenient], [raw] * 3, completion_ids=[[1, 2], [3], [4, 5, 6]]) == [1.0, 0.0, 0.0]
    assert budget.generated == 6 and budget.usage["prompt_tokens"] == 21 and budget.correct == 1
    assert budget.worst_case(0) == 4  # one generation per step by default: 6 + 4 <= 10, then over


def test_grpo_options_are_checked_at_load(tmp_path, tiny_model_dir):
    from sharpen.core.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown grpo trainer option 'num_generation'.*num_generations"):
        validate(_grpo_config(tiny_model_dir, num_generation=4))
    with pytest.raises(ConfigError, match="more than a round's budget.*96"):
        validate(_grpo_config(tiny_model_dir, max_completion_length=64))
    # a generation fits (32) but an optimizer step of four generating micro-steps may not (the trainer refuses it too)
    with pytest.raises(ConfigError, match=r"4 generation\(s\) of 4 completions .* = 128 tokens is more than a round's"):
        validate(_grpo_config(tiny_model_dir, gradient_accumulation_steps=4, steps_per_generation=1))
    with pytest.raises(ConfigError, match="train.token_budget is not set in a run config"):
        validate(_grpo_config(tiny_model_dir, token_budget=10))
    # from the command line: one line, exit 2, no traceback
    import subprocess
    import sys

    import yaml

    cfg = tmp_path / "grpo.yaml"
    cfg.write_text(yaml.safe_dump(_grpo_config(tiny_model_dir, num_generation=4)))
    r = subprocess.run([sys.executable, "-m", "sharpen", "run", str(cfg), "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "num_generations" in lines[0] and "fix" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_grpo_resumes_with_its_token_count(tmp_path, tiny_model_dir):
    """A resumed GRPO run continues the checkpoint's token count; one the budget stopped, resumed
    after its last checkpoint (a kill before merged/ was written), generates nothing more."""
    import shutil

    from sharpen.train.grpo import GRPOTrainConfig, train_grpo

    out = tmp_path / "grpo"
    cfg = GRPOTrainConfig(model=tiny_model_dir, output_dir=str(out), task="gym:chain_sum", task_args=TASK_ARGS,
                          problems=2, strict_answers=False, max_steps=2, save_steps=1, per_device_train_batch_size=4,
                          num_generations=2, max_completion_length=8, token_budget=96)

    def metrics() -> dict:
        return _json(out / "sharpen_train.json")["metrics"]

    train_grpo(cfg)
    first = metrics()
    assert first["steps"] == 2 and first["usage"]["calls"] == 2 and first["stopped_by_budget_at"] is None
    cfg.max_steps = 6
    train_grpo(cfg)
    second = metrics()
    assert second["resumed_from"].endswith("checkpoint-2") and second["generated_tokens"] <= 96
    assert second["usage"]["calls"] == second["steps"] == second["stopped_by_budget_at"] == 3  # 32 tokens a step
    shutil.rmtree(out / "merged")
    train_grpo(cfg)
    third = metrics()
    assert third["resumed_from"].endswith("checkpoint-3")
    assert third["usage"] == second["usage"] and third["steps"] == 3


@pytest.mark.slow
def test_sharpen_train_grpo_from_the_command_line(tmp_path, tiny_model_dir):
    """`sharpen train grpo` without a dataset: the task's training problems, its verifier as the reward;
    a misspelt GRPO option is the one-line error and writes nothing."""
    import subprocess
    import sys

    base = [sys.executable, "-m", "sharpen", "train", "grpo", "--model", tiny_model_dir, "--max-steps", "1",
            "--problems", "2", "--arg", "max_completion_length=8", "--arg", "per_device_train_batch_size=2"]
    r = subprocess.run([*base, "--out", str(tmp_path / "g"), "--arg", "num_generations=2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "g" / "sharpen_train.json").read_text())
    assert summary["kind"] == "grpo" and summary["metrics"]["generated_tokens"] > 0
    assert (tmp_path / "g" / "merged" / "config.json").exists()
    r = subprocess.run([*base, "--out", str(tmp_path / "bad"), "--arg", "num_generation=2"],
                       capture_output=True, text=True, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "num_generations" in lines[0], r.stderr
    assert not (tmp_path / "bad").exists()


def test_screen_searches_the_problems_the_policy_solves_some_of_the_time(tmp_path, tiny_model_dir, monkeypatch):
    """`collect.screen`: from round 2 on, the round's problems are picked among more candidates by how often
    the trained policy solves them (mixed first); round 1 is the run's usual draw, and a resumed round reads
    its screen back instead of sampling again."""
    run = _run(tmp_path, tiny_model_dir, "rft", {**VOTE, "problems": 2, "pool": 8, "screen": 4}, rounds=2)
    runner = LoopRunner(load_config(run / "config.yaml"), run)
    assert sorted(_trees(run, 1)) == sorted(p.id for p in runner.round_problems(1))
    assert "screen" not in _json(run / "round-1" / "collect" / "metrics.json")
    m2 = _json(run / "round-2" / "collect" / "metrics.json")
    rows = list(read_jsonl(run / "round-2" / "collect" / "screen.jsonl"))
    right = {r["id"]: r["right"] for r in rows[:-1]}
    candidates = runner.screen_candidates(2)
    assert [p.id for p in candidates] == list(right) and len(candidates) == 6  # 2 of its own + the 4 spare
    assert m2["screen"]["candidates"] == 6 and m2["screen"]["usage"]["generated_tokens"] > 0
    order = sorted(range(6), key=lambda i: (not 0 < right[candidates[i].id] < 4,
                                            abs(right[candidates[i].id] / 4 - 0.5), i))
    assert sorted(_trees(run, 2)) == sorted(candidates[i].id for i in order[:2])
    import sharpen.backends as backends

    monkeypatch.setattr(backends, "load_backend", lambda *a, **k: pytest.fail("sampled again"))
    again, info = runner.screen(2, "unused", run / "round-2" / "collect")
    assert sorted(p.id for p in again) == sorted(_trees(run, 2)) and info["candidates"] == 6
    # the ranking itself, on a screen written by hand: right share nearest 1/2 first, then candidate order
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "screen.jsonl").write_text("".join(json.dumps({"id": p.id, "right": k, "samples": 4}) + "\n" for p, k in
                                               zip(candidates, [0, 4, 1, 3, 2, 1], strict=True))
                                       + json.dumps({"usage": {"generated_tokens": 1}}) + "\n")
    picked, info = runner.screen(2, "unused", fake)
    assert [p.id for p in picked] == [candidates[2].id, candidates[4].id]  # kept in candidate order
    assert (info["mixed"], info["kept_mixed"], info["never"], info["always"]) == (4, 2, 1, 1)
    with pytest.raises(ConfigError, match="collect.pool above"):
        validate({"rounds": 2, "collect": {"screen": 4, "problems": 2, "pool": 4}})
