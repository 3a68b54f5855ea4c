"""Golden snapshots: syrupy JSON snapshots under ``golden/``, numbers compared with a tolerance.

syrupy's :class:`~syrupy.extensions.json.JSONSnapshotExtension` compares the
serialized text, so the last bit of a float that a different CPU kernel
rounds otherwise fails the test. :class:`GoldenJSONExtension` keeps its
readable JSON files but compares the parsed values:

* strings, ints, bools and nulls must be equal (a changed OCR text or engine
  version is a real change);
* floats must agree within a :class:`Tolerance`: ``rel`` 1e-3 / ``abs`` 1e-4 by
  default, per field name through ``tolerances`` in a subclass;
* lists of rows that carry a ``sample_id`` are matched by it, so a failure
  names the sample and field with the expected and the actual value instead of
  printing a text diff of the whole file.

Snapshots live in ``<project root>/golden/<test file>/<test name>.json`` (the
project root is the nearest folder above the test file with a pyproject.toml
or .git), not ``__snapshots__`` beside the tests. Use it as::

    @pytest.fixture
    def snapshot(snapshot):
        return snapshot.use_extension(GoldenJSONExtension)

and create or refresh the files with ``pytest tests/test_golden.py --snapshot-update``.
A value within tolerance of its golden one counts as a match, so an update does
not rewrite a file for float noise.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import KeysView
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Mapping

from syrupy.extensions.json import JSONSnapshotExtension

if TYPE_CHECKING:
    from syrupy.location import PyTestLocation
    from syrupy.types import PropertyFilter, PropertyMatcher, SerializableData, SerializedData

MAX_REPORTED = 30  # differences listed in one failure; the rest are counted
_MISSING = object()


@dataclass(frozen=True)
class Tolerance:
    """Floats ``a`` and ``b`` match when ``|a - b| <= max(rel * max(|a|, |b|), abs)`` (:func:`math.isclose`).

    >>> Tolerance().accepts(51.301178, 51.301180), Tolerance(rel=0, abs=1e-3).accepts(51.30, 51.31)
    (True, False)
    """

    rel: float = 1e-3
    abs: float = 1e-4

    def accepts(self, expected: float, actual: float) -> bool:
        if math.isnan(expected) or math.isnan(actual):
            return math.isnan(expected) and math.isnan(actual)
        return math.isclose(expected, actual, rel_tol=self.rel, abs_tol=self.abs)

    def __str__(self) -> str:
        return f"rel {self.rel:g} / abs {self.abs:g}"


@dataclass(frozen=True)
class Difference:
    """One value that differs from its golden counterpart; ``where`` names sample and field."""

    where: str
    expected: Any
    actual: Any
    note: str = ""

    def lines(self) -> list[str]:
        if self.expected is _MISSING:
            return [f"{self.where}: not in the golden file, got {_show(self.actual)}"]
        if self.actual is _MISSING:
            return [f"{self.where}: missing, expected {_show(self.expected)}"]
        if isinstance(self.expected, str) and isinstance(self.actual, str) and "\n" in self.expected + self.actual:
            changed = [line for line in difflib.unified_diff(self.expected.splitlines(), self.actual.splitlines(),
                                                             "expected", "actual", lineterm="", n=0)
                       if not line.startswith("@@")]
            return [f"{self.where}: text differs"] + [f"    {line}" for line in changed]
        note = f" ({self.note})" if self.note else ""
        return [f"{self.where}: expected {_show(self.expected)}, got {_show(self.actual)}{note}"]


def compare(expected: Any, actual: Any, tolerance_for=lambda field: Tolerance()) -> list[Difference]:
    """Differences between parsed JSON values; ``tolerance_for(field name)`` gives each float's tolerance.

    >>> [d.where for d in compare([{"sample_id": "a", "x": [1.0, 2.0]}], [{"sample_id": "a", "x": [1.0, 2.5]}])]
    ['sample a, field x[1]']
    """
    found: list[Difference] = []
    _compare(expected, actual, _Where(), tolerance_for, found)
    return found


@dataclass(frozen=True)
class _Where:
    sample: str | None = None
    path: str = ""
    field: str | None = None  # the nearest dict key: what per-field tolerances are keyed by

    def key(self, key: str) -> "_Where":
        return _Where(self.sample, f"{self.path}.{key}" if self.path else key, key)

    def index(self, i: int) -> "_Where":
        return _Where(self.sample, f"{self.path}[{i}]", self.field)

    def row(self, sample_id: str) -> "_Where":
        return _Where(sample_id, self.path, self.field)

    def __str__(self) -> str:
        parts = ([f"sample {self.sample}"] if self.sample else []) + ([f"field {self.path}"] if self.path else [])
        return ", ".join(parts) or "(top level)"


def _compare(expected, actual, where: _Where, tolerance_for, found: list[Difference]) -> None:
    if _is_number(expected) and _is_number(actual) and (isinstance(expected, float) or isinstance(actual, float)):
        if not (isinstance(expected, float) and isinstance(actual, float)):
            found.append(Difference(str(where), expected, actual, "int vs float: the type changed"))
            return
        tolerance = tolerance_for(where.field)
        if not tolerance.accepts(expected, actual):
            found.append(Difference(str(where), expected, actual,
                                    f"off by {abs(actual - expected):.3g}, tolerance {tolerance}"))
        return
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in list(expected) + [k for k in actual if k not in expected]:
            _compare(expected.get(key, _MISSING), actual.get(key, _MISSING), where.key(key), tolerance_for, found)
        return
    if isinstance(expected, list) and isinstance(actual, list):
        if _keyed(expected) and _keyed(actual):
            _compare_rows(expected, actual, where, tolerance_for, found)
        elif len(expected) != len(actual):
            found.append(Difference(str(where), expected, actual, f"{len(expected)} items expected, {len(actual)} got"))
        else:
            for i, (e, a) in enumerate(zip(expected, actual)):
                _compare(e, a, where.index(i), tolerance_for, found)
        return
    if type(expected) is not type(actual) or expected != actual:
        found.append(Difference(str(where), expected, actual))


def _compare_rows(expected: list[dict], actual: list[dict], where: _Where, tolerance_for, found) -> None:
    """Rows matched by ``sample_id``: a failure names the sample, and one lost row does not shift the others."""
    got = {row["sample_id"]: row for row in actual}
    known = {row["sample_id"] for row in expected}
    for row in expected:
        _compare(row, got.get(row["sample_id"], _MISSING), where.row(row["sample_id"]), tolerance_for, found)
    for row in actual:
        if row["sample_id"] not in known:
            found.append(Difference(str(where.row(row["sample_id"])), _MISSING, row))
    order_expected = [r["sample_id"] for r in expected if r["sample_id"] in got]
    order_actual = [r["sample_id"] for r in actual if r["sample_id"] in known]
    if order_expected != order_actual:
        found.append(Difference(f"{where}: sample order" if where.path else "sample order",
                                order_expected, order_actual))


def _keyed(rows: list) -> bool:
    return bool(rows) and all(isinstance(r, dict) and isinstance(r.get("sample_id"), str) for r in rows)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _show(value: Any, limit: int = 120) -> str:
    if value is _MISSING:
        return "(missing)"
    text = repr(value) if isinstance(value, float) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def dumps(value: Any, level: int = 0) -> str:
    """JSON indented by two spaces, with lists of scalars on one line (an embedding head reads as a row).

    >>> print(dumps({"sample_id": "a", "head": [0.5, -1.0], "rows": [{"n": 1}]}))
    {
      "sample_id": "a",
      "head": [0.5, -1.0],
      "rows": [
        {
          "n": 1
        }
      ]
    }
    """
    inner, outer = "  " * (level + 1), "  " * level
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {dumps(v, level + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{outer}}}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + dumps(v, level + 1) for v in value) + f"\n{outer}]"
    return json.dumps(value, ensure_ascii=False)


def find_project_root(start: Path) -> Path:
    """The nearest folder at or above ``start`` with a pyproject.toml or .git, else ``start``."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").exists() or (folder / ".git").exists():
            return folder
    return start


