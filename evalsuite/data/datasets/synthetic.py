"""``synthetic``: a generated mix of invoices, tables, code, UI screens and charts.

Pages are rendered in process from their seed (charts are the slowest)
and memoised, so a sample's ``load`` is cheap after the listing rendered it.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path

from PIL import Image

from evalsuite.data.pages import RenderedPage, render_page
from evalsuite.data.sample import Sample

DOC_TYPES = {"invoice": "document", "table": "document", "code": "screenshot", "ui": "screenshot",
             "infographic": "infographic"}
KINDS = tuple(DOC_TYPES)


@functools.cache
def _render(kind: str, seed: int, style: tuple) -> RenderedPage:
    return render_page(kind, seed, **dict(style))


def _page_image(kind: str, seed: int, style: tuple) -> Image.Image:
    return _render(kind, seed, style).image.copy()  # a copy: callers may draw on what they load


def rendered_sample(dataset: str, name: str, kind: str, seed: int, **style) -> Sample:
    """A sample of page generator ``kind``; ``load`` returns a fresh copy of the page."""
    key = tuple(sorted(style.items()))
    page = _render(kind, seed, key)
    return Sample(f"{dataset}/{name}", dataset, DOC_TYPES[kind],
                  load=functools.partial(_page_image, kind, seed, key), reference_text=page.text)


def load_synthetic(root: Path | None = None, limit: int | None = None, n: int = 20, seed: int = 0) -> list[Sample]:
    """``n`` pages cycling through the page kinds, each with its own seed, font and resolution."""
    rng = random.Random(seed)
    samples = []
    for i in range(n if limit is None else min(n, limit)):
        kind = KINDS[i % len(KINDS)]
        style = {"dpi": rng.choice([144, 168])}
        if kind == "code":
            style["dark"] = rng.random() < 0.5
        else:
            style["family"] = rng.choice(["sans", "serif"])
        samples.append(rendered_sample("synthetic", f"{i:03d}-{kind}", kind, seed * 1000 + i, **style))
    return samples
