"""Datasets: name -> loader ``(root, limit, **options) -> list[Sample]``.

``root`` is the external data store (:func:`evalsuite.paths.data_root`), holding
one folder per dataset (``<root>/sroie``, ``<root>/photos``); built-in datasets
ignore it. ``limit`` keeps the first samples in a stable order. A loader whose
data is not on this machine raises :class:`DatasetUnavailable`, so the harness
skips just those cases, with the reason. One file per dataset; a new one is a
file plus a registration line here (or an ``evalsuite.datasets`` entry point).
"""

from __future__ import annotations

from pathlib import Path

from evalsuite.data.sample import Sample
from evalsuite.params import Param, Schema
from evalsuite.registry import Registry


class DatasetUnavailable(Exception):
    """A dataset whose data this machine does not have."""

    def __init__(self, name: str, reason: str):
        self.name, self.reason = name, reason
        super().__init__(f"dataset {name!r} unavailable: {reason}")


# Keys every loader takes; a registration declares its own beside them (``params=``), checked when
# the matrix is read (without torch) so that a typo or a bad value is a usage error naming the key.
LIMIT = {"limit": Param(int, None, min=1, doc="the first N samples, in a stable order")}

DATASETS: Registry = Registry("dataset", "evalsuite.datasets")
DATASETS.register("samples", "evalsuite.data.datasets.samples:load_samples", params=Schema(LIMIT))
DATASETS.register("synthetic", "evalsuite.data.datasets.synthetic:load_synthetic", params=Schema({
    **LIMIT, "n": Param(int, 20, min=1, doc="pages rendered"), "seed": Param(int, 0, min=0)}))
DATASETS.register("sroie", "evalsuite.data.datasets.sroie:load_sroie", params=Schema(LIMIT))
DATASETS.register("photos", "evalsuite.data.datasets.photos:load_photos", params=Schema(LIMIT))
DATASETS.register("text_pixels", "evalsuite.data.datasets.text_pixels:load_text_pixels", params=Schema({
    **LIMIT, "pages": Param(int, 16, min=1, doc="pages rendered"), "seed": Param(int, 0, min=0),
    "modes": Param(list, None, items=int, doc="square page sizes in px (DeepSeek-OCR: 512, 640, 1024, 1280)"),
    "font_sizes": Param(list, None, items=int, doc="font sizes in px"),
    "families": Param(list, None, items=str, doc="mono and/or proportional"),
    "kinds": Param(list, None, items=str, doc="log, code, prose, table"),
    "chars": Param(int, None, min=1, doc="characters of generated text per page"),
    "texts": Param(list, None, items=str, doc="texts to draw instead of generated ones")}))


def load_dataset(name: str, root: Path | None = None, limit: int | None = None, **options) -> list[Sample]:
    """The samples of dataset ``name`` (see the module docstring)."""
    return DATASETS.get(name)(root, limit, **options)


def dataset_folder(name: str, root: Path | None) -> Path:
    """``<root>/<name>``, or :class:`DatasetUnavailable` saying why it cannot be used."""
    if root is None:
        raise DatasetUnavailable(name, "no data root configured (set EVALSUITE_DATA or the data root option)")
    folder = Path(root) / name
    if not folder.is_dir():
        raise DatasetUnavailable(name, f"{folder} does not exist")
    return folder