class GoldenJSONExtension(JSONSnapshotExtension):
    """JSON snapshots under ``<project>/golden/``, compared value by value with float tolerance.

    Subclasses tune ``tolerance`` (every float) and ``tolerances`` (per field
    name: the dict key nearest to the value, so ``pooled_head`` covers each of
    its components).
    """

    golden_dirname: ClassVar[str] = "golden"
    tolerance: ClassVar[Tolerance] = Tolerance()
    tolerances: ClassVar[Mapping[str, Tolerance]] = {}

    @classmethod
    def dirname(cls, *, test_location: "PyTestLocation") -> str:
        root = find_project_root(Path(test_location.filepath).parent)
        return str(root / cls.golden_dirname / test_location.basename)

    @classmethod
    def sort(cls, iterable):
        """Dict keys keep their order (a row reads sample_id first); sets are still sorted."""
        return list(iterable) if isinstance(iterable, KeysView) else super().sort(iterable)

    def serialize(self, data: "SerializableData", *, exclude: "PropertyFilter | None" = None,
                  include: "PropertyFilter | None" = None, matcher: "PropertyMatcher | None" = None) -> str:
        data = self._filter(data=data, depth=0, path=(), exclude=exclude, include=include, matcher=matcher)
        return dumps(data) + "\n"

    def tolerance_for(self, field: str | None) -> Tolerance:
        return self.tolerances.get(field, self.tolerance) if field else self.tolerance

    def differences(self, serialized_data: "SerializedData", snapshot_data: "SerializedData") -> list[Difference] | None:
        """Differences of ``serialized_data`` (actual) from ``snapshot_data`` (golden); None if either is not JSON."""
        try:
            actual, expected = json.loads(serialized_data), json.loads(snapshot_data)
        except (TypeError, ValueError):
            return None
        return compare(expected, actual, self.tolerance_for)

    def matches(self, *, serialized_data: "SerializableData", snapshot_data: "SerializableData") -> bool:
        found = self.differences(serialized_data, snapshot_data)
        return serialized_data == snapshot_data if found is None else not found

    def diff_lines(self, serialized_data: "SerializedData", snapshot_data: "SerializedData") -> Iterator[str]:
        found = self.differences(serialized_data, snapshot_data)
        if found is None:  # no golden file yet, or not JSON: syrupy's own text diff
            yield from super().diff_lines(serialized_data, snapshot_data)
            return
        by_tolerance: dict[Tolerance, list[str]] = {}
        for name, tolerance in self.tolerances.items():
            by_tolerance.setdefault(tolerance, []).append(name)
        per_field = "".join(f"; {', '.join(names)}: {t}" for t, names in by_tolerance.items())
        yield (f"{len(found)} difference{'s' * (len(found) != 1)} from the golden file "
               f"(floats match within {self.tolerance}{per_field}):")
        for difference in found[:MAX_REPORTED]:
            for line in difference.lines():
                yield f"  {line}"
        if len(found) > MAX_REPORTED:
            yield f"  ... and {len(found) - MAX_REPORTED} more"


