"""A static, self-contained HTML viewer for search trees: one file, no network.

The trees are embedded as JSON in a `<script type="application/json">` tag and drawn by a short
inline script as nested lists: pick a problem, see its question, reference, final answer,
correctness and tokens spent, and its tree of steps with each node's score, value (Q), visits,
terminal answer and correctness; the chosen path (`tree.chosen`) is highlighted. The viewer is a
pure function of the trees, so it can be rebuilt from any `trees.jsonl` at any time.

Trees of the denoising process (`sharpen.search.denoise`, a DDPM after Ho et al. 2020, arXiv
2006.11239) hold an 8x8 image state in a node's `meta["x"]`: each such node gets a thumbnail (a PNG
data URI from `sharpen.report.images`, embedded once per node in a second JSON element, in place
of the float16 state in the embedded tree), its reward as a badge, and the details panel shows the
chosen x_0 large (the same PNG, scaled up in the browser without smoothing); clicking a thumbnail
shows that node's image there instead. Trees without image states draw exactly as before.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path
from typing import Any

from sharpen.core.errors import ConfigError
from sharpen.core.io import atomic_write_text, read_records
from sharpen.core.tree import Tree


def _finite(obj: Any) -> Any:
    """NaN and infinities become null: `JSON.parse` rejects them."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def embed_json(obj: Any) -> str:
    """JSON safe inside a `<script>` element: `<`, `>` and `&` (which only occur inside JSON strings)
    are written as \\u escapes, so no `</script>` or `<!--` in a step can end the element early."""
    text = json.dumps(_finite(obj), ensure_ascii=False, allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _without_states(tree: dict[str, Any], imaged: dict[int, str]) -> dict[str, Any]:
    """The tree's dict with the image states of the nodes in `imaged` left out (their PNG replaces them)."""
    if imaged:
        for n in tree["nodes"]:
            if n["id"] in imaged:
                n["meta"] = {k: v for k, v in n["meta"].items() if k != "x"}
    return tree


def render_trees_html(trees: list[Tree], title: str) -> str:
    """One static HTML page drawing `trees` (a problem picker and the chosen problem's tree), with a
    thumbnail at every node holding an image state (`sharpen.report.images.tree_images`)."""
    from sharpen.report.images import tree_images

    images = [tree_images(t) for t in trees]
    data = [_without_states(t.to_dict(), imgs) for t, imgs in zip(trees, images, strict=True)]
    pictures = ""
    if any(images):  # a second data element only where there are pictures
        pictures = '<script type="application/json" id="images-data">' + embed_json(
            [{str(k): v for k, v in imgs.items()} for imgs in images]) + "</script>\n"
    fill = {"__TITLE__": html.escape(title), "__DATA__": embed_json(data), "__IMAGES__\n": pictures}
    return re.sub("__TITLE__|__DATA__|__IMAGES__\n", lambda m: fill[m.group(0)], _PAGE)  # one pass


def write_viewer(trees_jsonl: str | Path, out_html: str | Path) -> Path:
    """Read trees (one per JSONL line, a torn last line skipped) and write the viewer atomically.
    A file that is not a trees file (not JSON lines, not trees, empty) raises a one-line TaskError
    or ConfigError naming the file and line, and no HTML is written."""
    trees_jsonl, out_html = Path(trees_jsonl), Path(out_html)
    fix = "point at the trees.jsonl that `sharpen search` wrote"
    if not trees_jsonl.is_file():
        raise ConfigError(f"no trees file at {trees_jsonl} (fix: {fix})")
    trees = list(read_records(trees_jsonl, Tree.from_dict, "a search tree", fix))
    if not trees:
        raise ConfigError(f"{trees_jsonl} holds no trees (fix: run a search first, or pick another file)")
    atomic_write_text(out_html, render_trees_html(trees, f"sharpen trees: {trees_jsonl.name}"))
    return out_html


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { padding: 10px 16px; background: #263238; color: #fff; display: flex; gap: 16px; align-items: center;
         flex-wrap: wrap; }
header h1 { font-size: 16px; margin: 0; }
header select { max-width: 60vw; font-size: 14px; }
header label { font-size: 13px; }
main { padding: 12px 16px; }
#info { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px 12px; margin-bottom: 12px; }
#info dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 0; }
#info dt { font-weight: 600; color: #555; }
#info dd { margin: 0; white-space: pre-wrap; word-break: break-word; }
.ok { color: #1b7f2a; font-weight: 600; } .bad { color: #b3261e; font-weight: 600; }
ul.tree, ul.tree ul { list-style: none; margin: 0; padding-left: 18px; }
ul.tree { padding-left: 0; }
ul.tree ul { border-left: 1px dashed #bbb; }
ul.tree li { margin: 2px 0; }
.node { display: inline-flex; gap: 6px; align-items: baseline; padding: 1px 6px; border: 1px solid #ddd;
        border-radius: 4px; background: #fff; max-width: 95%; }
.node.chosen { background: #fff3c4; border-color: #e0a800; font-weight: 600; }
.node.terminal { border-style: double; border-width: 3px; }
.node .id { color: #888; font-size: 12px; }
.node .step { font-family: ui-monospace, monospace; white-space: pre; overflow: hidden; text-overflow: ellipsis;
              max-width: 60ch; }
.badge { font-size: 12px; color: #444; background: #eceff1; border-radius: 3px; padding: 0 4px; white-space: nowrap; }
.badge.ans { background: #e3f2fd; }
.toggle { cursor: pointer; user-select: none; color: #666; width: 1em; display: inline-block; }
li.collapsed > ul { display: none; }
#legend { font-size: 12px; color: #555; margin: 0 0 8px; }
#empty { color: #888; }
#info.pics { display: flex; gap: 20px; align-items: flex-start; }
#info.pics dl { flex: 1; }
#big { margin: 0; font-size: 12px; color: #555; text-align: center; max-width: 200px; }
#big img { display: block; width: 160px; height: 160px; margin: 0 auto 4px; image-rendering: pixelated;
           border: 1px solid #bbb; }
#big figcaption { white-space: pre-line; }
.node.pic { align-items: center; }
.node img.thumb { width: 32px; height: 32px; image-rendering: pixelated; border: 1px solid #ccc; cursor: zoom-in; }
</style>
</head>
<body>
<header>
<h1>__TITLE__</h1>
<select id="pick" aria-label="problem"></select>
<label><input type="checkbox" id="only"> chosen path only</label>
</header>
<main>
<div id="info"></div>
<p id="legend">highlighted: chosen path &middot; double border: terminal &middot; s = scorer value,
Q = mean backed-up value, n = visits &middot; &#10003;/&#10007; = verified answer &middot; click &#9656; to fold;
hover a step for its full text<span id="legend-pics" hidden> &middot; thumbnail: the node's image (pixels
-1..1 drawn white..black, one scale for all), r = reward of x_0, pred = class of the predicted x_0; click a
thumbnail to show it large</span></p>
<ul class="tree" id="tree"></ul>
</main>
<script type="application/json" id="trees-data">__DATA__</script>
__IMAGES__
<script>
(function () {
  "use strict";
  var trees = JSON.parse(document.getElementById("trees-data").textContent);
  var picsEl = document.getElementById("images-data");
  var images = picsEl ? JSON.parse(picsEl.textContent) : [];  // per tree: {node id: PNG data URI}
  if (picsEl) document.getElementById("legend-pics").hidden = false;
  var pick = document.getElementById("pick"), only = document.getElementById("only");
  var MAX = 90;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function fmt(x) { return (x === null || x === undefined) ? "-" : (+x).toFixed(3); }
  function mark(c) { return c === true ? "\\u2713" : c === false ? "\\u2717" : ""; }
  function trunc(s) { s = s.replace(/\\n/g, " \\u21b5 "); return s.length > MAX ? s.slice(0, MAX - 1) + "\\u2026" : s; }

  trees.forEach(function (t, i) {
    var o = el("option", null, (t.correct === true ? "\\u2713 " : t.correct === false ? "\\u2717 " : "") +
      t.problem_id + (t.algo ? " [" + t.algo + "]" : "") + ": " + trunc(t.question || ""));
    o.value = i;
    pick.appendChild(o);
  });

  function info(t) {
    var box = document.getElementById("info"), dl = el("dl");
    box.textContent = "";
    function row(k, v, cls) { dl.appendChild(el("dt", null, k)); dl.appendChild(el("dd", cls || null, v)); }
    row("problem", t.problem_id + (t.algo ? "  (algorithm: " + t.algo + ")" : ""));
    row("question", t.question);
    row("reference", t.reference === null ? "-" : t.reference);
    row("final answer", t.answer === null ? "(none)" : t.answer);
    row("correct", t.correct === true ? "\\u2713 correct" : t.correct === false ? "\\u2717 wrong" : "not verified",
        t.correct === true ? "ok" : t.correct === false ? "bad" : null);
    var u = t.usage || {}, parts = [];
    ["generated_tokens", "nfe", "reward_calls", "budget_tokens", "prompt_tokens", "calls", "seconds"].forEach(function (k) {
      if (u[k] === undefined) return;
      if (k === "generated_tokens" && u.nfe && !u[k]) return;  // a denoising process spends forwards, not tokens
      var name = k === "budget_tokens" && u.budget_unit ? "budget " + u.budget_unit : k.replace("_", " ");
      parts.push(name + " " + (k === "seconds" ? (+u[k]).toFixed(2) : u[k]));
    });
    row("spent", parts.join(" \\u00b7 ") || "-");
    row("nodes", String(t.nodes.length) + " (" + t.nodes.filter(function (n) { return n.terminal; }).length +
        " terminal)");
    box.appendChild(dl);
    var p = images[+pick.value] || {}, last = (t.chosen || []).length ? t.chosen[t.chosen.length - 1] : null;
    box.classList.toggle("pics", Object.keys(p).length > 0);
    if (Object.keys(p).length) {
      var fig = el("figure");
      fig.id = "big";
      fig.appendChild(el("img"));
      fig.appendChild(el("figcaption"));
      box.appendChild(fig);
      show(t, last, true);
    }
  }

  function show(t, id, isChosen) {  // a node's image, large, in the details panel
    var fig = document.getElementById("big"), p = images[+pick.value] || {};
    if (!fig) return;
    var img = fig.querySelector("img"), n = id === null ? null : t.nodes[id];
    img.style.display = (n && p[id]) ? "" : "none";
    if (n && p[id]) { img.src = p[id]; img.alt = "image of node #" + id; }
    var m = (n && n.meta) || {}, lines = [];
    lines.push((isChosen ? "chosen " + (n && n.terminal ? "x_0" : "node") : "node") + (n ? " #" + n.id : ": none"));
    if (n && n.parent !== null && n.step) lines.push(n.step);
    if (n && n.terminal) lines.push("class " + (n.answer === null ? "-" : n.answer) + (mark(n.correct) ? " " + mark(n.correct) : ""));
    if (typeof m.reward === "number") lines.push("reward " + fmt(m.reward));
    if (m.x0_class !== undefined && m.x0_class !== null) lines.push("predicted x_0 class " + m.x0_class);
    if (n && !p[id]) lines.push("(no image stored)");
    fig.querySelector("figcaption").textContent = lines.join("\\n");
  }

  function label(t, n, chosen) {
    var d = el("span", "node" + (chosen[n.id] ? " chosen" : "") + (n.terminal ? " terminal" : ""));
    d.appendChild(el("span", "id", "#" + n.id));
    var step = el("span", "step", n.parent === null ? "(root)" : trunc(n.step || "\\u2205"));
    step.title = n.parent === null ? (t.question || "") : (n.step || "");
    d.appendChild(step);
    var src = (images[+pick.value] || {})[n.id], m = n.meta || {};
    if (src) {
      var im = el("img", "thumb");
      im.src = src;
      im.alt = "image of node #" + n.id;
      im.title = "node #" + n.id + ": click to show large";
      im.onclick = function (ev) { ev.stopPropagation(); show(t, n.id, false); };
      d.insertBefore(im, step);
      d.classList.add("pic");
    }
    if (n.score !== null && n.score !== undefined) d.appendChild(el("span", "badge", "s " + fmt(n.score)));
    if (typeof m.reward === "number") d.appendChild(el("span", "badge", "r " + fmt(m.reward)));
    if (!n.terminal && m.x0_class !== undefined && m.x0_class !== null) d.appendChild(el("span", "badge", "pred " + m.x0_class));
    if (n.visits) {
      d.appendChild(el("span", "badge", "Q " + fmt(n.value_sum / n.visits)));
      d.appendChild(el("span", "badge", "n " + n.visits));
    }
    if (n.terminal || (n.answer !== null && n.answer !== undefined)) {
      var a = el("span", "badge ans", "ans " + (n.answer === null ? "(none)" : n.answer) +
                 (mark(n.correct) ? " " + mark(n.correct) : ""));
      if (n.correct === true) a.classList.add("ok");
      if (n.correct === false) a.classList.add("bad");
      d.appendChild(a);
    }
    d.title = "depth " + n.depth + ", " + n.num_tokens + " tokens, logprob " + fmt(n.logprob) + ", prior " +
      fmt(n.prior) + (n.finish_reason ? ", finish " + n.finish_reason : "");
    return d;
  }

  function draw() {
    var t = trees[+pick.value], root = document.getElementById("tree");
    root.textContent = "";
    if (!t) { root.appendChild(el("li", null, "no trees")); return; }
    info(t);
    var chosen = {}, byId = {};
    t.nodes.forEach(function (n) { byId[n.id] = n; });
    (t.chosen || []).forEach(function (id) { chosen[id] = true; });
    chosen[0] = true;
    // iterative depth-first build: robust for deep trees
    var stack = [[byId[0], root]];
    while (stack.length) {
      var top = stack.pop(), n = top[0], parentUl = top[1];
      if (!n) continue;
      if (only.checked && !chosen[n.id]) continue;
      var li = el("li"), kids = (n.children || []).filter(function (c) { return byId[c]; });
      var tg = el("span", "toggle", kids.length ? "\\u25be" : "");
      if (kids.length) tg.onclick = (function (li, tg) {
        return function () { li.classList.toggle("collapsed"); tg.textContent = li.classList.contains("collapsed") ? "\\u25b8" : "\\u25be"; };
      })(li, tg);
      li.appendChild(tg);
      li.appendChild(label(t, n, chosen));
      parentUl.appendChild(li);
      if (kids.length) {
        var ul = el("ul");
        li.appendChild(ul);
        for (var i = kids.length - 1; i >= 0; i--) stack.push([byId[kids[i]], ul]);
      }
    }
    try { history.replaceState(null, "", "#" + pick.value); } catch (e) { /* some file:// contexts refuse */ }
  }

  var start = parseInt(location.hash.slice(1), 10);
  if (start >= 0 && start < trees.length) pick.value = start;
  pick.onchange = draw;
  only.onchange = draw;
  if (trees.length) draw(); else document.getElementById("info").textContent = "no trees";
})();
</script>
</body>
</html>
"""
