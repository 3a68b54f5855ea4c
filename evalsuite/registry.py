"""A small generic registry: name -> object, with lazy ``"module:attr"`` entries.

Every extension point of evalsuite (models, compression methods, datasets,
OCR engines, KPIs, sinks) is a :class:`Registry`. A new component is one file
plus one registration line; third parties register through the entry point
group ``evalsuite.<registry name>`` (for example ``evalsuite.methods``).

>>> r = Registry("colours")
>>> r.register("red", "builtins:str")
>>> r.get("red") is str
True
>>> r.get("rde")
Traceback (most recent call last):
...
evalsuite.registry.UnknownNameError: unknown colours 'rde'; did you mean 'red'? (known: red)
"""

from __future__ import annotations

import difflib
import importlib
from importlib import metadata
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that is not registered; the message suggests the closest one."""

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, known
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.4)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        super().__init__(f"unknown {kind} {name!r}{hint} (known: {', '.join(sorted(known))})")

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return self.args[0]


class Registry(Generic[T]):
    """Maps names to objects; entries may be lazy ``"package.module:attr"`` strings."""

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self._entries: dict[str, T | str] = {}
        self._meta: dict[str, dict] = {}
        self._group = entry_point_group
        self._entry_points_loaded = entry_point_group is None

    def register(self, name: str, obj: T | str | None = None, **meta) -> Callable[[T], T] | None:
        """Register ``obj`` under ``name``; without ``obj``, acts as a decorator.

        ``meta`` is what is known of the entry without importing it, read back with :meth:`meta`:
        e.g. ``params`` (a :class:`~evalsuite.params.Schema` of the keys a matrix table may give
        it, checked at collection) and, for models, ``insertion`` (where methods can run in it).
        """
        if meta:
            self._meta[name] = meta
        if obj is None:
            def decorator(target: T) -> T:
                self._add(name, target)
                return target
            return decorator
        self._add(name, obj)
        return None

    def meta(self, name: str) -> dict:
        """What ``name`` was registered with besides its object (empty for entry points)."""
        return self._meta.get(name, {})

    def _add(self, name: str, obj: T | str) -> None:
        if name in self._entries and self._entries[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = obj

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in metadata.entry_points(group=self._group):
            self._entries.setdefault(ep.name, ep.value)

    def get(self, name: str) -> T:
        self._load_entry_points()
        try:
            obj = self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, list(self._entries)) from None
        if isinstance(obj, str):
            module, _, attr = obj.partition(":")
            obj = getattr(importlib.import_module(module), attr)
            self._entries[name] = obj
        return obj

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self._load_entry_points()
        return iter(sorted(self._entries))

    def names(self) -> list[str]:
        return list(self)
