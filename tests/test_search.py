"""Search algorithms on the toy random walk (fast, no model), and once on a tiny language model."""

from __future__ import annotations

import pytest

from sharpen.core.errors import ConfigError
from sharpen.search.algorithms import ALGORITHMS, NEEDS_SCORER, get_algorithm
from sharpen.search.algorithms.mcts import step_children
from sharpen.search.scorers import make_scorer
from sharpen.search.toy import DistanceScorer, RandomWalkProcess, make_problems

H = 6
PROBLEMS = make_problems(50, seed=1, horizon=H)


def random_accuracy(proc: RandomWalkProcess) -> float:
    hits = 0
    for i, p in enumerate(PROBLEMS):
        tree = proc.new_tree(p, seed=i)
        (c,) = proc.complete(tree, [0], 1)[0]
        hits += proc.verify(tree, tree.nodes[c].answer)
    return hits / len(PROBLEMS)


@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_each_algorithm_beats_random_sampling(algo):
    proc = RandomWalkProcess(horizon=H)
    baseline = random_accuracy(proc)
    scorer = DistanceScorer(proc)
    budget = 10 * H
    hits = 0
    for i, p in enumerate(PROBLEMS):
        tree = ALGORITHMS[algo](proc, scorer, p, budget, seed=i)
        assert tree.algo == algo and tree.usage["budget_tokens"] == budget
        hits += proc.verify(tree, tree.answer)
        if tree.answer is not None and tree.chosen:
            assert proc.answer(tree, tree.chosen[-1]) == tree.answer
    assert hits / len(PROBLEMS) > baseline + 0.1, (algo, hits / len(PROBLEMS), baseline)


SCORER_SPECS = ["distance", "rollout:3", "rollout:2:pool", "oracle:2"]


@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_budget_never_exceeded_by_more_than_one_row(algo):
    proc = RandomWalkProcess(horizon=H)
    for spec in SCORER_SPECS:
        scorer = make_scorer(spec, proc, collect=True)
        for budget in (1, 5, 17, 40, 93):
            for seed in range(3):
                tree = ALGORITHMS[algo](proc, scorer, PROBLEMS[seed], budget, seed=seed)
                spent = tree.usage["generated_tokens"]
                assert spent <= budget + proc.rollout_tokens, (spent, budget, spec)
                if algo in ("beam", "pf", "mcts") and spec == "distance":
                    assert spent <= budget + proc.step_tokens, (spent, budget)
                assert spent == sum(n.num_tokens for n in tree.nodes) + _scoring_tokens(tree, spec)


def _scoring_tokens(tree, spec):
    """Tokens scorers spent, recomputed from the tree: what the meter says must be in the tree."""
    if spec == "distance":
        return sum(n.score is not None for n in tree.nodes)
    return sum(H - n.meta.get("t", 0) for n in tree.nodes for _ in n.meta.get("rollouts", []))


@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_same_seed_same_tree(algo):
    proc = RandomWalkProcess(horizon=H)
    scorer = make_scorer("rollout:2", proc)
    a = ALGORITHMS[algo](proc, scorer, PROBLEMS[0], 60, seed=5).to_dict()
    fresh = RandomWalkProcess(horizon=H)
    b = ALGORITHMS[algo](fresh, make_scorer("rollout:2", fresh), PROBLEMS[0], 60, seed=5)
    a.pop("usage"), (bd := b.to_dict()).pop("usage")
    assert a == bd
    others = [ALGORITHMS[algo](proc, scorer, PROBLEMS[0], 60, seed=s).to_dict() for s in (6, 7)]
    assert any(o["nodes"] != a["nodes"] for o in others)


