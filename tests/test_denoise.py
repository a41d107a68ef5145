"""The denoising process (`sharpen.search.denoise`) on a tiny DDPM trained here in seconds: the
preparation is deterministic, the process obeys the protocol with NFE metered and budgeted, the
reward scorers stay in [0, 1], and the existing algorithms search it deterministically per seed."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("sklearn")

from sharpen.backends.diffusion import load_digits_model, prepare_digits  # noqa: E402
from sharpen.core.budget import Budget  # noqa: E402
from sharpen.core.meter import Usage, UsageMeter  # noqa: E402
from sharpen.search.algorithms import ALGORITHMS  # noqa: E402
from sharpen.search.denoise import DenoiseProcess, decode_state, problems, strip_states  # noqa: E402
from sharpen.search.scorers import make_scorer  # noqa: E402

TINY = {"steps": 60, "batch": 32, "channels": (8, 16), "norm_groups": 4}
STEPS = 8  # reverse steps of the tests' sampler


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return prepare_digits(tmp_path_factory.mktemp("ddpm") / "digits-ddpm", **TINY)


@pytest.fixture(scope="module")
def model(model_dir):
    return load_digits_model(model_dir)


def test_usage_leaves_out_zero_nfe_and_reward_calls():
    old = ["prompt_tokens", "generated_tokens", "calls", "seconds", "verifier_tokens", "cached_tokens"]
    assert list(Usage().to_dict()) == old
    meter = UsageMeter()
    meter.record(0, 3, 0.0, nfe=3, reward_calls=2)
    assert meter.total.to_dict()["nfe"] == 3 and meter.total.to_dict()["reward_calls"] == 2
    assert list((meter.snapshot() - meter.snapshot()).to_dict()) == old


def test_preparation_is_deterministic(model_dir, tmp_path):
    again = prepare_digits(tmp_path / "again", **TINY)
    for f in ("unet/diffusion_pytorch_model.safetensors", "classifier.json", "sharpen_digits.json",
              "scheduler/scheduler_config.json", "model_index.json"):
        assert (model_dir / f).read_bytes() == (again / f).read_bytes(), f
    before = (again / "classifier.json").stat().st_mtime_ns
    assert prepare_digits(again, **TINY) == again  # prepared: not trained again
    assert (again / "classifier.json").stat().st_mtime_ns == before
    assert not list(tmp_path.glob(".again.*"))  # the atomic write left no temp dir


def test_problems_are_deterministic():
    a, b = problems("test", 20, seed=3), problems("test", 20, seed=3)
    assert a == b and a != problems("train", 20, seed=3)
    assert all(p.answer == str(p.meta["target"]) and 0 <= p.meta["target"] < 10 for p in a)
    assert len({p.id for p in a}) == 20


def test_protocol_and_nfe(model):
    proc = DenoiseProcess(model, steps=STEPS)
    tree = proc.new_tree(problems("test", 1)[0], seed=0)
    roots = proc.expand(tree, [0, 0], 3)  # x_T draws: no forward
    assert [len(k) for k in roots] == [3, 3] and proc.meter.total.nfe == 0
    assert len(tree.nodes[roots[0][0]].meta["x"]) == 172  # 64 float16 values, base64
    a = roots[0][0]
    kids = proc.expand(tree, [a, a, roots[1][0]], 2)  # two distinct states: two forwards
    assert [len(k) for k in kids] == [2, 2, 2] and proc.meter.total.nfe == 2
    assert abs(sum(tree.nodes[c].prior for c in kids[0]) - 1) < 1e-9
    x0, x1 = (decode_state(tree.nodes[c].meta["x"], (1, 8, 8)) for c in kids[0])
    assert not x0.equal(x1)  # k noise draws from one forward
    done = proc.complete(tree, [0, kids[0][0]], 2)
    # from the root: 2 x STEPS; from a node one step down: 1 shared + 2 x (STEPS - 2)
    assert proc.meter.total.nfe == 2 + 2 * STEPS + 1 + 2 * (STEPS - 2)
    assert proc.meter.total.reward_calls == 4
    assert proc.meter.total.generated_tokens == proc.meter.total.nfe  # what Budget bounds
    for d in done[0] + done[1]:
        node = tree.nodes[d]
        assert node.terminal and node.answer in [str(c) for c in range(10)] and 0 <= node.meta["reward"] <= 1
        assert proc.answer(tree, d) == node.answer and proc.vote_key(node.answer) == node.answer
    assert proc.expand(tree, [done[0][0]], 2) == [[]]  # terminals are not extended
    assert proc.verify(tree, tree.reference) and not proc.verify(tree, None)
    rolls = proc.rollout(tree, [kids[0][0]], 3)[0]
    assert len(rolls) == 3 and all(r.num_tokens == STEPS - 1 and r.answer is not None for r in rolls)
    leaf = kids[0][0]
    for _ in range(STEPS - 1):  # step by step to x_0
        (leaf,) = proc.expand(tree, [leaf], 1)[0]
    assert tree.nodes[leaf].terminal and tree.nodes[leaf].answer is not None
    assert proc.answer(tree, kids[0][0]) is None  # no predicted x_0 computed yet
    strip_states(tree)
    assert all("x" in n.meta for n in tree.terminals())
    assert not any("x" in n.meta for n in tree.nodes if not n.terminal)


def test_rows_do_not_depend_on_their_batch(model):
    """A row's result is a function of its own state and stream: alone or beside others, the same floats."""
    import torch

    x, t = torch.randn(5, 1, 8, 8), torch.tensor([999, 500, 100, 3, 0])
    assert model.eps(x, t).equal(torch.stack([model.eps(x[i:i + 1], t[i:i + 1])[0] for i in range(5)]))
    proc = DenoiseProcess(model, steps=STEPS)
    alone = proc.new_tree(problems("test", 1)[0], seed=7)
    batched = proc.new_tree(problems("test", 1)[0], seed=7)
    a = proc.complete(alone, [0], 2)[0]
    b = proc.complete(batched, [0, 0], 2)[0]  # the first position's rows, now beside two more
    assert [alone.nodes[n].meta["x"] for n in a] == [batched.nodes[n].meta["x"] for n in b]


