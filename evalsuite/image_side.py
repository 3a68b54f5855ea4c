"""Image-side compression: make the image that is *sent* smaller, which is what a hosted model bills.

A token plan that drops patches inside an encoder leaves the image, and so a
provider's bill, unchanged. These functions return a smaller image instead:

- :func:`crop`: the bounding box of the kept (or inked) cells;
- :func:`slim`: blank cell rows and columns removed (DocKylin's Adaptive Pixel
  Slimming, arXiv 2406.19101, on a cell grid);
- :func:`pack`: the kept cells re-flowed, in reading order, into a canvas as
  wide as the original and only as tall as they need (after Zoomer, arXiv 2505.00742);
- :func:`downscale`: the whole image resized by ``sqrt(keep)`` per side.

A *mask* is bool [R, C] over the whole image: cell (r, c) covers the
proportional box rows ``[r*H/R, (r+1)*H/R)`` and columns ``[c*W/C, (c+1)*W/C)``
(the convention of :mod:`evalsuite.ocr.reconstruct`), so a token plan's
``keep_mask`` on the model's square input grid applies as it is. Without a plan,
:func:`ink_mask` marks the cells that hold anything but background.

:func:`send` applies one of them and the guard: an image that would cost more
billed tokens than the original under the target's cost model is not sent; the
original is, with ``sent_original_reason`` saying why. PIL and numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .billing import image_tokens
from .plan import TokenPlan

INK_LEVEL = 48  # grey levels from the background that count as ink (JPEG noise on white is well below)
INK_FRACTION = 0.005  # inked pixels a cell needs: a speck of noise is not content


def ink_mask(image: Image.Image, cell: int = 28) -> np.ndarray:
    """bool [ceil(H/cell), ceil(W/cell)]: cells holding content, i.e. enough pixels at least
    :data:`INK_LEVEL` grey levels away from the background (the median grey of the image).

    >>> page = Image.new("RGB", (112, 56), "white"); page.paste((0, 0, 0), (30, 5, 50, 20))
    >>> ink_mask(page).astype(int).tolist()
    [[0, 1, 0, 0], [0, 0, 0, 0]]
    """
    grey = np.asarray(image.convert("L"), dtype=np.int16)
    height, width = grey.shape
    inked = np.abs(grey - int(np.median(grey))) >= INK_LEVEL
    rows, cols = math.ceil(height / cell), math.ceil(width / cell)
    padded = np.zeros((rows * cell, cols * cell), dtype=np.int32)
    padded[:height, :width] = inked
    counts = padded.reshape(rows, cell, cols, cell).sum(axis=(1, 3))
    # a border cell has fewer pixels: compare with the pixels it has
    area = (np.minimum(cell, height - np.arange(rows) * cell)[:, None]
            * np.minimum(cell, width - np.arange(cols) * cell)[None, :])
    return counts >= np.maximum(1, INK_FRACTION * area)


def _edges(length: int, cells: int) -> np.ndarray:
    """int [cells + 1]: pixel edges of ``cells`` proportional cells over ``length`` pixels
    (cell i holds the pixels p with ``p * cells // length == i``)."""
    return -(-np.arange(cells + 1) * length // cells)


def _mask_for(image: Image.Image, plan: TokenPlan | np.ndarray | None, cell: int) -> np.ndarray:
    if plan is None:
        return ink_mask(image, cell)
    mask = plan.keep_mask if isinstance(plan, TokenPlan) else np.asarray(plan, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [rows, cols], got shape {mask.shape}")
    return mask


def _boxes(image: Image.Image, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _edges(image.height, mask.shape[0]), _edges(image.width, mask.shape[1])


def crop(image: Image.Image, plan: TokenPlan | np.ndarray | None = None, cell: int = 28) -> Image.Image:
    """The bounding box of the kept cells of ``plan`` (a TokenPlan or a bool mask [R, C]), or of the
    inked cells when ``plan`` is None. An image with nothing kept is returned whole.

    >>> page = Image.new("RGB", (280, 280), "white"); page.paste((0, 0, 0), (60, 60, 100, 90))
    >>> crop(page).size
    (56, 56)
    """
    mask = _mask_for(image, plan, cell)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return image
    ys, xs = _boxes(image, mask)
    return image.crop((int(xs[cols[0]]), int(ys[rows[0]]), int(xs[cols[-1] + 1]), int(ys[rows[-1] + 1])))


def slim(image: Image.Image, plan: TokenPlan | np.ndarray | None = None, cell: int = 28) -> Image.Image:
    """``image`` without the cell rows and the cell columns that hold nothing kept (or no ink).

    >>> page = Image.new("RGB", (280, 280), "white")
    >>> page.paste((0, 0, 0), (0, 0, 20, 20)); page.paste((0, 0, 0), (200, 200, 220, 220))
    >>> slim(page).size  # two cell rows and two cell columns survive
    (56, 56)
    """
    mask = _mask_for(image, plan, cell)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return image
    ys, xs = _boxes(image, mask)
    pixels = np.asarray(image)
    keep_y = np.concatenate([np.arange(ys[r], ys[r + 1]) for r in rows])
    keep_x = np.concatenate([np.arange(xs[c], xs[c + 1]) for c in cols])
    return Image.fromarray(pixels[keep_y][:, keep_x])


def pack(image: Image.Image, plan: TokenPlan | np.ndarray | None = None, cell: int = 28,
         fill: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """The kept cells, in reading order (row-major), re-flowed into a canvas of the same number of
    cell columns and only as many cell rows as they need; cells are resized to one size
    (the largest cell box) so they tile; the last row is padded with ``fill``.

    >>> page = Image.new("RGB", (280, 280), "white")
    >>> for y in (0, 100, 200): page.paste((0, 0, 0), (0, y, 20, y + 20))
    >>> pack(page).size  # three kept cells fit in one row of ten
    (280, 28)
    """
    mask = _mask_for(image, plan, cell)
    kept = np.argwhere(mask)
    if kept.size == 0:
        return image
    ys, xs = _boxes(image, mask)
    cell_h, cell_w = int(np.diff(ys).max()), int(np.diff(xs).max())
    cols = mask.shape[1]
    rows = -(-len(kept) // cols)
    canvas = Image.new("RGB", (cols * cell_w, rows * cell_h), fill)
    rgb = image.convert("RGB")
    for i, (r, c) in enumerate(kept):
        box = rgb.crop((int(xs[c]), int(ys[r]), int(xs[c + 1]), int(ys[r + 1])))
        if box.size != (cell_w, cell_h):
            box = box.resize((cell_w, cell_h), Image.Resampling.BICUBIC)
        canvas.paste(box, ((i % cols) * cell_w, (i // cols) * cell_h))
    return canvas


def downscale(image: Image.Image, keep: float) -> Image.Image:
    """``image`` resized by ``sqrt(keep)`` per side (about ``keep`` of its pixels), like the
    ``downscale`` method's encoder input.

    >>> downscale(Image.new("RGB", (1000, 400)), 0.25).size
    (500, 200)
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"downscale: keep must be in (0, 1], got {keep}")
    s = math.sqrt(keep)
    if s == 1.0:
        return image
    return image.resize(downscaled_size(image.size, s), Image.Resampling.BICUBIC)


def downscaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """(width, height) of an image of ``size`` scaled by ``scale`` per side, at least 1 px."""
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


TRANSFORMS = {"crop": crop, "slim": slim, "pack": pack}


@dataclass
class Sent:
    """The image to send and, when it is the original although a transform was asked for, why."""

    image: Image.Image
    tokens_original: int
    tokens_sent: int
    sent_original_reason: str | None = None


def guard(original: Image.Image, candidate: Image.Image, target: str, what: str = "transform") -> Sent:
    """``candidate`` unless it costs more billed tokens than ``original`` under cost model ``target``
    (Qwen's rounding can make a narrower image dearer); then the original, with the reason.

    >>> page = Image.new("RGB", (621, 1803))
    >>> sent = guard(page, page.crop((0, 0, 572, 1803)), "qwen2_vl", "crop")
    >>> sent.image is page, sent.sent_original_reason
    (True, 'crop: 1282 billed tokens under qwen2_vl, the original costs 1202; sent the original')
    """
    before = image_tokens(target, *original.size)
    after = image_tokens(target, *candidate.size)
    if after > before:
        return Sent(original, before, before, f"{what}: {after} billed tokens under {target}, "
                                              f"the original costs {before}; sent the original")
    return Sent(candidate, before, after)


def send(method: str, image: Image.Image, plan: TokenPlan | np.ndarray | None = None, *,
         target: str = "qwen2_vl", cell: int = 28, keep: float = 1.0) -> Sent:
    """The image to send for ``method`` (``none``, ``crop``, ``slim``, ``pack``, ``downscale``; any
    other method sends the original: dropping tokens inside a model does not change the image),
    guarded against costing more than the original under ``target``."""
    if method == "downscale":
        candidate = downscale(image, keep)
    elif method in TRANSFORMS:
        candidate = TRANSFORMS[method](image, plan, cell)
    else:
        candidate = image
    return guard(image, candidate, target, method)


def case_images(compressor, samples, sizes: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], list[Sent] | None]:
    """What a case sends per sample: (width, height) of each image sent, and for a method acting on the
    image (one with a ``send`` hook: ``crop``, ``slim``, ``pack``) the :class:`Sent` images, in
    ``samples`` order; ``sizes`` are the originals' (width, height).

    ``downscale`` sends the original resized by its input scale; every other method (dropping or
    merging tokens inside the encoder) sends the original as it is.
    """
    if hasattr(compressor, "send"):
        from .workers import thread_map

        sent = thread_map(lambda sample: compressor.send(sample.load()), list(samples))
        return [s.image.size for s in sent], sent
    scale = float(getattr(compressor, "input_scale", 1.0))
    return ([downscaled_size(size, scale) for size in sizes] if scale < 1.0 else list(sizes)), None


def annotate_sent(records, sizes: list[tuple[int, int]], sent: list[Sent] | None) -> None:
    """Note on each sample record (aligned with ``sizes``) the size of the image sent and, where
    the guard sent the original instead, ``sent_original_reason``."""
    for i, (record, size) in enumerate(zip(records, sizes)):
        record.info["sent_size"] = list(size)
        if sent is not None and sent[i].sent_original_reason:
            record.info["sent_original_reason"] = sent[i].sent_original_reason
