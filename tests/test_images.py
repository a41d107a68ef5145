"""Pictures of denoising states (`sharpen.report.images`) and their place in the tree viewer: real
trees from a tiny DDPM trained here in seconds carry one decodable PNG per imaged node, sample grids
have the documented pixel size, the value range is fixed, and a language-model tree draws no images."""

from __future__ import annotations

import base64
import io
import json
import re

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("PIL")

from PIL import Image  # noqa: E402

from sharpen.backends.diffusion import load_digits_model  # noqa: E402
from sharpen.core.errors import ConfigError  # noqa: E402
from sharpen.core.tree import Tree  # noqa: E402
from sharpen.report.images import (  # noqa: E402
    CAPTION_LINE,
    ROW_LABEL_WIDTH,
    THUMB_SCALE,
    TITLE_HEIGHT,
    chosen_samples,
    grid_size,
    image_png,
    to_gray,
    tree_images,
    write_sample_grid,
)
from sharpen.report.viewer import render_trees_html  # noqa: E402
from sharpen.search.algorithms import ALGORITHMS  # noqa: E402
from sharpen.search.denoise import DenoiseProcess, decode_state, encode_state, problems, strip_states  # noqa: E402
from sharpen.search.scorers import make_scorer  # noqa: E402

STEPS = 6
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trees(tiny_digits_dir) -> list[Tree]:
    """A beam tree with every state kept, and a best-of-N tree stripped to its terminals' x_0."""
    model = load_digits_model(tiny_digits_dir)
    proc = DenoiseProcess(model, steps=STEPS)
    p = problems("test", 1, seed=1)[0]
    beam = ALGORITHMS["beam"](proc, make_scorer("x0-reward", proc), p, 20 * STEPS, seed=0, width=2, expansions=3)
    bon = strip_states(ALGORITHMS["bon"](proc, make_scorer("x0-reward", proc), p, 4 * STEPS, seed=1, batch=4))
    beam.problem_id, bon.problem_id = "beam", "bon"
    return [beam, bon]


def data_element(html: str, name: str):
    m = re.search(rf'<script type="application/json" id="{name}">(.*?)</script>', html, re.S)
    return json.loads(m.group(1)) if m else None


def png(uri: str) -> bytes:
    head = "data:image/png;base64,"
    assert uri.startswith(head)
    return base64.b64decode(uri[len(head):])


def test_viewer_embeds_one_decodable_image_per_imaged_node(trees):
    imaged = [[n.id for n in t.nodes if "x" in n.meta] for t in trees]
    assert len(imaged[0]) == len(trees[0].nodes) - 1  # every node but the root (the prior) has a state
    assert imaged[1] == [n.id for n in trees[1].terminals()] and 0 < len(imaged[1]) < len(trees[1].nodes)
    html = render_trees_html(trees, "digits")
    images = data_element(html, "images-data")
    assert [sorted(int(k) for k in imgs) for imgs in images] == imaged
    assert html.count("data:image/png;base64,") == sum(map(len, imaged))  # each picture once, nowhere else
    for t, imgs in zip(trees, images, strict=True):
        for nid, uri in imgs.items():
            raw = png(uri)
            assert raw.startswith(PNG_MAGIC)
            img = Image.open(io.BytesIO(raw))
            assert img.size == (8 * THUMB_SCALE, 8 * THUMB_SCALE) and img.mode == "L"
            pixels = [[img.getpixel((c * THUMB_SCALE, r * THUMB_SCALE)) for c in range(8)] for r in range(8)]
            # the PNG shows the state the search stored (read independently by the process's own decoder)
            assert pixels == to_gray(decode_state(t.nodes[int(nid)].meta["x"], (1, 8, 8))).tolist()
            assert len(uri) < 400  # a small image: the page stays bounded
    # the embedded trees keep everything but the states the pictures replace
    embedded = data_element(html, "trees-data")
    assert not any("x" in n["meta"] for d in embedded for n in d["nodes"])
    for d, t in zip(embedded, trees, strict=True):
        assert [n["meta"].get("reward") for n in d["nodes"]] == [n.meta.get("reward") for n in t.nodes]
    # the pictures add a few hundred bytes per imaged node over the same trees without states
    bare = [Tree.from_dict(t.to_dict()) for t in trees]
    for t in bare:
        for n in t.nodes:
            n.meta.pop("x", None)
    plain = render_trees_html(bare, "digits")
    assert 'id="images-data"' not in plain
    assert len(html) - len(plain) < 400 * sum(map(len, imaged))


