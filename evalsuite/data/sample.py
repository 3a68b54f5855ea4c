"""One evaluation sample: an image, its document type and optional ground truth."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

DOC_TYPES = ("receipt", "document", "screenshot", "photo", "infographic")


class SampleError(Exception):
    """A sample that cannot be used; the message names the sample and why."""


@dataclass(frozen=True)
class Sample:
    """An image to evaluate.

    ``load`` returns an RGB :class:`PIL.Image.Image` (orientation applied) or
    raises :class:`SampleError` naming the sample. ``reference_text`` is the
    ground-truth page text (None where the dataset has none); ``fields`` holds
    key fields such as SROIE's company/date/address/total.
    """

    sample_id: str
    dataset: str
    doc_type: str
    load: Callable[[], Image.Image] = field(compare=False, repr=False)
    reference_text: str | None = None
    fields: dict[str, str] | None = None
    source: Path | None = None

    def __post_init__(self) -> None:
        if self.doc_type not in DOC_TYPES:
            raise ValueError(f"sample {self.sample_id}: doc_type {self.doc_type!r} not in {DOC_TYPES}")
