"""``sroie``: scanned receipts (ICDAR 2019 SROIE) from ``<root>/sroie``.

Layout: ``img/NNN.jpg``, ``box/NNN.csv`` (one text line per row:
``x1,y1,...,x4,y4,transcript``, the transcript may hold commas) and
``key/NNN.json`` (company, date, address, total). The reference text is the
transcripts in reading order (:mod:`evalsuite.ocr.reading_order`), the same
rule the OCR output is ordered by. The store's README joins every transcript
with a newline; we join transcripts sharing a visual line with a space, which
the whitespace-collapsing normalisation makes the same thing.

A box or key file that is missing, not UTF-8 or malformed does not stop the
dataset: that one sample is kept, but its ``load`` raises a
:class:`~evalsuite.data.sample.SampleError` naming the file, so the harness
reports it instead of scoring against a guessed transcript.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from evalsuite.data.datasets import DatasetUnavailable, dataset_folder
from evalsuite.data.images import load_image
from evalsuite.data.sample import Sample, SampleError
from evalsuite.ocr.reading_order import ordered_text

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def read_boxes(path: Path) -> tuple[list[list[tuple[int, int]]], list[str]]:
    """Quadrilaterals [N, 4, 2] and transcripts of one box file; ValueError names what is wrong."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"box file {path} is not UTF-8 ({error.reason} at byte {error.start}); "
                         "refusing to guess its encoding") from None
    boxes, transcripts = [], []
    for number, row in enumerate(text.splitlines(), start=1):
        if not row.strip():
            continue
        *coords, transcript = row.split(",", 8)
        try:
            if len(coords) != 8:
                raise ValueError
            xy = [int(float(v)) for v in coords]
        except ValueError:
            raise ValueError(f"box file {path} line {number}: expected 8 coordinates then text, got {row!r}") from None
        boxes.append([(xy[i], xy[i + 1]) for i in range(0, 8, 2)])
        transcripts.append(transcript.strip())
    return boxes, transcripts


def _refuse(message: str):
    raise SampleError(message)


def _receipt(folder: Path, image: Path) -> Sample:
    sample_id = f"sroie/{image.stem}"
    box_file, key_file = folder / "box" / f"{image.stem}.csv", folder / "key" / f"{image.stem}.json"
    try:
        if not box_file.is_file():
            raise ValueError(f"box file {box_file} is missing")
        reference = ordered_text(*read_boxes(box_file))
        fields = None
        if key_file.is_file():
            try:
                fields = {k: str(v) for k, v in json.loads(key_file.read_text(encoding="utf-8")).items()}
            except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
                raise ValueError(f"key file {key_file} is unreadable: {error}") from None
    except ValueError as problem:
        return Sample(sample_id, "sroie", "receipt", source=image,
                      load=functools.partial(_refuse, f"sample {sample_id}: {problem}"))
    return Sample(sample_id, "sroie", "receipt", load=functools.partial(load_image, image, sample_id),
                  reference_text=reference, fields=fields, source=image)


def load_sroie(root: Path | None, limit: int | None = None) -> list[Sample]:
    folder = dataset_folder("sroie", root)
    images = sorted(p for p in (folder / "img").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DatasetUnavailable("sroie", f"no images under {folder / 'img'}")
    return [_receipt(folder, image) for image in images[:limit]]

