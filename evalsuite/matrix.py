"""Case-matrix files (``cases/*.toml``) -> one :class:`CaseSpec` per combination.

A matrix file::

    seed = 0                      # optional run settings
    batch_size = 8

    [models.dinov2_s14]           # the table name is the model id used in case ids
    image_size = 224              # every other key goes to the model factory
    # factory = "timm_vit"        # registry key; defaults to the id
    # device = "cuda"             # cases needing CUDA get the `gpu` marker

    [methods.none]
    [methods.tome]
    merge_factor = [0.5, 0.7]     # a list is a grid axis: one case per value
    # [[methods.tome]] arrays of tables declare several variants of one method

    [datasets.samples]
    # loader = "sroie"            # registry key; defaults to the id
    # limit = 20                  # every other key goes to the loader

Every error names the file and the key, and suggests the closest valid name.
"""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .registry import UnknownNameError

RUN_KEYS = {"seed": int, "batch_size": int, "timing_repeats": int, "timing_warmup": int}
DTYPES = ("float32", "float16", "bfloat16")


class MatrixError(ValueError):
    """A malformed case matrix; the message names the file and key."""


@dataclass(frozen=True)
class ModelSpec:
    id: str
    factory: str
    image_size: int
    device: str  # "auto", "cpu" or "cuda"
    dtype: str
    params: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def needs_gpu(self) -> bool:
        return self.device.startswith("cuda")


@dataclass(frozen=True)
class DatasetSpec:
    id: str
    loader: str
    params: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class CaseSpec:
    """One model x method(+params) x dataset combination."""

    model: ModelSpec
    method: str
    params: dict[str, Any]
    method_id: str  # e.g. "tome_f0.5"
    dataset: DatasetSpec
    settings: dict[str, int]
    source: str  # matrix file

    @property
    def id(self) -> str:
        return f"{self.model.id}-{self.method_id}-{self.dataset.id}"


def load(paths: list[Path], defaults: dict[str, int] | None = None) -> list[CaseSpec]:
    """Parse matrix files; duplicated case ids across files are an error."""
    cases: dict[str, CaseSpec] = {}
    for path in paths:
        for case in _load_file(Path(path), dict(defaults or {})):
            if case.id in cases:
                raise MatrixError(f"{path}: case {case.id} is also declared in {cases[case.id].source}")
            cases[case.id] = case
    return list(cases.values())


def _load_file(path: Path, settings: dict[str, int]) -> list[CaseSpec]:
    from .data.datasets import DATASETS
    from .methods import METHODS, build
    from .models import MODELS

    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MatrixError(f"{path}: case matrix file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise MatrixError(f"{path}: malformed TOML: {exc}") from None

    unknown = set(raw) - set(RUN_KEYS) - {"models", "methods", "datasets"}
    if unknown:
        raise MatrixError(f"{path}: unknown key(s) {sorted(unknown)}; expected "
                          f"models, methods, datasets, {', '.join(RUN_KEYS)}")
    for key, kind in RUN_KEYS.items():
        if key in raw:
            if not isinstance(raw[key], kind) or raw[key] < 0:
                raise MatrixError(f"{path}: {key} must be a non-negative {kind.__name__}")
            settings[key] = raw[key]
    for section in ("models", "methods", "datasets"):
        if not isinstance(raw.get(section), dict) or not raw[section]:
            raise MatrixError(f"{path}: [{section}.NAME] tables are required (none found)")

    models = [_model(path, mid, table, MODELS) for mid, table in raw["models"].items()]
    datasets = [_dataset(path, did, table, DATASETS) for did, table in raw["datasets"].items()]
    methods: list[tuple[str, dict[str, Any], str]] = []
    for name, tables in raw["methods"].items():
        where = f"{path}: [methods.{name}]"
        if name not in METHODS:
            raise MatrixError(f"{where}: {UnknownNameError('method', name, METHODS.names())}")
        for table in tables if isinstance(tables, list) else [tables]:
            if not isinstance(table, dict):
                raise MatrixError(f"{where}: must be a table of parameters")
            for params in _grid(table):
                try:  # validate the parameters now, not in the middle of the run
                    method_id = build(name, params).id_part
                except (ValueError, TypeError) as exc:
                    raise MatrixError(f"{where}: {exc}") from None
                methods.append((name, params, method_id))

    return [
        CaseSpec(model, name, params, method_id, dataset, dict(settings), str(path))
        for model, (name, params, method_id), dataset in itertools.product(models, methods, datasets)
    ]


def _model(path: Path, model_id: str, table: Any, registry) -> ModelSpec:
    where = f"{path}: [models.{model_id}]"
    if not isinstance(table, dict):
        raise MatrixError(f"{where}: must be a table")
    params = dict(table)
    factory = params.pop("factory", model_id)
    if factory not in registry:
        raise MatrixError(f"{where} factory: {UnknownNameError('model', factory, registry.names())}")
    image_size = params.pop("image_size", 224)
    if not isinstance(image_size, int) or image_size <= 0:
        raise MatrixError(f"{where} image_size: must be a positive integer, got {image_size!r}")
    device = params.pop("device", "auto")
    if device not in ("auto", "cpu") and not str(device).startswith("cuda"):
        raise MatrixError(f"{where} device: {device!r} is not auto, cpu or cuda")
    dtype = params.pop("dtype", "float32")
    if dtype not in DTYPES:
        raise MatrixError(f"{where} dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    return ModelSpec(model_id, factory, image_size, device, dtype, params)


def _dataset(path: Path, dataset_id: str, table: Any, registry) -> DatasetSpec:
    where = f"{path}: [datasets.{dataset_id}]"
    if not isinstance(table, dict):
        raise MatrixError(f"{where}: must be a table")
    params = dict(table)
    loader = params.pop("loader", dataset_id)
    if loader not in registry:
        raise MatrixError(f"{where} loader: {UnknownNameError('dataset', loader, registry.names())}")
    return DatasetSpec(dataset_id, loader, params)


def _grid(table: dict[str, Any]) -> list[dict[str, Any]]:
    """Expand list values into the cartesian product, keeping key order.

    >>> _grid({"a": [1, 2], "b": 3})
    [{'a': 1, 'b': 3}, {'a': 2, 'b': 3}]
    """
    axes = [(k, v if isinstance(v, list) and k != "layers" else [v]) for k, v in table.items()]
    return [dict(zip([k for k, _ in axes], combo)) for combo in itertools.product(*[v for _, v in axes])]
