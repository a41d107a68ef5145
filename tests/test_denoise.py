"""The denoising process (`sharpen.search.denoise`) on a tiny DDPM trained here in seconds: the
preparation is deterministic, the process obeys the protocol with NFE metered and budgeted (NFE is
its budget unit; generated tokens stay 0), the rewards (class, realism, product) and the value
scorers stay in [0, 1], the algorithms (SVDD too) search it deterministically per seed, and pf
records its effective sample size. SVDD is also checked on the toy walk and, searched alone or
lockstep-batched, on a tiny language model."""

from __future__ import annotations

import random
import shutil

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("sklearn")

from conftest import TINY_DIGITS as TINY  # noqa: E402
from conftest import assert_same_tree, rgb_pipeline, user_pipeline  # noqa: E402

from sharpen.backends.diffusion import REALISM_FILE, load_digits_model, prepare_digits  # noqa: E402
from sharpen.core.budget import Budget  # noqa: E402
from sharpen.core.errors import BudgetError, ConfigError  # noqa: E402
from sharpen.core.meter import Usage, UsageMeter  # noqa: E402
from sharpen.core.tree import Tree  # noqa: E402
from sharpen.search.algorithms import ALGORITHMS, get_algorithm  # noqa: E402
from sharpen.search.denoise import (  # noqa: E402
    DenoiseProcess,
    decode_state,
    diversity,
    encode_state,
    problems,
    strip_states,
)
from sharpen.search.scorers import make_scorer  # noqa: E402

STEPS = 8  # reverse steps of the tests' sampler


@pytest.fixture(scope="module")
def model_dir(tiny_digits_dir):
    return tiny_digits_dir


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
    for f in ("unet/diffusion_pytorch_model.safetensors", "classifier.json", REALISM_FILE, "sharpen_digits.json",
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
    assert proc.meter.total.generated_tokens == 0  # NFE is the unit (`budget_unit`), not tokens
    for d in done[0] + done[1]:
        node = tree.nodes[d]
        assert node.terminal and node.answer in [str(c) for c in range(10)] and 0 <= node.meta["reward"] <= 1
        assert proc.answer(tree, d) == node.answer and proc.vote_key(node.answer) == node.answer
    assert proc.expand(tree, [done[0][0]], 2) == [[]]  # terminals are not extended
    assert proc.verify(tree, tree.reference) and not proc.verify(tree, None)
    rolls = proc.rollout(tree, [kids[0][0]], 3)[0]
    assert len(rolls) == 3 and all(r.num_tokens == STEPS - 1 and r.answer is not None for r in rolls)
    leaf = kids[0][0]
    for _ in range(STEPS - 2):  # step by step to x_0: the step that reaches timestep 0 goes on to x_0
        (leaf,) = proc.expand(tree, [leaf], 1)[0]
    assert tree.nodes[leaf].terminal and tree.nodes[leaf].answer is not None
    assert tree.nodes[leaf].num_tokens == 2 and tree.nodes[tree.nodes[leaf].parent].meta["t"] > 0
    before = proc.meter.total.nfe
    parent = tree.nodes[leaf].parent
    assert len(proc.expand(tree, [parent], 3)[0]) == 3  # three more last steps: one forward each
    assert proc.meter.total.nfe - before == 3  # the parent's forward is the tree's already
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
    budget = Budget(proc.meter, 3 * STEPS, unit=proc.budget_unit)
    assert len(proc.complete(tree, [0], 10, budget)[0]) == 3  # 3 rows of STEPS fit
    assert budget.spent == 3 * STEPS and budget.exhausted
    assert proc.complete(tree, [0], 1, budget) == [[]]
    report = budget.report()
    assert report["nfe"] == 3 * STEPS and report["budget_unit"] == "nfe" and report["generated_tokens"] == 0
    assert report["overshoot"] == 0
    # a token budget on the same meter sees none of it spent: the unit decides what is counted
    assert Budget(proc.meter, 5).spent == 0


def test_budget_unit_errors_and_lm_report_unchanged():
    with pytest.raises(BudgetError, match=r"denoiser forward passes \(NFE\), got 0 \(fix: --budget 400\)"):
        Budget(UsageMeter(), 0, unit="nfe")
    with pytest.raises(BudgetError, match=r"generated tokens, got -1 \(fix: --budget 1024\)"):
        Budget(UsageMeter(), -1)
    with pytest.raises(ConfigError, match="unknown budget unit 'flops'"):
        Budget(UsageMeter(), 10, unit="flops")
    meter = UsageMeter()
    b = Budget(meter, 10)
    meter.record(2, 12, 0.0)
    assert list(b.report()) == ["budget_tokens", "prompt_tokens", "generated_tokens", "calls", "seconds",
                                "verifier_tokens", "cached_tokens", "forward_tokens", "overshoot", "overshoot_bound"]
    assert b.report()["overshoot"] == 2


def test_a_valued_node_steps_on_with_the_same_forward(model):
    """x0-reward's forward at a node is the one `expand` steps it with: valuing then stepping costs
    one NFE, and gives the children a tree that never valued the node gets."""
    problem = problems("test", 1)[0]
    proc = DenoiseProcess(model, steps=STEPS)
    valued, plain = proc.new_tree(problem, seed=3), proc.new_tree(problem, seed=3)
    (a,) = proc.expand(valued, [0], 1)[0]
    (b,) = proc.expand(plain, [0], 1)[0]
    make_scorer("x0-reward", proc).score(valued, [a])
    before = proc.meter.snapshot()
    kids = proc.expand(valued, [a], 3)[0]
    assert (proc.meter.snapshot() - before).nfe == 0
    other = proc.expand(plain, [b], 3)[0]
    assert (proc.meter.snapshot() - before).nfe == 1
    assert [valued.nodes[c].meta["x"] for c in kids] == [plain.nodes[c].meta["x"] for c in other]


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
            ("beam", "x0-reward", {"width": 2, "expansions": 2}), ("svdd", "x0-reward", {"m": 3}),
            ("svdd", "x0-reward", {"n": 2, "m": 2, "alpha": 0.1}), ("svdd", "mc-reward:1", {"m": 2, "fill": False})]