def test_budget_bounds_nfe(model):
    proc = DenoiseProcess(model, steps=STEPS)
    tree = proc.new_tree(problems("test", 1)[0], seed=0)
    budget = Budget(proc.meter, 3 * STEPS)
    assert len(proc.complete(tree, [0], 10, budget)[0]) == 3  # 3 rows of STEPS fit
    assert budget.spent == 3 * STEPS and budget.exhausted
    assert proc.complete(tree, [0], 1, budget) == [[]]
    assert budget.report()["nfe"] == 3 * STEPS


def test_scorers(model):
    proc = DenoiseProcess(model, steps=STEPS)
    tree = proc.new_tree(problems("test", 1)[0], seed=1)
    (xs,) = proc.expand(tree, [0], 3)
    (kids,) = proc.expand(tree, [xs[0]], 2)
    (done,) = proc.complete(tree, [0], 1)
    x0 = make_scorer("x0-reward", proc)
    before = proc.meter.snapshot()
    values = x0.score(tree, [0] + kids + done)
    assert all(v is not None and 0.0 <= v <= 1.0 for v in values)
    assert values[0] == pytest.approx(0.1)  # the root: no state, the uniform prior
    assert values[-1] == tree.nodes[done[0]].meta["reward"]  # a terminal: its own reward, free
    spent = proc.meter.snapshot() - before
    assert spent.nfe == 2 and spent.reward_calls == 2
    assert all(proc.answer(tree, c) is not None for c in kids)  # the predicted x_0's class
    assert x0.score(tree, kids) == values[1:3] and (proc.meter.snapshot() - before).nfe == 2  # cached
    mc = make_scorer("mc-reward:3", proc)
    before = proc.meter.snapshot()
    values = mc.score(tree, xs[1:])
    assert all(0.0 <= v <= 1.0 for v in values)
    assert (proc.meter.snapshot() - before).nfe == 2 * (1 + 3 * (STEPS - 1))
    assert (proc.meter.snapshot() - before).reward_calls == 6
    with pytest.raises(Exception, match="denoising process"):
        from sharpen.search.toy import RandomWalkProcess

        make_scorer("x0-reward", RandomWalkProcess())


def _reward(tree) -> float:
    return tree.nodes[tree.chosen[-1]].meta["reward"] if tree.chosen else 0.0


SEARCHES = [("bon", "x0-reward", {"batch": 4}), ("pf", "x0-reward", {"n": 4}), ("pf", "mc-reward:1", {"n": 2}),
            ("beam", "x0-reward", {"width": 2, "expansions": 2})]


@pytest.mark.parametrize("algo,spec,args", SEARCHES)
def test_search_runs_within_budget_and_same_seed_same_tree(model, algo, spec, args):
    proc = DenoiseProcess(model, steps=STEPS)
    problem = problems("test", 1, seed=4)[0]
    budget = 10 * STEPS + 8  # pf's 4 particles cost 8 NFE a step (4 steps, 4 values)
    tree = ALGORITHMS[algo](proc, make_scorer(spec, proc), problem, budget, seed=2, **args)
    assert tree.answer is not None and tree.nodes[tree.chosen[-1]].terminal
    assert tree.usage["nfe"] == tree.usage["generated_tokens"] <= budget + tree.usage["overshoot_bound"]
    assert tree.usage["reward_calls"] > 0
    fresh = DenoiseProcess(model, steps=STEPS)
    again = ALGORITHMS[algo](fresh, make_scorer(spec, fresh), problem, budget, seed=2, **args)
    a, b = tree.to_dict(), again.to_dict()
    assert a.pop("usage")["nfe"] == b.pop("usage")["nfe"]
    assert a == b
    other = ALGORITHMS[algo](fresh, make_scorer(spec, fresh), problem, budget, seed=3, **args)
    assert other.to_dict()["nodes"] != a["nodes"]


def test_bon_and_pf_beat_a_random_sample(model):
    """A weak check on a handful of problems: the mean reward of the chosen sample beats one
    unguided sample's."""
    proc = DenoiseProcess(model, steps=STEPS)
    probs = problems("test", 8, seed=0)
    rng = random.Random(0)
    base = []
    for i, p in enumerate(probs):
        tree = proc.new_tree(p, seed=100 + i)
        base.append(tree.nodes[proc.complete(tree, [0], 1)[0][0]].meta["reward"])
    baseline = sum(base) / len(base)
    for algo, args in (("bon", {"batch": 4}), ("pf", {"n": 4})):
        rewards = [_reward(ALGORITHMS[algo](proc, make_scorer("x0-reward", proc), p, 10 * STEPS + 8,
                                            seed=rng.randrange(1000), **args)) for p in probs]
        assert sum(rewards) / len(rewards) > baseline, (algo, rewards, base)
