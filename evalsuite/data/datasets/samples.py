"""``samples``: the built-in default set, for a fresh machine with no data store.

Four rendered pages (invoice, table, code screenshot, UI screen), one chart
and three photographs bundled with scikit-image, covering every doc type but
receipts. Nothing is downloaded.
"""

from __future__ import annotations

import functools
from pathlib import Path

from PIL import Image

from evalsuite.data.datasets.synthetic import rendered_sample
from evalsuite.data.sample import Sample

PHOTOS = ("astronaut", "coffee", "chelsea")


def _skimage_photo(name: str) -> Image.Image:
    from skimage import data  # a slow import, paid only when a photo is loaded

    return Image.fromarray(getattr(data, name)()).convert("RGB")


def load_samples(root: Path | None = None, limit: int | None = None) -> list[Sample]:
    samples = [
        rendered_sample("samples", "invoice", "invoice", 0),
        rendered_sample("samples", "table", "table", 0),
        rendered_sample("samples", "code", "code", 0, dark=True),
        rendered_sample("samples", "ui", "ui", 0),
        rendered_sample("samples", "infographic", "infographic", 0),
    ]
    samples += [Sample(f"samples/{name}", "samples", "photo", load=functools.partial(_skimage_photo, name))
                for name in PHOTOS]
    return samples[:limit]
