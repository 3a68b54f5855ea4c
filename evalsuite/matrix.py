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

Every key is checked when the file is read, against what its component declares
(:mod:`evalsuite.params`: run settings here, model factories and dataset loaders
in their registries, methods in their specs): an unknown key (with the closest
valid name), a wrong type or a value out of range is a :class:`MatrixError`
naming the file and key, which the plugin turns into a usage error (exit 4).
Nothing here imports torch: the pytest-xdist controller builds the same cases
as the workers. Checks that need a model's depth (a method's ``layers``) run
when the engine builds the method for the loaded model, with the same message.
"""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .params import Param, ParamError, Schema, unknown_key_message
from .registry import UnknownNameError

if TYPE_CHECKING:
    from .methods.spec import MethodSpec

RUN_SETTINGS = Schema({
    "seed": Param(int, 0, min=0, doc="seed of random methods and weights"),
    "batch_size": Param(int, 8, min=1, doc="samples per forward"),
    "timing_repeats": Param(int, 10, min=1, doc="timed forwards per case"),
    "timing_warmup": Param(int, 2, min=0, doc="untimed forwards before them"),
})
RUN_KEYS = tuple(RUN_SETTINGS.params)
DTYPES = ("float32", "float16", "bfloat16")
MODEL_KEYS = {  # what the matrix takes from a model table; the rest goes to the factory
    "factory": Param(str, None), "image_size": Param(int, 224, min=1),
    "device": Param(str, "auto"), "dtype": Param(str, "float32", choices=DTYPES),
}
DEFAULT_INSERTION = frozenset({"encoder", "image"})  # where methods run in a model whose registration says nothing:
# in its encoder, and on the image before it (an image-side method can run in front of any model)


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

    @cached_property
    def spec(self) -> MethodSpec:
        """The method's spec (torch-free); ``spec.build(num_layers, seed)`` gives its hooks."""
        from .methods import spec_of

        return spec_of(self.method, self.params)

    def build_method(self, num_layers: int, seed: int = 0):
        """The method's hooks for the loaded model's depth; a parameter that does not fit that depth
        is a :class:`MatrixError` naming this case's matrix file and the key."""
        try:
            return self.spec.build(num_layers, seed)
        except ParamError as exc:
            raise MatrixError(f"{self.source}: [methods.{self.method}] {exc} "
                              f"(model {self.model.id} has {num_layers} blocks)") from None


@dataclass(frozen=True)
class MethodEntry:
    """One parameter set of a method as its file declares it, checked (``spec``)."""

    name: str
    params: dict[str, Any]
    where: str  # "FILE: [methods.NAME]", for errors
    spec: MethodSpec


@dataclass(frozen=True)
class MatrixFile:
    """One matrix file, read and checked up to its methods' parameters (see :func:`read`)."""

    path: Path
    models: list[ModelSpec]
    methods: list[MethodEntry]
    datasets: list[DatasetSpec]
    settings: dict[str, int]


def load(paths: list[Path], defaults: dict[str, int] | None = None) -> list[CaseSpec]:
    """Parse matrix files into cases, every key checked; duplicated case ids across files are an error."""
    return expand(read(paths, defaults))


def read(paths: list[Path], defaults: dict[str, int] | None = None) -> list[MatrixFile]:
    """Parse matrix files and check every key: run settings, models, datasets and methods against
    what each declares. Imports no torch (see the module docstring)."""
    return [_read_file(Path(path), dict(defaults or {})) for path in paths]


def expand(files: list[MatrixFile]) -> list[CaseSpec]:
    """Every model x method(+params) x dataset of ``files``, each method run where its model offers
    one of its insertion points. Imports no torch."""
    from .models import MODELS

    cases: dict[str, CaseSpec] = {}
    for file in files:
        for model, method, dataset in itertools.product(file.models, file.methods, file.datasets):
            offered = MODELS.meta(model.factory).get("insertion", DEFAULT_INSERTION)
            if not method.spec.insertion & offered:
                raise MatrixError(f"{method.where}: {method.name} runs at {', '.join(sorted(method.spec.insertion))}; "
                                  f"model {model.id} ({model.factory}) offers {', '.join(sorted(offered))}")
            _check_lm_depth(model, method)
            case = CaseSpec(model, method.name, method.spec.params, method.spec.id_part, dataset,
                            dict(file.settings), str(file.path))
            case.__dict__["spec"] = method.spec  # the checked spec (cached_property's slot)
            if case.id in cases:
                raise MatrixError(f"{file.path}: case {case.id} is also declared in {cases[case.id].source}")
            cases[case.id] = case
    return list(cases.values())


