"""Compression methods, registered by name. Each is a pure torch module.

A new method is one file plus one line here (or an ``evalsuite.methods``
entry point); the family patches in :mod:`evalsuite.patch` run any of them.
Every entry is a lazy ``"module:attr"`` string, so that knowing the names
imports no torch (the pytest-xdist controller checks matrix files with them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..registry import Registry

if TYPE_CHECKING:
    from .base import Compressor

METHODS: Registry[type[Compressor]] = Registry("method", "evalsuite.methods")
METHODS.register("none", "evalsuite.methods.base:Compressor")
METHODS.register("tome", "evalsuite.methods.tome:ToMe")
METHODS.register("v2drop", "evalsuite.methods.v2drop:V2Drop")
METHODS.register("avit", "evalsuite.methods.avit:AViT")
METHODS.register("random", "evalsuite.methods.random_drop:RandomDrop")
METHODS.register("downscale", "evalsuite.methods.downscale:Downscale")
METHODS.register("visionzip", "evalsuite.vlm.methods:VisionZip")  # VLM cases only: before the language model
METHODS.register("divprune", "evalsuite.vlm.methods:DivPrune")  # VLM cases only: before the language model


def build(name: str, params: dict[str, Any] | None = None, num_layers: int = 12, seed: int = 0) -> Compressor:
    """Instantiate method ``name`` for an encoder of ``num_layers`` blocks."""
    return METHODS.get(name)(params=dict(params or {}), num_layers=num_layers, seed=seed)
