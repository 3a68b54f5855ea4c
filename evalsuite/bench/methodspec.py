"""Method specs on a benchmark's command line: ``NAME[@POINT][:KEY=VALUE,...]`` with TOML values.

A value is what a matrix file would hold (``0.5``, ``true``, ``[3,17]``, ``"llava"``); a bare word
(``preset=llava``) is a string, so specs need no shell-quoted quotes. Commas inside ``[...]`` or quotes
belong to the value. A list of specs (``--methods``) is separated by ``;``, or by ``,`` where the next
piece does not read ``KEY=VALUE`` (method names never hold ``=``), so ``random,tome`` and
``fastv@lm:k=2,keep=0.5,random`` both split as meant.

>>> parse_spec("v2drop@vision:layers=[3, 17],keep=0.5")
('v2drop@vision', {'layers': [3, 17], 'keep': 0.5})
>>> format_spec(*parse_spec("v2drop@lm:preset=llava"))
'v2drop@lm:preset=llava'
>>> split_specs("fastv@lm:k=2,keep=0.5,random;v2drop@vision:layers=[3]")
['fastv@lm:k=2,keep=0.5', 'random', 'v2drop@vision:layers=[3]']
"""

from __future__ import annotations

import json
import re
import tomllib

_PARAM = re.compile(r"\s*[A-Za-z_][\w-]*\s*=")  # a piece that continues the previous spec's parameters
_BARE = re.compile(r"[A-Za-z_][\w.-]*")  # a word TOML would reject as a value: read as a string


class SpecError(ValueError):
    """A method spec that does not parse; the message quotes the spec."""


def split_top(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside ``[...]`` and quotes; pieces stripped, empty ones dropped."""
    items, depth, quote, cur = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == sep and depth == 0:
            items.append(cur)
            cur = ""
            continue
        cur += ch
    return [i.strip() for i in items + [cur] if i.strip()]


def parse_params(rest: str, spec: str = "") -> dict:
    """``KEY=VALUE,...`` -> dict (TOML values; a bare word is a string)."""
    params = {}
    for item in split_top(rest, ","):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key:
            raise SpecError(f"{spec or rest}: {item!r} is not KEY=VALUE")
        if _BARE.fullmatch(value) and value not in ("true", "false", "inf", "nan"):
            value = json.dumps(value)
        try:
            params[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"{spec or rest}: {item!r}: {exc}") from None
    return params


def parse_spec(spec: str) -> tuple[str, dict]:
    """``"NAME[@POINT][:KEY=VALUE,...]"`` -> ``("NAME[@POINT]", params)``."""
    name, _, rest = spec.partition(":")
    name = name.strip()
    if not name:
        raise SpecError(f"{spec!r}: no method name")
    return name, parse_params(rest, spec)


def format_value(value) -> str:
    """A TOML value as ``parse_params`` reads it back, without spaces."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value if _BARE.fullmatch(value) else json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} in a method spec")


def format_spec(name: str, params: dict) -> str:
    """The inverse of :func:`parse_spec`: ``format_spec(*parse_spec(s))`` parses back to the same pair."""
    return name + (":" + ",".join(f"{k}={format_value(v)}" for k, v in params.items()) if params else "")


def split_specs(text: str) -> list[str]:
    """A ``--methods`` value -> one spec per method (see the module docstring)."""
    specs: list[str] = []
    for group in split_top(text, ";"):
        start = len(specs)
        for piece in split_top(group, ","):
            if _PARAM.match(piece):  # KEY=VALUE: a parameter of the spec before it
                if len(specs) == start or ":" not in specs[-1]:
                    raise SpecError(f"{text!r}: {piece!r} follows no NAME:KEY=VALUE spec")
                specs[-1] += "," + piece
            else:
                specs.append(piece)
    return specs