@pytest.mark.parametrize("algo,spec,args", SEARCHES)
def test_search_runs_within_budget_and_same_seed_same_tree(model, algo, spec, args):
    proc = DenoiseProcess(model, steps=STEPS)
    problem = problems("test", 1, seed=4)[0]
    budget = 10 * STEPS + 8  # pf's 4 particles cost 4 NFE a step (each valued state is stepped on for free)
    tree = ALGORITHMS[algo](proc, make_scorer(spec, proc), problem, budget, seed=2, **args)
    assert tree.answer is not None and tree.nodes[tree.chosen[-1]].terminal
    assert 0 < tree.usage["nfe"] <= budget + tree.usage["overshoot_bound"]
    assert tree.usage["overshoot"] == max(0, tree.usage["nfe"] - budget)
    assert tree.usage["generated_tokens"] == 0 and tree.usage["budget_unit"] == "nfe"
    assert tree.usage["reward_calls"] > 0 and tree.meta["reward"] == "class"
    fresh = DenoiseProcess(model, steps=STEPS)
    again = ALGORITHMS[algo](fresh, make_scorer(spec, fresh), problem, budget, seed=2, **args)
    a, b = tree.to_dict(), again.to_dict()
    assert a.pop("usage")["nfe"] == b.pop("usage")["nfe"]
    assert a == b
    other = ALGORITHMS[algo](fresh, make_scorer(spec, fresh), problem, budget, seed=3, **args)
    assert other.to_dict()["nodes"] != a["nodes"]


@pytest.mark.parametrize("algo,spec,args", SEARCHES)
def test_a_tree_is_the_same_alone_or_lockstep_batched(model, algo, spec, args):
    """Four searches whose denoiser forwards and reward calls share batches (`search_problems` with
    parallel=4) get the trees, choices and spend they get one by one (the denoiser and the classifier run
    fixed-size chunks, so a row's values do not depend on its batch-mates; `assert_same_tree` compares
    values to 1e-5)."""
    from sharpen.search.collect import search_problems

    probs = problems("test", 4, seed=5)
    budget = 10 * STEPS + 8

    def run(parallel):
        proc = DenoiseProcess(model, steps=STEPS)
        trees = search_problems(proc, make_scorer(spec, proc), algo, probs, budget, seed=1, parallel=parallel,
                                algo_args=args)
        return [{**t.to_dict(), "usage": {k: v for k, v in t.usage.items() if k != "seconds"}} for t in trees], proc

    alone, proc = run(1)
    batched, _ = run(4)
    assert_same_tree(batched, alone)
    assert all(t["usage"]["nfe"] > 0 for t in alone) and proc.meter.total.nfe == sum(t["usage"]["nfe"] for t in alone)


