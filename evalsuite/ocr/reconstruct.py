"""What a token plan leaves of a picture, painted back at the original resolution.

The model input was the whole image resized to ``grid * patch`` pixels, so
patch (r, c) of ``plan.grid`` covers the proportional box rows
``[r*H/R, (r+1)*H/R)`` and columns ``[c*W/C, (c+1)*W/C)`` of the original
H x W image. :func:`reconstruct` paints that picture for OCR: a token holding
one patch keeps its pixels, a token merging several patches becomes the mean
colour of all their pixels, a dropped patch is blanked. :func:`overlay` draws
the same plan over the image for reports.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from evalsuite.plan import TokenPlan

Colour = tuple[int, int, int]
WHITE: Colour = (255, 255, 255)


def token_label_image(plan: TokenPlan, size: tuple[int, int]) -> np.ndarray:
    """int64 [H, W]: the output token each pixel of a ``size`` = (W, H) image went to, -1 if dropped."""
    width, height = size
    rows, cols = plan.grid
    # (y * rows) // height is the r with r*H/R <= y < (r+1)*H/R, in exact integers
    patch_row = (np.arange(height) * rows) // height
    patch_col = (np.arange(width) * cols) // width
    patch = patch_row[:, None] * cols + patch_col[None, :]
    return plan.patch_to_token.astype(np.int64)[patch]


def as_seen_by_model(image: Image.Image, input_scale: float) -> Image.Image:
    """``image`` resized down by ``input_scale`` and back up: the detail a downscaled input kept."""
    if input_scale >= 1.0:
        return image
    small = (max(1, round(image.width * input_scale)), max(1, round(image.height * input_scale)))
    return image.resize(small, Image.Resampling.BICUBIC).resize(image.size, Image.Resampling.BICUBIC)


def reconstruct(image: Image.Image, plan: TokenPlan, blank: Colour = WHITE) -> Image.Image:
    """RGB picture of what ``plan`` kept of ``image``, same size as ``image``.

    Singleton tokens keep their pixels (after the ``input_scale`` round trip),
    merged tokens are filled with the mean RGB over all their pixels (so a
    patch's weight is its pixel count), dropped patches are ``blank``.
    """
    if plan.is_identity:
        return image.copy()
    seen = np.asarray(as_seen_by_model(image.convert("RGB"), plan.input_scale))
    labels = token_label_image(plan, image.size).ravel()
    out = seen.reshape(-1, 3).copy()  # singletons keep their pixels
    out[labels < 0] = blank

    # by patch count, so a merged token whose patches hold no pixels (tiny images) is still merged;
    # a downscaled input's tokens cover several full-grid patches by resampling, which the round trip
    # above already models: they are not merged groups
    is_merged = np.append((plan.token_sizes() > 1) & (plan.input_scale >= 1.0), False)  # [-1] reads False
    merged = is_merged[labels]
    if merged.any():
        group, pixels = labels[merged], out[merged].astype(np.float64)
        counts = np.bincount(group, minlength=plan.num_tokens)
        sums = np.stack([np.bincount(group, pixels[:, ch], plan.num_tokens) for ch in range(3)], axis=1)
        means = np.rint(sums / np.maximum(counts, 1)[:, None]).astype(np.uint8)  # [num_tokens, 3]
        out[merged] = means[group]
    return Image.fromarray(out.reshape(seen.shape), "RGB")


def overlay(image: Image.Image, plan: TokenPlan, alpha: float = 0.45) -> Image.Image:
    """The plan drawn over ``image``: dropped patches darkened and tinted red,
    each merged group tinted with its own colour and outlined; singletons untouched.
    """
    base = np.asarray(image.convert("RGB")).astype(np.float32)
    labels = token_label_image(plan, image.size)
    dropped = labels < 0
    merged_tokens = plan.token_sizes() > 1
    merged = ~dropped & merged_tokens[np.maximum(labels, 0)]

    palette = np.random.default_rng(0).integers(40, 256, size=(max(plan.num_tokens, 1), 3)).astype(np.float32)
    out = base.copy()
    out[dropped] = 0.35 * base[dropped] + 0.65 * np.array([120.0, 0.0, 0.0], np.float32)
    out[merged] = (1 - alpha) * base[merged] + alpha * palette[labels[merged]]

    # a group's border: its pixels with a left/right/upper/lower neighbour in another token
    edge = np.zeros_like(merged)
    across, down = labels[:, :-1] != labels[:, 1:], labels[:-1, :] != labels[1:, :]
    edge[:, :-1] |= across
    edge[:, 1:] |= across
    edge[:-1, :] |= down
    edge[1:, :] |= down
    out[edge & merged] = (20.0, 20.0, 20.0)
    return Image.fromarray(np.rint(out).astype(np.uint8), "RGB")