class SpyProcess(RandomWalkProcess):
    """Records every node that is asked to grow, and whether it was already finished."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.grew_finished: list[int] = []

    def expand(self, tree, node_ids, k, budget=None):
        self.grew_finished += [n for n in node_ids if tree.nodes[n].terminal]
        return super().expand(tree, node_ids, k, budget)


def test_particle_filter_never_revives_finished_particles():
    # early_stop: walks end on reaching the target, so particles finish at different steps and the
    # resampling (forced every step) always sees finished particles beside unfinished ones
    proc = SpyProcess(horizon=H, p_good=0.6, early_stop=True)
    scorer = DistanceScorer(proc, noise=0.3)
    resampled = mixed = 0
    for i, p in enumerate(PROBLEMS[:30]):
        tree = ALGORITHMS["pf"](proc, scorer, p, 400, seed=i, n=6, temperature=0.1, ess_threshold=1.0)
        snaps = tree.meta["particles"]
        resampled += sum(tree.meta["resampled"])
        for before, after in zip(snaps, snaps[1:], strict=False):
            live = {x for x in before if not tree.nodes[x].terminal}
            for slot, (x, y) in enumerate(zip(before, after, strict=True)):
                if tree.nodes[x].terminal:
                    assert y == x, f"slot {slot}: finished particle {x} replaced by {y}"
                else:
                    # an unfinished slot holds a one-step extension of a live particle (its own, or
                    # one resampled from a live slot), or a live particle the budget left unextended:
                    # never a finished particle
                    node = tree.nodes[y]
                    assert node.parent in live or y in live, f"slot {slot}: {y} does not grow a live particle"
                    # a slot finishes only by its own step: a just-finished particle is not resampled
                    assert not node.terminal or node.parent == x, f"slot {slot}: finished particle {y} copied in"
            fin = [tree.nodes[x].terminal for x in before]
            mixed += any(fin) and not all(fin)
        counts = [sum(tree.nodes[x].terminal for x in s) for s in snaps]
        assert counts == sorted(counts)  # the finished set only grows
    assert proc.grew_finished == []  # no finished particle was ever extended
    assert resampled > 0 and mixed > 0


def test_mcts_visit_counts_add_up():
    for evaluate in ("scorer", "rollout"):
        proc = RandomWalkProcess(horizon=H)
        scorer = DistanceScorer(proc)
        for i, p in enumerate(PROBLEMS[:10]):
            tree = ALGORITHMS["mcts"](proc, scorer, p, 80, seed=i, k=3, c_puct=1.5, evaluate=evaluate)
            assert tree.root.visits > 0
            for node in tree.nodes:
                kids = step_children(tree, node.id)
                if not kids:
                    continue
                own = 0 if node.id == tree.root.id else 1
                assert node.visits == own + sum(tree.nodes[c].visits for c in kids), (evaluate, node.id)
                assert 0.0 <= node.q <= 1.0
            if evaluate == "rollout":
                assert any(n.meta.get("rollout") for n in tree.nodes)


def test_mcts_final_by_value_and_config_errors():
    """final="value" descends from the root to the child with the best Q, final="visits" to the most
    visited one; where that descent stops short of a finished solution, the best-scored finished
    solution is taken. The final rule does not change the search, only the chosen path."""

    def obeys(tree, key) -> bool:
        def best(n):  # the children the rule may take (ties: any of them)
            kids = step_children(tree, n)
            top = max(key(tree.nodes[c]) for c in kids)
            return [c for c in kids if key(tree.nodes[c]) == top]

        def stops_short(n) -> bool:
            return not tree.nodes[n].terminal and (not step_children(tree, n) or any(map(stops_short, best(n))))

        n = tree.root.id
        for c in tree.chosen:
            if c not in best(n):  # left the rule: only for the fallback
                end = tree.nodes[tree.chosen[-1]]
                top = max(t.score or 0.0 for t in tree.terminals())
                return stops_short(n) and end.terminal and (end.score or 0.0) == top
            n = c
        return tree.nodes[n].terminal

    proc = RandomWalkProcess(horizon=3)  # at budget 120 the search reaches finished walks
    differ = 0
    for i, p in enumerate(make_problems(30, seed=1, horizon=3)):
        by_value = ALGORITHMS["mcts"](proc, DistanceScorer(proc), p, 120, seed=i, final="value")
        by_visits = ALGORITHMS["mcts"](proc, DistanceScorer(proc), p, 120, seed=i)
        assert by_value.to_dict()["nodes"] == by_visits.to_dict()["nodes"]  # the same search
        assert obeys(by_value, lambda n: n.value or 0.0), (i, by_value.chosen)  # Q, else the score
        assert obeys(by_visits, lambda n: n.visits), (i, by_visits.chosen)
        for tree in (by_value, by_visits):
            assert tree.answer is not None and tree.answer == proc.answer(tree, tree.chosen[-1])
        differ += by_value.chosen != by_visits.chosen
    assert differ > 0  # the two rules were told apart
    proc = RandomWalkProcess(horizon=H)
    with pytest.raises(ConfigError):
        ALGORITHMS["mcts"](proc, DistanceScorer(proc), PROBLEMS[0], 60, seed=0, evaluate="dream")


def test_oracle_refused_without_collect():
    proc = RandomWalkProcess(horizon=H)
    with pytest.raises(ConfigError, match="--collect"):
        make_scorer("oracle", proc)
    oracle = make_scorer("oracle:3", proc, collect=True)
    tree = ALGORITHMS["beam"](proc, oracle, PROBLEMS[0], 2000, seed=0)
    assert proc.verify(tree, tree.answer)  # with ground truth beam search cannot miss at this budget


def test_factory_and_registry_errors():
    proc = RandomWalkProcess(horizon=H)
    for bad in ("nope", "rollout:x", "rollout:0", "prm", "self"):
        with pytest.raises(ConfigError):
            make_scorer(bad, proc)
    assert make_scorer("none", proc) is None
    with pytest.raises(ConfigError):
        get_algorithm("dfs")
    for algo in NEEDS_SCORER:
        with pytest.raises(ConfigError, match="scorer"):
            ALGORITHMS[algo](proc, None, PROBLEMS[0], 30, seed=0)
    assert ALGORITHMS["vote"](proc, None, PROBLEMS[0], 30, seed=0).answer is not None


def test_search_modules_do_not_import_torch():
    import ast
    from pathlib import Path

    import sharpen.search.algorithms

    for path in Path(sharpen.search.algorithms.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(("torch", "transformers", "sharpen.backends")), (path, name)


def test_mcts_widens_when_every_child_is_terminal():
    """One-step problems: MCTS keeps spending its budget by widening the root, up to max_children."""
    from sharpen.search.algorithms.mcts import mcts, step_children
    from sharpen.search.toy import DistanceScorer, RandomWalkProcess, make_problems

    proc = RandomWalkProcess(horizon=1)
    problem = make_problems(1, horizon=1, seed=0)[0]
    tree = mcts(proc, DistanceScorer(proc), problem, 40, seed=0, k=2, max_children=8)
    assert len(step_children(tree, 0)) == 8
    assert tree.root.visits == sum(tree.nodes[c].visits for c in step_children(tree, 0))


@pytest.mark.parametrize("algo", ["pf", "beam"])
def test_fill_spends_the_budget_that_a_fixed_count_leaves(algo):
    # with `fill`, finished searches restart from the root while budget is left: spend goes up to the
    # budget (within one row), where the fixed particle / beam count stops short of it
    proc = RandomWalkProcess(horizon=H, early_stop=True)
    scorer = DistanceScorer(proc, noise=0.3)
    budget, fixed, filled = 120, [], []
    for i, p in enumerate(PROBLEMS[:20]):
        a = ALGORITHMS[algo](proc, scorer, p, budget, seed=i, **{"n" if algo == "pf" else "width": 2})
        b = ALGORITHMS[algo](proc, scorer, p, budget, seed=i, fill=True, **{"n" if algo == "pf" else "width": 2})
        fixed.append(a.usage["generated_tokens"])
        filled.append(b.usage["generated_tokens"])
        assert b.usage["generated_tokens"] <= budget + proc.step_tokens
        if b.answer is not None:
            assert proc.answer(b, b.chosen[-1]) == b.answer
        if algo == "pf":
            restarts = b.meta["restarts"]
            assert restarts == sorted(restarts) and len(b.meta["particles"]) == len(b.meta["resampled"])
    assert sum(filled) > 1.5 * sum(fixed), (sum(filled), sum(fixed))
    assert min(filled) >= budget - 2 * proc.step_tokens - 2, filled


def test_omega_samples_what_the_budget_planned():
    """omega starts as many samples as `plan` covers with their scoring (each sample costs a step
    and a judgement here), not `samples` regardless: at 10 tokens, 5 of the 16 asked for."""
    from sharpen.search.algorithms.omega import omega

    proc = RandomWalkProcess(horizon=H)
    tree = omega(proc, DistanceScorer(proc), PROBLEMS[0], 10, seed=0, samples=16)
    assert len(tree.root.children) == 5
    assert all(tree.nodes[c].score is not None for c in tree.root.children if tree.nodes[c].terminal)
    wide = omega(proc, DistanceScorer(proc), PROBLEMS[0], 400, seed=0, samples=16)
    assert len(wide.root.children) == 16  # a budget that covers them all: every sample asked for


@pytest.mark.parametrize("algo,options", [("pf", {"n": 61}), ("mcts", {"k": 61}), ("omega", {"samples": 100}),
                                          ("bon", {"batch": 61}), ("beam", {"width": 8, "expansions": 8})])
def test_row_counts_over_the_budget_fail_before_any_work(tmp_path, algo, options):
    """Every row costs at least one token: a count option (or a product of them) over the budget is a
    one-line ConfigError from `search_problems` (what `sharpen search`, `sweep` and `run` call) before
    any tree is searched or written."""
    from sharpen.search.collect import search_problems

    proc = RandomWalkProcess(horizon=H)
    out = tmp_path / "trees.jsonl"
    with pytest.raises(ConfigError, match=r"at one token a row at least \(fix: .*\)$") as e:
        search_problems(proc, DistanceScorer(proc), algo, PROBLEMS[:2], 60, out_jsonl=out, algo_args=options)
    assert "\n" not in str(e.value) and not out.exists() and proc.meter.total.generated_tokens == 0
    # within the budget the same options run
    fits = {k: max(1, v // 8) for k, v in options.items()}
    assert len(search_problems(proc, DistanceScorer(proc), algo, PROBLEMS[:1], 60, algo_args=fits)) == 1