def test_a_users_own_pipeline_searches_with_the_digits_rewards(model, model_dir, tmp_path, monkeypatch):
    """A diffusers pipeline of the user's own (here the tiny UNet saved as a DDIMPipeline, no rewards in
    its directory) loads with the digits rewards of a prepared digits-ddpm, by default the built-in one,
    and searches as that model does: the same training schedule sampled with DDPM steps, the same trees."""
    from sharpen.core.errors import ModelError

    pipe = user_pipeline(model_dir, tmp_path / "pipe")
    assert not (pipe / "classifier.json").exists()
    monkeypatch.setenv("SHARPEN_HOME", str(tmp_path / "home"))
    shutil.copytree(model_dir, tmp_path / "home" / "models" / "digits-ddpm")  # the built-in, prepared (tiny)
    user = load_digits_model(pipe)
    assert user.weight.equal(model.weight) and user.has_realism
    assert load_digits_model(pipe, rewards=model_dir).weight.equal(model.weight)
    problem = problems("test", 1, seed=3)[0]
    trees = []
    for m in (model, user):
        proc = DenoiseProcess(m, steps=STEPS)
        trees.append(ALGORITHMS["svdd"](proc, make_scorer("x0-reward", proc), problem, 40, seed=1, m=3).to_dict())
    assert trees[0]["nodes"] == trees[1]["nodes"]
    with pytest.raises(ModelError, match="holds no digits rewards"):
        load_digits_model(pipe, rewards=pipe)


@pytest.mark.parametrize("make,needle", [
    (lambda d, out: user_pipeline(d, out, "DDPMScheduler", prediction_type="v_prediction"), "prediction_type"),
    (lambda d, out: user_pipeline(d, out, "PNDMScheduler"), "scheduler PNDMScheduler"),
    (lambda d, out: rgb_pipeline(out), "makes 3x16x16"),
])
def test_a_pipeline_the_digits_rewards_cannot_read_is_refused_in_one_line(model_dir, tmp_path, make, needle):
    from sharpen.backends.models import check_pipeline
    from sharpen.core.errors import ModelError

    pipe = make(model_dir, tmp_path / "pipe")
    with pytest.raises(ModelError, match=needle) as e:
        check_pipeline(pipe)
    assert "fix:" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ModelError, match=needle):
        load_digits_model(pipe, rewards=model_dir)


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


def _candidates(tree, nid, m):
    """The candidates drawn together with `nid`: its siblings, or at the root (whose children are the
    x_T draws of every chain, m a chain) its m."""
    kids = tree.nodes[tree.nodes[nid].parent].children
    if tree.nodes[nid].parent != 0:
        return kids
    i = kids.index(nid)
    return kids[i - i % m: i - i % m + m]


def test_svdd_keeps_the_best_valued_candidate_and_answers_the_best_chain(model):
    """alpha = 0: every node of a chain is the best-valued of the candidates drawn with it; the
    answer is the best-valued finished chain; `fill` runs chains while the budget covers one."""
    proc = DenoiseProcess(model, steps=STEPS)
    problem = problems("test", 1, seed=5)[0]
    m = 3
    fixed = ALGORITHMS["svdd"](proc, make_scorer("x0-reward", proc), problem, 1000, seed=1, m=m, fill=False, n=1)
    # a chain costs m NFE a step: m values of the x_T draws, m of each inner step's draws, m forwards
    # of the draws that go on to x_0 (a kept state's forward is the one that steps it on)
    assert len(fixed.meta["chains"]) == 1 and fixed.usage["nfe"] == m * STEPS
    budget = 4 * m * STEPS
    tree = ALGORITHMS["svdd"](proc, make_scorer("x0-reward", proc), problem, budget, seed=1, m=m)
    chains = tree.meta["chains"]
    assert len(chains) == 4 and all(tree.nodes[c].terminal for c in chains)
    for end in chains:
        path = [n.id for n in tree.path(end)]  # the root excluded
        assert len(path) == STEPS  # x_T, STEPS - 2 inner states, x_0 (timestep 0 folded into the last step)
        for nid in path:
            cands = _candidates(tree, nid, m)
            # every step draws m, but the very last of the budget: planned at expected costs, it keeps
            # a row's margin for valuing
            assert len(cands) == m or (end == chains[-1] and nid == end and len(cands) == m - 1)
            assert tree.nodes[nid].score == max(tree.nodes[c].score for c in cands)
    assert tree.chosen[-1] == max(chains, key=lambda c: tree.nodes[c].score)
    assert budget - m < tree.usage["nfe"] <= budget


