"""Offline token-cost models: how many image tokens a provider bills for one image of a given size.

A hosted vision model bills by the image it *receives*: blanking patches leaves
the size, and so the bill, unchanged; only a smaller (or differently shaped)
image changes it. Each model here maps ``(width, height)`` in pixels to billed
image tokens, from the provider's published formula:

- ``qwen2_vl`` (Qwen2-VL, Qwen2.5-VL): ``smart_resize`` to multiples of 28 px
  within [min_pixels, max_pixels], one token per 28x28 cell (a 2x2 merge of
  14-px patches), plus 2 for the vision start/end tokens.
- ``qwen3_vl``: the same with 32-px cells (16-px patches, 2x2 merge).
- ``gpt4o``: fit in 2048x2048, scale the short side down to 768, then
  85 + 170 per 512-px tile (``detail="low"``: 85 whatever the size); GPT-4.1
  (full size) bills the same way.
- ``patches32`` / ``gpt41_mini`` / ``gpt41_nano`` / ``o4_mini``: 32-px patches,
  at most 1536 (a larger image is scaled down to fit), times a per-model
  multiplier (OpenAI's vision cost table: 1.62, 2.46, 1.72).
- ``fixed_grid``: an encoder that resizes every image to S x S: (S/p)^2.

GigaChat publishes no formula; its image tokens come only from the response's
usage (:mod:`evalsuite.api`). The registry is torch-free (numpy only where
needed), so the controller and the reports can use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from .registry import Registry

_EPS = 1e-9  # float products such as 2400 * (1056 / 1800) land a hair above an exact multiple


class CostModel(Protocol):
    name: str

    def image_tokens(self, width: int, height: int) -> int:
        """Billed image tokens for one image of ``width`` x ``height`` pixels."""


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 28 * 28 * 1280) -> tuple[int, int]:
    """(height, width) Qwen's processor resizes an image to: multiples of ``factor``, pixels within
    [min_pixels, max_pixels], aspect ratio kept as closely as the rounding allows.

    The same arithmetic as ``transformers.models.qwen2_vl.image_processing_qwen2_vl.smart_resize``
    (and qwen-vl-utils); the defaults are that processor's (up to 1280 tokens of 28 px).

    >>> smart_resize(1000, 500)
    (1008, 504)
    >>> smart_resize(4000, 3000)  # over the pixel cap: scaled down, floored to multiples of 28
    (1148, 840)
    >>> smart_resize(20, 20)  # under min_pixels: scaled up, ceiled
    (56, 56)
    """
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class QwenVL:
    """Qwen-VL family: ``(h/factor) * (w/factor) + 2`` after :func:`smart_resize`.

    >>> QwenVL().image_tokens(500, 1000)   # 1008 x 504 px -> 36 x 18 cells
    650
    >>> QwenVL().image_tokens(3000, 4000)  # capped: 41 x 30 cells
    1232
    >>> QWEN3_VL.image_tokens(500, 1000)   # 32-px cells: 992 x 512 -> 31 x 16
    498
    """

    name: str = "qwen2_vl"
    factor: int = 28
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    special_tokens: int = 2  # <|vision_start|> and <|vision_end|>

    def image_tokens(self, width: int, height: int) -> int:
        h, w = smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)
        return (h // self.factor) * (w // self.factor) + self.special_tokens


# Qwen3-VL's released preprocessor: 16-px patches merged 2x2, 64 to 16384 tokens
QWEN3_VL = QwenVL("qwen3_vl", factor=32, min_pixels=64 * 32 * 32, max_pixels=16384 * 32 * 32)


@dataclass(frozen=True)
class GPT4oTiles:
    """GPT-4o (and GPT-4.1 full size) ``detail="high"``: fit in 2048x2048, short side down to 768,
    then ``base + per_tile * tiles`` with 512-px tiles; ``detail="low"`` costs ``base``.

    Images are only scaled down, never up (a 500 x 500 image is one tile).

    >>> GPT4oTiles().image_tokens(1024, 1024)   # 768 x 768: 2 x 2 tiles
    765
    >>> GPT4oTiles().image_tokens(2048, 4096)   # 1024 x 2048 -> 768 x 1536: 2 x 3 tiles
    1105
    >>> GPT4oTiles().image_tokens(500, 500)
    255
    >>> GPT4oTiles(detail="low").image_tokens(4000, 3000)
    85
    """

    name: str = "gpt4o"
    base: int = 85
    per_tile: int = 170
    detail: str = "high"

    def image_tokens(self, width: int, height: int) -> int:
        if self.detail == "low":
            return self.base
        w, h = float(width), float(height)
        if max(w, h) > 2048:
            s = 2048 / max(w, h)
            w, h = w * s, h * s
        if min(w, h) > 768:
            s = 768 / min(w, h)
            w, h = w * s, h * s
        tiles = math.ceil(w / 512 - _EPS) * math.ceil(h / 512 - _EPS)
        return self.base + self.per_tile * tiles


@dataclass(frozen=True)
class Patches32:
    """GPT-4.1-mini/nano-style billing: 32-px patches covering the image, at most ``cap``; an image needing
    more is scaled down (aspect kept) until its patches fit; tokens = patches * ``multiplier``.

    >>> Patches32().image_tokens(1024, 1024)
    1024
    >>> Patches32().image_tokens(1800, 2400)  # scaled to 1056 x 1408: 33 x 44 patches
    1452
    >>> Patches32("gpt41_mini", multiplier=1.62).image_tokens(1024, 1024)
    1659
    """

    name: str = "patches32"
    patch: int = 32
    cap: int = 1536
    multiplier: float = 1.0

    def patches(self, width: int, height: int) -> int:
        p = self.patch
        raw = math.ceil(width / p) * math.ceil(height / p)
        if raw > self.cap:
            # shrink to about `cap` patches, then a bit more so that whole patches cover the short fit
            r = math.sqrt(p * p * self.cap / (width * height))
            r *= min(math.floor(width * r / p) / (width * r / p), math.floor(height * r / p) / (height * r / p))
            raw = math.ceil(width * r / p - _EPS) * math.ceil(height * r / p - _EPS)
        return min(raw, self.cap)

    def image_tokens(self, width: int, height: int) -> int:
        return int(round(self.patches(width, height) * self.multiplier))


@dataclass(frozen=True)
class FixedGrid:
    """An encoder that resizes every image to ``size`` x ``size`` (the local encoders here):
    ``(size / patch)^2`` tokens whatever the image.

    >>> FixedGrid(size=224, patch=14).image_tokens(10, 5000)
    256
    """

    name: str = "fixed_grid"
    size: int = 224
    patch: int = 14

    def image_tokens(self, width: int, height: int) -> int:
        return (self.size // self.patch) ** 2


COST_MODELS: Registry[CostModel] = Registry("cost model", "evalsuite.cost_models")
COST_MODELS.register("qwen2_vl", QwenVL())
COST_MODELS.register("qwen2_5_vl", QwenVL("qwen2_5_vl"))
COST_MODELS.register("qwen3_vl", QWEN3_VL)
COST_MODELS.register("gpt4o", GPT4oTiles())
COST_MODELS.register("gpt4o_low", GPT4oTiles("gpt4o_low", detail="low"))
COST_MODELS.register("gpt41", GPT4oTiles("gpt41"))
COST_MODELS.register("patches32", Patches32())  # the multipliers: OpenAI's vision cost table
COST_MODELS.register("gpt41_mini", Patches32("gpt41_mini", multiplier=1.62))
COST_MODELS.register("gpt41_nano", Patches32("gpt41_nano", multiplier=2.46))
COST_MODELS.register("o4_mini", Patches32("o4_mini", multiplier=1.72))
COST_MODELS.register("fixed_grid", FixedGrid())


def image_tokens(model: str | CostModel, width: int, height: int) -> int:
    """Billed image tokens of a ``width`` x ``height`` image under ``model`` (a name or an object).

    >>> image_tokens("qwen2_vl", 28 * 10, 28 * 20)
    202
    """
    return (COST_MODELS.get(model) if isinstance(model, str) else model).image_tokens(int(width), int(height))


def bill_kpis(original_sizes: list[tuple[int, int]], sent_sizes: list[tuple[int, int]],
              models: tuple[str, ...] = ("qwen2_vl", "gpt4o")) -> dict[str, float]:
    """Billed-image-token KPIs of a case: per cost model, the mean tokens per image of the originals
    (``billed_tokens_<model>_before``), of what is sent (``_after``) and the saving in percent
    (``_reduction_pct``). Sizes are (width, height) per sample, in the same order.

    A method that drops tokens but sends the original image saves nothing:

    >>> bill_kpis([(1000, 500)], [(1000, 500)])["billed_tokens_qwen2_vl_reduction_pct"]
    0.0
    >>> k = bill_kpis([(1000, 2000)], [(500, 1000)], models=("qwen2_vl",))
    >>> k["billed_tokens_qwen2_vl_before"], k["billed_tokens_qwen2_vl_after"]
    (1252.0, 650.0)
    """
    if len(original_sizes) != len(sent_sizes):
        raise ValueError(f"{len(original_sizes)} original sizes but {len(sent_sizes)} sent sizes")
    kpis: dict[str, float] = {}
    if not original_sizes:
        return kpis
    for name in models:
        before = sum(image_tokens(name, *s) for s in original_sizes) / len(original_sizes)
        after = sum(image_tokens(name, *s) for s in sent_sizes) / len(sent_sizes)
        kpis[f"billed_tokens_{name}_before"] = float(before)
        kpis[f"billed_tokens_{name}_after"] = float(after)
        kpis[f"billed_tokens_{name}_reduction_pct"] = 100.0 * (1.0 - after / before) if before else float("nan")
    return kpis