def test_lm_tree_renders_without_images():
    tree = Tree("p", "what is 2 + 2?", reference="4", meta={"steps": 3})
    a = tree.add(0, step="2 + 2", meta={"note": "no picture"})
    tree.add(a.id, step="= 4", terminal=True, answer="4")
    tree.chosen = [1, 2]
    html = render_trees_html([tree], "lm")
    assert 'id="images-data"' not in html and data_element(html, "images-data") is None
    assert "data:image" not in html and "__IMAGES__" not in html
    assert html.count("</script>") == 2  # the trees' data and the drawing script, as before
    assert [Tree.from_dict(d) for d in data_element(html, "trees-data")] == [tree]
    assert tree_images(tree) == {}


def test_value_range_is_fixed_across_images(tmp_path):
    import numpy as np
    import torch

    flat = {v: np.full((1, 8, 8), v, dtype=np.float32) for v in (-1.0, 0.0, 1.0, 3.0)}
    gray = {v: Image.open(io.BytesIO(image_png(x))).getpixel((5, 5)) for v, x in flat.items()}
    assert gray == {-1.0: 255, 0.0: 128, 1.0: 0, 3.0: 0}  # white .. black, clipped, not stretched per image
    state = encode_state(torch.from_numpy(flat[0.0]))
    assert to_gray(state).tolist() == [[128] * 8] * 8  # a base64 state reads the same
    path = write_sample_grid([[flat[-1.0], flat[0.0], flat[1.0]]], tmp_path / "flat.png", cell=64)
    img = Image.open(path).convert("L")
    assert img.size == (3 * 64, 64)
    centers = [img.getpixel((64 * c + 32, 32)) for c in range(3)]
    assert centers[0] > 250 and abs(centers[1] - 128) <= 2 and centers[2] < 5


def test_sample_grid_is_a_png_of_the_expected_size(trees, tmp_path):
    xs, caps = chosen_samples(trees * 2)
    assert len(xs) == 4 and all("r " in c for c in caps)
    path = write_sample_grid([xs[:2], xs[2:]], tmp_path / "out" / "grid.png", captions=[caps[:2], caps[2:]],
                             row_labels=["before", "after"], title="chosen x_0", cell=96)
    raw = path.read_bytes()
    assert raw.startswith(PNG_MAGIC)
    lines = 2  # "class (want target)" and "r reward"
    expect = (ROW_LABEL_WIDTH + 2 * 96, TITLE_HEIGHT + 2 * (96 + CAPTION_LINE * lines + 4))
    assert Image.open(path).size == expect == grid_size(2, 2, lines, True, True, 96)
    ragged = write_sample_grid([xs[:3], xs[3:]], tmp_path / "ragged.png")  # rows may differ in length
    assert Image.open(ragged).size == grid_size(2, 3)
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_bad_inputs_raise_config_errors(trees, tmp_path):
    import numpy as np

    x = np.zeros((1, 8, 8))
    bad = [
        lambda: image_png(x, scale=0),
        lambda: image_png(x, scale=2.5),
        lambda: image_png(x, value_range=(1.0, 1.0)),
        lambda: image_png(x, value_range=(0.0, float("nan"))),
        lambda: image_png(np.zeros((2, 8, 8))),
        lambda: image_png("not base64!"),
        lambda: image_png(base64.b64encode(b"\0" * 10).decode()),  # 5 values: not a square image
        lambda: write_sample_grid([], tmp_path / "g.png"),
        lambda: write_sample_grid([[x]], tmp_path / "g.png", cell=4),
        lambda: write_sample_grid([[x, x]], tmp_path / "g.png", captions=[["one"]]),
        lambda: write_sample_grid([[x]], tmp_path / "g.png", row_labels=["a", "b"]),
    ]
    for call in bad:
        with pytest.raises(ConfigError) as e:
            call()
        assert "fix:" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "g.png").exists()
    broken = Tree.from_dict(trees[1].to_dict())
    broken.nodes[1].meta["x"] = "AAAA"
    with pytest.raises(ConfigError, match="node 1"):
        render_trees_html([broken], "broken")