def test_svdd_soft_selection_differs_from_argmax_and_options_are_checked(model):
    proc = DenoiseProcess(model, steps=STEPS)
    problem = problems("test", 1, seed=6)[0]
    hard = ALGORITHMS["svdd"](proc, make_scorer("x0-reward", proc), problem, 6 * STEPS, seed=0, m=6, fill=False)
    soft = [ALGORITHMS["svdd"](proc, make_scorer("x0-reward", proc), problem, 6 * STEPS, seed=0, m=6, fill=False,
                               alpha=a) for a in (0.02, 1.0)]
    assert all(t.nodes[t.root.children[0]].meta["x"] == hard.nodes[hard.root.children[0]].meta["x"] for t in soft)
    assert any(t.chosen != hard.chosen for t in soft)  # the same draws, another one kept
    entry = get_algorithm("svdd")
    for bad in ({"alpha": -1}, {"alpha": "nan"}, {"m": 0}, {"n": 0}, {"k": 2}):
        with pytest.raises(ConfigError, match=r"^algorithm svdd.*\(fix: .*\)$"):
            entry.parse(bad)
    with pytest.raises(ConfigError, match=r"n=8 x m=8 = 64 rows"):
        entry.parse({"n": 8, "m": 8}, budget=50)


def test_svdd_on_the_toy_walk_steers_towards_the_target():
    """On a process with steps of text-like moves (the toy walk), SVDD is width-1 beam search per
    chain: it beats one unguided walk, stays within a row of its budget and repeats per seed."""
    from sharpen.search.toy import DistanceScorer, RandomWalkProcess, make_problems

    proc = RandomWalkProcess(horizon=6)
    probs = make_problems(40, seed=2, horizon=6)
    base = sum(proc.verify(t, t.nodes[proc.complete(t, [0], 1)[0][0]].answer)
               for t in (proc.new_tree(p, seed=i) for i, p in enumerate(probs))) / len(probs)
    hits = 0
    for i, p in enumerate(probs):
        tree = ALGORITHMS["svdd"](proc, DistanceScorer(proc, noise=0.1), p, 80, seed=i, n=2, m=3, alpha=0.05)
        assert tree.usage["generated_tokens"] <= 80 + proc.step_tokens and "budget_unit" not in tree.usage
        hits += proc.verify(tree, tree.answer)
        fresh = RandomWalkProcess(horizon=6)
        again = ALGORITHMS["svdd"](fresh, DistanceScorer(fresh, noise=0.1), p, 80, seed=i,
                                   n=2, m=3, alpha=0.05)
        assert again.to_dict()["nodes"] == tree.to_dict()["nodes"]
    assert hits / len(probs) > base + 0.2, (hits / len(probs), base)


