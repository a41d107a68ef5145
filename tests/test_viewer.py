"""The static tree viewer: one self-contained HTML file holding every tree, no network."""

from __future__ import annotations

import json
import re

import pytest

from sharpen.core.errors import ConfigError
from sharpen.core.io import write_jsonl
from sharpen.core.tree import Tree
from sharpen.report.viewer import embed_json, render_trees_html, write_viewer
from sharpen.search.algorithms import ALGORITHMS
from sharpen.search.collect import label_terminals
from sharpen.search.toy import DistanceScorer, RandomWalkProcess, make_problems


def toy_trees() -> list[Tree]:
    proc = RandomWalkProcess(horizon=5)
    scorer = DistanceScorer(proc)
    trees = []
    for i, p in enumerate(make_problems(3, seed=7, horizon=5)):
        for algo in ("mcts", "beam", "pf"):
            tree = ALGORITHMS[algo](proc, scorer, p, 40, seed=i)
            tree.problem_id = f"{p.id}-{algo}"
            label_terminals(proc, tree)
            trees.append(tree)
    return trees


def embedded(html: str) -> list[dict]:
    m = re.search(r'<script type="application/json" id="trees-data">(.*?)</script>', html, re.S)
    assert m, "no embedded trees"
    return json.loads(m.group(1))


def test_viewer_holds_every_tree_and_needs_no_network(tmp_path):
    trees = toy_trees()
    src = tmp_path / "trees.jsonl"
    write_jsonl(src, [t.to_dict() for t in trees])
    out = write_viewer(src, tmp_path / "view" / "trees.html")
    assert out == tmp_path / "view" / "trees.html" and out.is_file()
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    for t in trees:
        assert t.problem_id in html
        assert t.chosen, t.problem_id
    steps = {n.step for t in trees for n in t.nodes if n.step}
    assert steps and all(json.dumps(s)[1:-1] in html for s in steps)
    # nothing loaded from elsewhere: no URLs at all, no external scripts, styles or images
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"<(script|link|img|iframe)[^>]*\b(src|href)\s*=", html, re.I)
    assert "@import" not in html
    assert [Tree.from_dict(d) for d in embedded(html)] == trees
    assert not list(out.parent.glob(".*.tmp"))  # atomic write left nothing behind


def test_script_breaking_text_is_escaped():
    tree = Tree("p</script><!--", "what is 1 < 2 & 3 > 2? </script>", reference="</b>")
    tree.add(0, step="</script><script>alert(1)</script>", terminal=True, answer="&amp;", score=float("nan"))
    tree.chosen = [1]
    html = render_trees_html([tree], "title </title><script>")
    assert html.count("</script>") == 2  # the data element and the drawing script, nothing from the data
    assert "<title>title &lt;/title&gt;&lt;script&gt;</title>" in html
    (back,) = embedded(html)
    assert back["nodes"][1]["step"] == "</script><script>alert(1)</script>"
    assert back["problem_id"] == "p</script><!--"
    assert back["nodes"][1]["score"] is None  # NaN is not JSON: written as null
    assert json.loads(embed_json({"s": "a</b>&c"})) == {"s": "a</b>&c"}


def test_placeholders_in_data_are_not_substituted():
    tree = Tree("p", "__TITLE__ and __DATA__")
    (back,) = embedded(render_trees_html([tree], "__DATA__"))
    assert back["question"] == "__TITLE__ and __DATA__"


def test_bad_inputs_raise_typed_errors(tmp_path):
    with pytest.raises(ConfigError):
        write_viewer(tmp_path / "missing.jsonl", tmp_path / "x.html")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ConfigError):
        write_viewer(tmp_path / "empty.jsonl", tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()
