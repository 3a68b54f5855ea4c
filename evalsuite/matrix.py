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
Loading is two steps: :func:`read` checks a file without importing torch (all
that the pytest-xdist controller needs), :func:`expand` builds every method,
which checks its parameters (in the processes that run cases).
"""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

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


@dataclass(frozen=True)
class MethodSpec:
    """One parameter set of a method as its file declares it; building it (:func:`expand`) checks the values."""

    name: str
    params: dict[str, Any]
    where: str  # "FILE: [methods.NAME]", for errors


@dataclass(frozen=True)
class MatrixFile:
    """One matrix file, read and checked up to its methods' parameters (see :func:`read`)."""

    path: Path
    models: list[ModelSpec]
    methods: list[MethodSpec]
    datasets: list[DatasetSpec]
    settings: dict[str, int]


def load(paths: list[Path], defaults: dict[str, int] | None = None) -> list[CaseSpec]:
    """Parse matrix files into cases, every method's parameters checked; duplicated case ids across
    files are an error."""
    return expand(read(paths, defaults))


def read(paths: list[Path], defaults: dict[str, int] | None = None) -> list[MatrixFile]:
    """Parse matrix files and check everything but the methods' parameters: run settings, models,
    datasets and method names against their registries.

    Imports no torch (the method classes do): the pytest-xdist controller reads the matrix with this
    alone, since it runs no case and its start-up is on the critical path of every gate run; the
    workers :func:`expand` the files, which checks the rest.
    """
    return [_read_file(Path(path), dict(defaults or {})) for path in paths]


def expand(files: list[MatrixFile]) -> list[CaseSpec]:
    """Every model x method(+params) x dataset of ``files``. Each method is built here, which checks
    its parameters before the run starts and gives the method part of the case ids."""
    from .methods import build

    cases: dict[str, CaseSpec] = {}
    for file in files:
        methods: list[tuple[MethodSpec, str]] = []
        for method in file.methods:
            try:
                methods.append((method, build(method.name, method.params).id_part))
            except (ValueError, TypeError) as exc:
                raise MatrixError(f"{method.where}: {exc}") from None
        for model, (method, method_id), dataset in itertools.product(file.models, methods, file.datasets):
            case = CaseSpec(model, method.name, method.params, method_id, dataset, dict(file.settings),
                            str(file.path))
            if case.id in cases:
                raise MatrixError(f"{file.path}: case {case.id} is also declared in {cases[case.id].source}")
            cases[case.id] = case
    return list(cases.values())


def split_case_id(case_id: str, model_ids: Iterable[str], dataset_ids: Iterable[str]) -> tuple[str, str] | None:
    """``(model id, dataset id)`` of a case id ``MODEL-METHODID-DATASET``, without building any method:
    the longest model id it starts with and the longest dataset id it ends with; None when none fits.

    >>> split_case_id("dinov2_s14_518-tome_f0.5-sroie", ["dinov2_s14", "dinov2_s14_518"], ["sroie"])
    ('dinov2_s14_518', 'sroie')
    >>> split_case_id("dinov2_s14-sroie", ["dinov2_s14"], ["sroie"]) is None  # no method part
    True
    """
    model = max((m for m in model_ids if case_id.startswith(f"{m}-")), key=len, default=None)
    dataset = max((d for d in dataset_ids if case_id.endswith(f"-{d}")), key=len, default=None)
    if model is None or dataset is None or len(model) + len(dataset) + 2 >= len(case_id):
        return None
    return model, dataset


def _read_file(path: Path, settings: dict[str, int]) -> MatrixFile:
    from .data.datasets import DATASETS
    from .methods import METHODS
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
    methods: list[MethodSpec] = []
    for name, tables in raw["methods"].items():
        where = f"{path}: [methods.{name}]"
        if name not in METHODS:
            raise MatrixError(f"{where}: {UnknownNameError('method', name, METHODS.names())}")
        for table in tables if isinstance(tables, list) else [tables]:
            if not isinstance(table, dict):
                raise MatrixError(f"{where}: must be a table of parameters")
            methods.extend(MethodSpec(name, params, where) for params in _grid(table))
    return MatrixFile(path, models, methods, datasets, settings)


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