@pytest.mark.slow
def test_svdd_tree_is_the_same_alone_or_lockstep_batched(tiny_model_dir):
    """Four searches sharing the language model's batched calls get the trees they get one by one."""
    from conftest import assert_same_tree

    from sharpen.backends.hf import HFBackend
    from sharpen.core.tasks import load_task
    from sharpen.search.collect import search_problems
    from sharpen.search.process import LMProcess

    task = load_task("gym:chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1})
    probs = task.problems("test", 4)

    def run(parallel):
        backend = HFBackend(tiny_model_dir, seed=0, max_batch=64)
        process = LMProcess(backend, task, temperature=1.0, step_tokens=5, rollout_tokens=10, max_depth=3)
        scorer = make_scorer("oracle:2", process, collect=True)
        trees = search_problems(process, scorer, "svdd", probs, 60, seed=1, parallel=parallel,
                                algo_args={"n": 2, "m": 2, "alpha": 0.5})
        return [{**t.to_dict(), "usage": {k: v for k, v in t.usage.items() if k not in ("seconds", "cached_tokens")}}
                for t in trees]

    for a, b in zip(run(4), run(1), strict=True):
        assert_same_tree(a, b)
        assert a["usage"]["generated_tokens"] <= 60 + 10


def test_pf_records_its_effective_sample_size(model):
    proc = DenoiseProcess(model, steps=STEPS)
    tree = ALGORITHMS["pf"](proc, make_scorer("x0-reward", proc), problems("test", 1)[0], 6 * STEPS, seed=0, n=4,
                            temperature=0.05)
    ess = tree.meta["ess"]
    assert len(ess) == len(tree.meta["particles"]) == len(tree.meta["resampled"])
    live = [e for e in ess if e is not None]
    assert live and all(1.0 <= e <= 4.0 for e in live) and ess[-1] is None  # after the last step all are done
    # resampled exactly where the ESS fell below half of the unfinished particles (all 4 until the end)
    assert [r for r, e in zip(tree.meta["resampled"], ess, strict=True) if e is not None] == [e < 2.0 for e in live]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pf_keeps_the_best_valued_x0_not_a_class_vote(model, seed):
    """An image's answer is only the class the reward model sees; a weighted vote on a denoiser keeps
    the heaviest x_0 (the best-valued), where summing weights by class could keep a worse one."""
    proc = DenoiseProcess(model, steps=STEPS)
    problem = problems("test", 1)[0]
    tree = ALGORITHMS["pf"](proc, make_scorer("x0-reward", proc), problem, 8 * STEPS, seed=seed, n=4,
                            temperature=0.5, fill=True)
    finals = [i for i, n in enumerate(tree.nodes) if n.terminal]
    assert len(finals) >= 4 and tree.chosen[-1] in finals
    best = max(tree.nodes[i].meta["reward"] for i in finals)
    assert tree.nodes[tree.chosen[-1]].meta["reward"] == best
    with pytest.raises(ConfigError, match="images are selected by reward"):
        from sharpen.search.spec import check_algorithm

        check_algorithm("vote", "digits")


def test_realism_and_product_rewards(model):
    import torch

    from sharpen.backends.diffusion import digits_data

    x, _ = digits_data()
    real = model.realism(x[:50])
    noise = model.realism(torch.rand(50, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    assert real.min() >= 0 and real.max() <= 1 and real.mean() > 0.3 > noise.max()
    problem = problems("test", 1)[0]
    trees = {}
    for reward in ("class", "realism", "product"):
        proc = DenoiseProcess(model, steps=STEPS, reward=reward)
        tree = proc.new_tree(problem, seed=4)
        trees[reward] = tree.nodes[proc.complete(tree, [0], 1)[0][0]]
        assert tree.meta["reward"] == reward and 0 <= trees[reward].meta["reward"] <= 1
        assert make_scorer("x0-reward", proc).score(tree, [0]) == [pytest.approx(proc.prior_reward)]
    assert len({n.meta["x"] for n in trees.values()}) == 1  # the reward changes no sample
    r = {k: n.meta["reward"] for k, n in trees.items()}
    assert r["product"] == pytest.approx(r["class"] * r["realism"], abs=2e-6)
    with pytest.raises(ConfigError, match=r"unknown reward 'pretty' \(fix: one of class, realism, product\)"):
        DenoiseProcess(model, steps=STEPS, reward="pretty")


def test_a_preparation_without_the_realism_model_loads_and_refuses_only_realism(model_dir, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(model_dir, old)
    (old / REALISM_FILE).unlink()
    m = load_digits_model(old)
    proc = DenoiseProcess(m, steps=STEPS)  # the class reward needs only the classifier
    tree = proc.new_tree(problems("test", 1)[0], seed=0)
    assert proc.complete(tree, [0], 1)[0]
    for reward in ("realism", "product"):
        with pytest.raises(ConfigError, match=r"prepared without the realism .*--force") as e:
            DenoiseProcess(m, steps=STEPS, reward=reward)
        assert "\n" not in str(e.value)
    with pytest.raises(Exception, match="realism_components"):
        prepare_digits(tmp_path / "bad", realism_components=64)


def test_diversity_is_the_mean_pairwise_distance_within_a_class():
    import torch

    def tree(target, x):
        t = Tree(f"p{target}", "q", reference=str(target))
        if x is not None:
            node = t.add(0, step="x0", terminal=True, answer=str(target), meta={"x": encode_state(x)})
            t.chosen = [node.id]
        return t

    z, one = torch.zeros(1, 8, 8), torch.ones(1, 8, 8)
    assert diversity([tree(3, z), tree(3, z)]) == 0  # collapse: one image per class
    assert diversity([tree(3, z), tree(5, one)]) is None  # no class with two
    # class 3: three images, pairwise distances 8, 8, 0 -> mean 16/3; class 5: one pair at 4
    half = torch.full((1, 8, 8), 0.5)
    d = diversity([tree(3, z), tree(3, one), tree(3, one), tree(5, z), tree(5, half), tree(5, None)])
    assert d == pytest.approx((16 / 3 + 4) / 2)