EMBEDDING_TOLERANCE = Tolerance(rel=0.0, abs=1e-3)


class BaselineGoldenExtension(GoldenJSONExtension):
    """Golden files of Stage A baselines (:mod:`evalsuite.baselines`).

    The embedding fields (``pooled_head``, ``pooled_norm``, ``mean_token_norm``)
    get an absolute 1e-3 and no relative slack. Measured on DINOv2 ViT-S/14 over
    the ``samples`` set (CPU, float32): other CPU kernels
    (``ATEN_CPU_CAPABILITY=default``, MKL/oneDNN held to SSE4) move them by at
    most 1.1e-5, batch size and thread count by 0, so 1e-3 leaves ~100x headroom.
    Real changes move at least one of every sample's first 8 components by more:
    1.5e-3 (pixels rounded through bfloat16), 4.5e-3 (a JPEG q95 re-encode),
    0.08 (bilinear instead of bicubic resize). A relative 1e-3 would let norms of
    ~50 drift by 0.05, ten times what the JPEG re-encode does to them, hence none.
    Everything else must be equal: image hashes (so any input pixel change
    fails), token counts, OCR text and engine versions; WER/CER keep the default.
    """

    tolerances = {"pooled_head": EMBEDDING_TOLERANCE, "pooled_norm": EMBEDDING_TOLERANCE,
                  "mean_token_norm": EMBEDDING_TOLERANCE}
