"""``photos``: photographs and natural images from ``<root>/photos`` (no reference text).

For these the interesting numbers are token reduction, feature similarity and
latency; OCR drift, where a picture holds text, is measured against the OCR of
the uncompressed image.
"""

from __future__ import annotations

import functools
from pathlib import Path

from evalsuite.data.datasets import DatasetUnavailable, dataset_folder
from evalsuite.data.images import load_image
from evalsuite.data.sample import Sample

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def load_photos(root: Path | None, limit: int | None = None) -> list[Sample]:
    folder = dataset_folder("photos", root)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetUnavailable("photos", f"no images in {folder}")
    stems = [p.stem for p in files]
    samples = []
    for path in files[:limit]:
        name = path.stem if stems.count(path.stem) == 1 else path.name  # a.jpg and a.png both present
        sample_id = f"photos/{name}"
        samples.append(Sample(sample_id, "photos", "photo", source=path,
                              load=functools.partial(load_image, path, sample_id)))
    return samples