def _check_lm_depth(model: ModelSpec, method: MethodEntry) -> None:
    """An in-LM setting against the model's language-model depth where its registration can tell it
    without loading (``lm_depth``); elsewhere the case checks it once the model is loaded."""
    from .models import MODELS

    spec = method.spec
    runs_in_lm = "in_llm" in spec.insertion and (model.params.get("insertion") == "lm" or spec.insertion == {"in_llm"})
    depth_of = MODELS.meta(model.factory).get("lm_depth")
    depth = depth_of(model.params) if runs_in_lm and depth_of is not None else None
    if depth is None:
        return
    try:
        spec.check_lm_depth(depth)
    except ParamError as exc:
        raise MatrixError(f"{method.where} {exc} (model {model.id})") from None


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

    sections = ("models", "methods", "datasets")
    for key in raw:
        if key not in RUN_SETTINGS.params and key not in sections:
            raise MatrixError(f"{path}: {key}: {unknown_key_message(key, [*sections, *RUN_KEYS])}")
    settings.update(_checked(f"{path}:", RUN_SETTINGS, {k: v for k, v in raw.items() if k in RUN_SETTINGS.params}))
    for section in sections:
        if not isinstance(raw.get(section), dict) or not raw[section]:
            raise MatrixError(f"{path}: [{section}.NAME] tables are required (none found)")

    models = [_model(path, mid, table, MODELS) for mid, table in raw["models"].items()]
    datasets = [_dataset(path, did, table, DATASETS) for did, table in raw["datasets"].items()]
    methods: list[MethodEntry] = []
    for name, tables in raw["methods"].items():
        where = f"{path}: [methods.{name}]"
        if name not in METHODS:
            raise MatrixError(f"{where}: {UnknownNameError('method', name, METHODS.names())}")
        spec_class = METHODS.get(name)
        for table in tables if isinstance(tables, list) else [tables]:
            if not isinstance(table, dict):
                raise MatrixError(f"{where}: must be a table of parameters")
            for params in _grid(table):
                try:
                    spec = spec_class(params)
                except ParamError as exc:
                    raise MatrixError(f"{where} {exc}") from None
                methods.append(MethodEntry(name, params, where, spec))
    return MatrixFile(path, models, methods, datasets, settings)


def _checked(where: str, schema: Schema | None, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` checked against ``schema`` (as given when there is none: an entry point's)."""
    if schema is None:
        return values
    try:
        return schema.check(values)
    except ParamError as exc:
        raise MatrixError(f"{where} {exc}") from None


def _model(path: Path, model_id: str, table: Any, registry) -> ModelSpec:
    where = f"{path}: [models.{model_id}]"
    if not isinstance(table, dict):
        raise MatrixError(f"{where}: must be a table")
    factory = table.get("factory", model_id)
    if not isinstance(factory, str) or factory not in registry:
        raise MatrixError(f"{where} factory: {UnknownNameError('model', str(factory), registry.names())}")
    declared = registry.meta(factory).get("params")
    schema = Schema(MODEL_KEYS) | declared if declared is not None else None
    if schema is None:  # an entry point that declares nothing: the matrix's own keys are still checked
        _checked(where, Schema(MODEL_KEYS), {k: v for k, v in table.items() if k in MODEL_KEYS})
    params = _checked(where, schema, dict(table))
    params.pop("factory", None)
    image_size = params.pop("image_size", 224)
    device = params.pop("device", "auto")
    if device not in ("auto", "cpu") and not str(device).startswith("cuda"):
        raise MatrixError(f"{where} device: {device!r} is not auto, cpu or cuda")
    dtype = params.pop("dtype", "float32")
    return ModelSpec(model_id, factory, image_size, device, dtype, params)


def _dataset(path: Path, dataset_id: str, table: Any, registry) -> DatasetSpec:
    where = f"{path}: [datasets.{dataset_id}]"
    if not isinstance(table, dict):
        raise MatrixError(f"{where}: must be a table")
    params = dict(table)
    loader = params.pop("loader", dataset_id)
    if not isinstance(loader, str) or loader not in registry:
        raise MatrixError(f"{where} loader: {UnknownNameError('dataset', str(loader), registry.names())}")
    return DatasetSpec(dataset_id, loader, _checked(where, registry.meta(loader).get("params"), params))


def _grid(table: dict[str, Any]) -> list[dict[str, Any]]:
    """Expand list values into the cartesian product, keeping key order.

    >>> _grid({"a": [1, 2], "b": 3})
    [{'a': 1, 'b': 3}, {'a': 2, 'b': 3}]
    """
    axes = [(k, v if isinstance(v, list) and k != "layers" else [v]) for k, v in table.items()]
    return [dict(zip([k for k, _ in axes], combo)) for combo in itertools.product(*[v for _, v in axes])]
