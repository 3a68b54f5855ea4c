"""Declared parameters: what a matrix table may hold, checked without importing torch.

Every component a case matrix configures (a method, a model factory, a dataset
loader, the run settings) declares its parameters as a :class:`Schema` of
:class:`Param` objects, registered beside it (``Registry.register(..., params=...)``
for factories and loaders, ``PARAMS`` on a method's spec). The matrix checks
every key against it at collection, so a typo, a wrong type or a value out of
range is a usage error naming the file and key before any model loads.

>>> schema = Schema({"limit": Param(int, None, min=1), "seed": Param(int, 0, min=0)})
>>> schema.check({"limit": 2})
{'limit': 2}
>>> schema.check({"limt": 2})
Traceback (most recent call last):
...
evalsuite.params.ParamError: limt: unknown key; did you mean 'limit'? (allowed: limit, seed)
>>> schema.check({"limit": 0})
Traceback (most recent call last):
...
evalsuite.params.ParamError: limit: must be >= 1, got 0
>>> schema.check({"limit": "x"})
Traceback (most recent call last):
...
evalsuite.params.ParamError: limit: must be an integer, got 'x'
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Iterable

REQUIRED = object()  # the default of a parameter that has none
_KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
               dict: "a table", list: "a list"}


class ParamError(ValueError):
    """A bad parameter; ``key`` names it (None for a problem of the whole table)."""

    def __init__(self, key: str | None, message: str):
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


@dataclass(frozen=True)
class Param:
    """One parameter: its type (``int``, ``float``, ``bool``, ``str``, ``dict`` or ``list`` of
    ``items``), its default (:data:`REQUIRED` when it has none; ``None`` when it may be left out),
    an optional range (``min``/``max``, ``open_min``/``open_max`` excluding the bound) and choices."""

    kind: type
    default: Any = None
    min: float | None = None
    max: float | None = None
    open_min: bool = False
    open_max: bool = False
    choices: tuple | None = None
    items: type | None = None  # element type of a list
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def check(self, key: str, value: Any) -> Any:
        """``value`` when it fits (an int where a float is asked becomes a float); else :class:`ParamError`."""
        if self.kind is list:
            if not isinstance(value, list):
                raise ParamError(key, f"must be a list, got {value!r}")
            return [self._scalar(f"{key}[{i}]", v, self.items or object) for i, v in enumerate(value)]
        return self._scalar(key, value, self.kind)

    def _scalar(self, key: str, value: Any, kind: type) -> Any:
        if kind is object:
            return value
        ok = (isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))) or (
            kind is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise ParamError(key, f"must be {_KIND_NAMES.get(kind, kind.__name__)}, got {value!r}")
        if kind is float:
            value = float(value)
        if self.choices is not None and value not in self.choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in self.choices], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ParamError(key, f"{value!r} is not one of {', '.join(map(str, self.choices))}{hint}")
        if self.min is not None and (value < self.min or (self.open_min and value == self.min)):
            raise ParamError(key, f"must be {'>' if self.open_min else '>='} {self.min:g}, got {value!r}")
        if self.max is not None and (value > self.max or (self.open_max and value == self.max)):
            raise ParamError(key, f"must be {'<' if self.open_max else '<='} {self.max:g}, got {value!r}")
        return value


class Schema:
    """The parameters of one component. ``check`` returns the given values checked (defaults are
    not filled in: the component applies its own)."""

    def __init__(self, params: dict[str, Param]):
        self.params = dict(params)

    def check(self, values: dict[str, Any]) -> dict[str, Any]:
        for key in values:
            if key not in self.params:
                raise ParamError(key, unknown_key_message(key, self.params))
        for key, param in self.params.items():
            if param.required and key not in values:
                raise ParamError(key, "is required")
        return {key: self.params[key].check(key, value) for key, value in values.items()}

    def __or__(self, other: "Schema | dict[str, Param]") -> "Schema":
        more = other.params if isinstance(other, Schema) else other
        return Schema({**self.params, **more})


def unknown_key_message(key: str, allowed: Iterable[str]) -> str:
    """``unknown key; did you mean 'limit'? (allowed: ...)``."""
    allowed = sorted(allowed)
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key{hint} (allowed: {', '.join(allowed) or 'none'})"
