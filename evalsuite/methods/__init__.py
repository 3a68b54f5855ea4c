"""Compression methods, registered by name: each entry is the method's torch-free spec class.

A method is a spec (:class:`~evalsuite.methods.spec.MethodSpec`: parameters,
case-id part, token schedule, insertion points) and its hooks (a
:class:`~evalsuite.methods.base.Compressor`, torch), which the spec builds at the
model's real depth. A new method is a spec, its hooks and one line here (or an
``evalsuite.methods`` entry point naming the spec). Entries are lazy
``"module:attr"`` strings, and the specs import no torch, so the pytest-xdist
controller checks matrix files with them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..registry import Registry

if TYPE_CHECKING:
    from .base import Compressor
    from .spec import MethodSpec

METHODS: Registry[type[MethodSpec]] = Registry("method", "evalsuite.methods")
METHODS.register("none", "evalsuite.methods.spec:NoneSpec")
METHODS.register("tome", "evalsuite.methods.tome.spec:ToMeSpec")
METHODS.register("v2drop", "evalsuite.methods.spec:V2DropSpec")
METHODS.register("fastv", "evalsuite.methods.spec:FastVSpec")  # VLM cases only: inside the language model
METHODS.register("avit", "evalsuite.methods.spec:AViTSpec")
METHODS.register("random", "evalsuite.methods.spec:RandomSpec")
METHODS.register("downscale", "evalsuite.methods.spec:DownscaleSpec")
METHODS.register("visionzip", "evalsuite.methods.spec:VisionZipSpec")  # VLM cases only: before the language model
METHODS.register("divprune", "evalsuite.methods.spec:DivPruneSpec")  # VLM cases only: before the language model
METHODS.register("crop", "evalsuite.methods.spec:CropSpec")  # image-side: what is sent to a hosted model
METHODS.register("slim", "evalsuite.methods.spec:SlimSpec")
METHODS.register("pack", "evalsuite.methods.spec:PackSpec")


def spec_of(name: str, params: dict[str, Any] | None = None) -> MethodSpec:
    """Method ``name`` with ``params``, checked (``ParamError`` names a bad key; no torch)."""
    return METHODS.get(name)(params)


def build(name: str, params: dict[str, Any] | None = None, num_layers: int = 12, seed: int = 0) -> Compressor:
    """The hooks of method ``name`` for an encoder of ``num_layers`` blocks."""
    return spec_of(name, params).build(num_layers, seed)
