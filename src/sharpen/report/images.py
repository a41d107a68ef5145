"""Pictures of a denoising process's states: small PNG thumbnails and sample grids.

A state of the denoising process (`sharpen.search.denoise`, a DDPM after Ho et al. 2020, arXiv
2006.11239) is an 8x8 image with pixels roughly in [-1, 1] (the bundled digits' 0..16 scaled so):
stored in a node's `meta["x"]` as base64 of its float16 bytes (`encode_state`). Every picture here
maps one fixed value range onto the gray levels, ink dark on white (-1 white, +1 black, values
outside clipped), so pictures of different nodes, trees and rounds compare.

- `image_png` / `image_data_uri`: one state as a grayscale PNG (Pillow), upscaled by an integer
  factor with nearest-neighbour resampling so each pixel stays a sharp square; the data URI is what
  the tree viewer (`sharpen.report.viewer`) embeds, once per node;
- `tree_images`: the data URI of every node of a tree that holds a state;
- `write_sample_grid`: rows x cols of images with optional captions (class, reward) and row labels,
  one PNG file drawn with matplotlib: a report's "before / after" figure is two rows;
- `chosen_samples`: each tree's chosen x_0 and a caption, the input of such a figure.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sharpen.core.errors import ConfigError
from sharpen.core.io import atomic_write_bytes
from sharpen.core.tree import Tree

VALUE_RANGE = (-1.0, 1.0)  # the pixel values mapped to white .. black
THUMB_SCALE = 4  # an 8x8 state becomes a 32x32 thumbnail
GRID_CELL = 96  # pixels per image side in a sample grid (an 8x8 image at 12x)
GRID_DPI = 100
CAPTION_LINE = 14  # pixels per caption line above each grid image
ROW_LABEL_WIDTH = 80  # pixels left of a grid's rows when they are labelled
TITLE_HEIGHT = 30  # pixels above a grid with a title
_MAX_SCALE = 64


def _check_range(value_range: tuple[float, float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ConfigError(f"value_range {value_range!r} is not two numbers (fix: e.g. (-1.0, 1.0))") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(f"value_range {value_range!r} needs finite low < high (fix: e.g. (-1.0, 1.0))")
    return lo, hi


def state_pixels(x: Any) -> Any:
    """A state as a 2-D float32 numpy array: `x` is a base64 float16 state (`meta["x"]`, a square
    image's worth of values), or an array or tensor whose leading axes of size 1 are dropped (so
    (1, 8, 8) is an 8x8 image). NaN becomes 0 and infinities the largest finite values (so they
    clip to the range's ends); a state that is no image raises ConfigError."""
    import numpy as np

    if isinstance(x, str):
        try:
            raw = base64.b64decode(x, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("an image state is not base64 (fix: store states with "
                              "sharpen.search.denoise.encode_state)") from None
        n = len(raw) // 2
        side = math.isqrt(n)
        if len(raw) % 2 or n == 0 or side * side != n:
            raise ConfigError(f"an image state holds {len(raw)} bytes, not a square image of float16 values "
                              "(fix: store states with sharpen.search.denoise.encode_state)")
        a = np.frombuffer(raw, dtype=np.float16).astype(np.float32).reshape(side, side)
    else:
        if hasattr(x, "detach"):  # a torch tensor
            x = x.detach().cpu().numpy()
        a = np.asarray(x, dtype=np.float32)
        while a.ndim > 2 and a.shape[0] == 1:
            a = a[0]
        if a.ndim != 2 or a.size == 0:
            raise ConfigError(f"an image of shape {tuple(np.shape(x))} is not one 2-D image "
                              "(fix: pass (H, W) or (1, H, W))")
    return np.nan_to_num(a)


def to_gray(x: Any, value_range: tuple[float, float] = VALUE_RANGE) -> Any:
    """8-bit gray levels of a state: `value_range` low -> 255 (white), high -> 0 (black), clipped."""
    import numpy as np

    lo, hi = _check_range(value_range)
    a = np.clip((state_pixels(x) - lo) / (hi - lo), 0.0, 1.0)
    return np.round(255.0 * (1.0 - a)).astype(np.uint8)


def image_png(x: Any, scale: int = THUMB_SCALE, value_range: tuple[float, float] = VALUE_RANGE) -> bytes:
    """A state as grayscale PNG bytes, each pixel a `scale` x `scale` square (nearest neighbour)."""
    from PIL import Image

    if isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale <= _MAX_SCALE:
        raise ConfigError(f"image scale {scale!r} is out of range (fix: an integer in 1..{_MAX_SCALE})")
    img = Image.fromarray(to_gray(x, value_range))  # uint8 (H, W): mode L
    img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def image_data_uri(x: Any, scale: int = THUMB_SCALE, value_range: tuple[float, float] = VALUE_RANGE) -> str:
    """`image_png` as a `data:image/png;base64,...` URI, for a self-contained HTML page."""
    return "data:image/png;base64," + base64.b64encode(image_png(x, scale, value_range)).decode("ascii")


def tree_images(tree: Tree, scale: int = THUMB_SCALE) -> dict[int, str]:
    """{node id: data URI} for every node of `tree` holding a state in `meta["x"]` (none for an LM
    tree). A state that is not an image raises ConfigError naming the problem and the node."""
    out = {}
    for n in tree.nodes:
        x = n.meta.get("x") if isinstance(n.meta, dict) else None
        if x is None:
            continue
        try:
            out[n.id] = image_data_uri(x, scale)
        except ConfigError as e:
            raise ConfigError(f"problem {tree.problem_id!r}, node {n.id}: {e}") from None
    return out


def sample_caption(tree: Tree, node_id: int) -> str:
    """A terminal's caption: its class (and the target when the tree has one) and its reward."""
    node = tree.nodes[node_id]
    head = "-" if node.answer is None else str(node.answer)
    if tree.reference is not None:
        head += f" (want {tree.reference})"
    reward = node.meta.get("reward")
    return head if reward is None else f"{head}\nr {float(reward):.2f}"


def chosen_samples(trees: Sequence[Tree]) -> tuple[list[str], list[str]]:
    """Each tree's chosen x_0 (the state of the last chosen node) and its caption, for trees whose
    chosen node holds a state; trees without one are left out."""
    images, captions = [], []
    for t in trees:
        if t.chosen and "x" in t.nodes[t.chosen[-1]].meta:
            images.append(t.nodes[t.chosen[-1]].meta["x"])
            captions.append(sample_caption(t, t.chosen[-1]))
    return images, captions


def grid_size(rows: int, cols: int, caption_lines: int = 0, row_labels: bool = False, title: bool = False,
              cell: int = GRID_CELL) -> tuple[int, int]:
    """The (width, height) in pixels of a `write_sample_grid` figure: `cols` cells of `cell` pixels
    (plus `ROW_LABEL_WIDTH` with row labels) by `rows` cells each with `caption_lines` caption lines
    of `CAPTION_LINE` pixels (plus `TITLE_HEIGHT` with a title)."""
    width = (ROW_LABEL_WIDTH if row_labels else 0) + cols * cell
    caption = CAPTION_LINE * caption_lines + (4 if caption_lines else 0)
    return width, (TITLE_HEIGHT if title else 0) + rows * (cell + caption)


def write_sample_grid(images: Sequence[Sequence[Any]], path: str | Path, captions: Sequence[Sequence[str]] | None = None,
                      row_labels: Sequence[str] | None = None, title: str | None = None, cell: int = GRID_CELL,
                      value_range: tuple[float, float] = VALUE_RANGE) -> Path:
    """Draw rows of images (states as `state_pixels` reads them; rows may differ in length) as one
    PNG at `path` with matplotlib, each image `cell` pixels square in the fixed `value_range`,
    with an optional caption per image (same shape as `images`), a label per row and a title; the
    file's pixel size is `grid_size(...)`. Written atomically; returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [list(r) for r in images]
    if not rows or not any(rows):
        raise ConfigError("a sample grid needs at least one image (fix: pass rows of states)")
    cols = max(len(r) for r in rows)
    if isinstance(cell, bool) or not isinstance(cell, int) or not 16 <= cell <= 1024:
        raise ConfigError(f"grid cell {cell!r} is out of range (fix: an integer number of pixels in 16..1024)")
    lo, hi = _check_range(value_range)
    caps = [list(r) for r in captions] if captions is not None else None
    if caps is not None and [len(r) for r in caps] != [len(r) for r in rows]:
        raise ConfigError("captions do not match the images row for row (fix: one caption per image)")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ConfigError(f"{len(row_labels)} row labels for {len(rows)} rows (fix: one label per row)")
    lines = max((str(c).count("\n") + 1 for r in caps for c in r), default=0) if caps else 0
    width, height = grid_size(len(rows), cols, lines, row_labels is not None, bool(title), cell)
    left = ROW_LABEL_WIDTH if row_labels is not None else 0
    top = TITLE_HEIGHT if title else 0
    band = cell + (CAPTION_LINE * lines + 4 if lines else 0)
    pad = max(1, cell // 24)

    fig = plt.figure(figsize=(width / GRID_DPI, height / GRID_DPI), dpi=GRID_DPI)
    try:
        for r, row in enumerate(rows):
            y0 = height - top - (r + 1) * band  # bottom of this row's image, in pixels from the bottom
            for c, x in enumerate(row):
                ax = fig.add_axes(((left + c * cell + pad) / width, (y0 + pad) / height,
                                   (cell - 2 * pad) / width, (cell - 2 * pad) / height))
                ax.imshow(state_pixels(x), cmap="gray_r", vmin=lo, vmax=hi, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                for s in ax.spines.values():
                    s.set_color("#bbbbbb")
                if caps is not None:
                    ax.set_title(str(caps[r][c]), fontsize=8, pad=2, linespacing=1.0)
            if row_labels is not None:
                fig.text(left / 2 / width, (y0 + cell / 2) / height, str(row_labels[r]), ha="center", va="center",
                         fontsize=10, fontweight="bold")
        if title:
            fig.text(0.5, 1 - TITLE_HEIGHT / 2 / height, title, ha="center", va="center", fontsize=11)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=GRID_DPI, facecolor="white")
    finally:
        plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
