"""Method specs: what a compression method is, without torch.

A method is two classes. Its *spec* (a :class:`MethodSpec` subclass, here or in
the method's own torch-free module, e.g. :mod:`evalsuite.methods.tome.spec`) is
what the case matrix and the controller see: the parameters it accepts
(``PARAMS``, checked when the matrix is read, every error naming the key), the
case-id part (``tome_f0.5``), the token schedule behind the ideal speedup, the
do-nothing settings the parity tests run (``zero_params``) and where in a model
it can run (``insertion``). Its *hooks* (a :class:`~evalsuite.methods.base.Compressor`
subclass, imported lazily from ``hooks``) only compute; :meth:`MethodSpec.build`
makes them once the model's depth is known, and checks what depends on it.

A new method: a spec class, a hooks class, one ``METHODS.register`` line in
:mod:`evalsuite.methods` naming the spec. Nothing here imports torch.

>>> spec = V2DropSpec({"keep": 0.5, "layers": [14, 18, 22]})
>>> spec.id_part
'v2drop_k0.5'
>>> spec.check_depth(24)
>>> spec.check_depth(12)
Traceback (most recent call last):
...
evalsuite.params.ParamError: layers: [14, 18, 22] must be block indices < 11 for a model of 12 blocks
"""

from __future__ import annotations

import importlib
import math
from typing import TYPE_CHECKING, Any, ClassVar

from ..params import REQUIRED, Param, ParamError, Schema

if TYPE_CHECKING:
    from .base import Compressor

# Where a method can act. Encoder cases run in a standalone vision encoder's blocks; the VLM stages
# add "vision_tower" (inside a VLM's vision tower), "pre_llm" (between tower and language model),
# "in_llm" (inside the language model) and "image" (on the input image, before any model).
INSERTION_POINTS = frozenset({"encoder", "vision_tower", "pre_llm", "in_llm", "image"})


def fmt(value: float) -> str:
    """Short number for test ids: 0.5 -> '0.5', 8.0 -> '8'."""
    return f"{value:g}"


class MethodSpec:
    """One method with one parameter set; the base is the ``none`` method (compresses nothing).

    ``params`` are the matrix table's values, checked against ``PARAMS`` (a :class:`ParamError`
    names the key). Subclasses set ``name``, ``hooks`` (``"module:Class"``), ``PARAMS`` and
    ``zero_params``, and override what differs from "every token kept".
    """

    name: ClassVar[str] = "none"
    hooks: ClassVar[str] = "evalsuite.methods.base:Compressor"
    insertion: ClassVar[frozenset[str]] = frozenset({"encoder"})
    PARAMS: ClassVar[Schema] = Schema({})
    zero_params: ClassVar[tuple[dict[str, Any], ...]] = ({},)  # settings that compress nothing (parity)

    def __init__(self, params: dict[str, Any] | None = None):
        self.params = self.PARAMS.check(dict(params or {}))
        self.validate()

    def validate(self) -> None:
        """Checks across parameters, once each is known to fit its declaration; raise :class:`ParamError`."""

    def check_depth(self, num_layers: int) -> None:
        """Checks that need the model's depth (``num_layers`` blocks); raise :class:`ParamError`."""

    def check_lm_depth(self, num_layers: int) -> None:
        """Checks of an in-LM setting against a language model of ``num_layers`` layers (the matrix runs
        them where the model's depth is known without loading it); raise :class:`ParamError`."""

    # -- what the controller and the reports read --------------------------------------
    @property
    def id_part(self) -> str:
        """The method's part of the case id (``tome_f0.5``)."""
        return self.name

    @property
    def is_zero(self) -> bool:
        """True when this setting compresses nothing (the parity setting)."""
        return True

    @property
    def input_scale(self) -> float:
        """Factor applied to the input image side before the encoder (``downscale``)."""
        return 1.0

    def schedule(self, num_patches: int, num_prefix: int, num_layers: int) -> list[int]:
        """Patch tokens entering the attention and the MLP of each of ``num_layers`` blocks, flattened
        ``[attn_0, mlp_0, attn_1, mlp_1, ...]``; the FLOP model behind the ideal speedup reads it."""
        return [num_patches] * (2 * num_layers)

    # -- the hooks --------------------------------------------------------------------
    def build(self, num_layers: int, seed: int = 0) -> Compressor:
        """The hooks for a model of ``num_layers`` blocks (imports them, hence torch)."""
        self.check_depth(num_layers)
        module, _, attr = self.hooks.partition(":")
        return getattr(importlib.import_module(module), attr)(self, num_layers, seed)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.params == self.params

    def __hash__(self) -> int:
        return hash((type(self), repr(sorted(self.params.items()))))


def stage_counts(patches: int, keep: float, stages: int) -> list[int]:
    """Patch tokens left after each of ``stages`` equal-ratio drop stages.

    The total keep fraction is ``keep``; each stage keeps ``keep ** (1/stages)``
    of what reaches it, so the last count is ``round(patches * keep)``.

    >>> stage_counts(256, 0.5, 3)
    [203, 161, 128]
    >>> stage_counts(256, 1.0, 3)
    [256, 256, 256]
    """
    return [max(1, round(patches * keep ** ((i + 1) / stages))) for i in range(stages)]


def default_layers(num_layers: int, stages: int = 3) -> list[int]:
    """Blocks after which staged methods reduce: evenly spread over the depth.

    >>> default_layers(12)
    [2, 5, 8]
    >>> default_layers(4)
    [0, 1, 2]
    """
    return [max(0, round(num_layers * (i + 1) / (stages + 1)) - 1) for i in range(stages)]


class StagedSpec(MethodSpec):
    """Methods that keep the top-scoring patch tokens after a few blocks (``layers``, 0-based, default
    spread evenly over the depth) so that the fraction ``keep`` is left at the end, each stage keeping
    the same ratio of what reaches it (:func:`stage_counts`)."""

    keep_param: ClassVar[str] = "keep"
    PARAMS = Schema({
        "keep": Param(float, REQUIRED, min=0.0, max=1.0, open_min=True, doc="total fraction of patch tokens kept"),
        "layers": Param(list, None, items=int, min=0, doc="blocks after which tokens are dropped"),
    })
    zero_params = ({"keep": 1.0},)

    def validate(self) -> None:
        layers = self.params.get("layers")
        if layers is not None and (not layers or any(b <= a for a, b in zip(layers, layers[1:]))):
            raise ParamError("layers", f"{layers} must be strictly increasing block indices")

    @property
    def keep_fraction(self) -> float:
        return self.params["keep"]

    def layers_for(self, num_layers: int) -> list[int]:
        return list(self.params.get("layers") or default_layers(num_layers))

    def check_depth(self, num_layers: int) -> None:
        # dropping after the last block would change nothing the encoder outputs
        layers = self.layers_for(num_layers)
        if any(layer >= num_layers - 1 for layer in layers):
            raise ParamError("layers", f"{layers} must be block indices < {num_layers - 1} "
                                       f"for a model of {num_layers} blocks")

    @property
    def id_part(self) -> str:
        return f"{self.name}_k{fmt(self.keep_fraction)}"

    @property
    def is_zero(self) -> bool:
        return self.keep_fraction == 1.0

    def schedule(self, num_patches: int, num_prefix: int, num_layers: int) -> list[int]:
        layers = self.layers_for(num_layers)
        counts = dict(zip(layers, stage_counts(num_patches, self.keep_fraction, len(layers))))
        tokens, out = num_patches, []
        for layer in range(num_layers):
            out += [tokens, tokens]
            tokens = counts.get(layer, tokens)
        return out


# The published in-LM V2Drop schedules: (LM layers before which visual tokens drop, keep ratios relative
# to the visual tokens still present). Here, torch-free, so the matrix checks them against a model's depth;
# evalsuite.vlm.lm_drop runs them.
V2DROP_PRESETS: dict[str, tuple[tuple[int, ...], tuple[float, ...]]] = {
    "llava": ((3, 17, 22), (0.5, 0.5, 0.0)),  # the paper's LLaVA-1.5 setting (llava/.../V2Drop.py)
    "qwen2_vl": ((3, 16, 22), (0.25, 0.05, 0.0)),  # the authors' Qwen2-VL code (Qwen2VL_V2Drop)
}
V2DROP_PRESET_NAMES = tuple(V2DROP_PRESETS)


def check_lm_layers(key: str, layers: list[int], num_layers: int) -> None:
    """In-LM drop layers must lie in ``1 .. num_layers - 1`` (the score needs the layer before; a drop at
    the depth would change nothing); else :class:`ParamError` naming ``key``."""
    for layer in layers:
        if not 1 <= layer < num_layers:
            raise ParamError(key, f"layer {layer} is not in 1..{num_layers - 1}: the language model has "
                                  f"{num_layers} layers")


class V2DropSpec(StagedSpec):
    """V2Drop in an encoder or a VLM's vision tower (``keep`` a total fraction, ``layers`` optional), or
    inside a VLM's language model (:mod:`evalsuite.vlm.lm_drop`): there ``layers`` are the LM layers
    before which tokens drop and ``keep`` one ratio for all or one per layer (each relative to the
    visual tokens still present, 0 allowed), or ``preset`` a published schedule. A ``preset`` or a
    list of ratios is an in-LM schedule only."""

    name = "v2drop"
    hooks = "evalsuite.methods.v2drop:V2Drop"
    insertion = frozenset({"encoder", "vision_tower", "in_llm"})
    PARAMS = Schema({
        "keep": Param(object, None, doc="total fraction kept (encoder, tower), or in-LM ratios per layer"),
        "layers": StagedSpec.PARAMS.params["layers"],
        "preset": Param(str, None, choices=V2DROP_PRESET_NAMES, doc="in-LM: a published schedule"),
    })
    _LM_RATIOS = Param(list, items=float, min=0.0, max=1.0)

    def validate(self) -> None:
        keep, preset = self.params.get("keep"), self.params.get("preset")
        if keep is None and preset is None:
            raise ParamError("keep", "is required (or give an in-LM preset: " + ", ".join(V2DROP_PRESET_NAMES) + ")")
        if isinstance(keep, list):
            self.params["keep"] = self._LM_RATIOS.check("keep", keep)
            if len(keep) != len(self.params.get("layers") or []) and preset is None:
                raise ParamError("keep", f"{len(keep)} ratios need as many layers, got layers = "
                                         f"{self.params.get('layers')}")
        elif keep is not None:
            self.params["keep"] = StagedSpec.PARAMS.params["keep"].check("keep", keep)
        super().validate()
        if self.in_llm_only:  # an instance attribute: the matrix pairs this setting with in-LM models only
            self.insertion = frozenset({"in_llm"})

    @property
    def in_llm_only(self) -> bool:
        return "preset" in self.params or isinstance(self.params.get("keep"), list)

    def check_depth(self, num_layers: int) -> None:
        if self.in_llm_only:
            raise ParamError("preset" if "preset" in self.params else "keep",
                             "an in-LM schedule runs inside a VLM's language model only (insertion in_llm)")
        super().check_depth(num_layers)

    def check_lm_depth(self, num_layers: int) -> None:
        layers = self.params.get("layers")
        if layers is None and "preset" in self.params:
            layers = V2DROP_PRESETS[self.params["preset"]][0]
        check_lm_layers("layers", list(layers or []), num_layers)

    @property
    def keep_fraction(self) -> float:
        keep = self.params.get("keep", 0.0)
        return math.prod(keep) if isinstance(keep, list) else keep

    @property
    def is_zero(self) -> bool:
        keep = self.params.get("keep")
        if "preset" in self.params and keep is None:
            return False
        return all(k == 1.0 for k in keep) if isinstance(keep, list) else keep == 1.0

    @property
    def id_part(self) -> str:
        if not self.in_llm_only:
            return super().id_part
        keep = self.params.get("keep")
        parts = [self.name] + ([self.params["preset"]] if "preset" in self.params else [])
        if self.params.get("layers"):
            parts.append("l" + "-".join(map(str, self.params["layers"])))
        if keep is not None:
            parts.append("k" + "-".join(fmt(k) for k in (keep if isinstance(keep, list) else [keep])))
        return "_".join(parts)


class FastVSpec(MethodSpec):
    """FastV inside a VLM's language model (:mod:`evalsuite.vlm.lm_drop`): before LM layer ``k`` keep the
    fraction ``keep`` of each image's visual tokens that the last token attended to most at layer ``k - 1``."""

    name = "fastv"
    insertion = frozenset({"in_llm"})
    PARAMS = Schema({"k": Param(int, 2, min=1, doc="the LM layer before which tokens drop (the paper's K)"),
                     "keep": Param(float, 0.5, min=0.0, max=1.0, open_min=True,
                                   doc="fraction of each image's visual tokens kept (the paper's 1 - R)")})
    zero_params = ({"keep": 1.0},)

    def check_lm_depth(self, num_layers: int) -> None:
        check_lm_layers("k", [self.params.get("k", 2)], num_layers)

    @property
    def id_part(self) -> str:
        return f"fastv_l{self.params.get('k', 2)}_k{fmt(self.params.get('keep', 0.5))}"

    @property
    def is_zero(self) -> bool:
        return self.params.get("keep", 0.5) == 1.0


class RandomSpec(StagedSpec):
    name = "random"
    hooks = "evalsuite.methods.random_drop:RandomDrop"
    insertion = frozenset({"encoder", "vision_tower", "pre_llm"})


class AViTSpec(StagedSpec):
    """``sparsity``: total fraction of patch tokens pruned (``keep = 1 - sparsity``)."""

    name = "avit"
    hooks = "evalsuite.methods.avit:AViT"
    insertion = frozenset({"encoder", "vision_tower"})
    keep_param = "sparsity"
    PARAMS = Schema({
        "sparsity": Param(float, REQUIRED, min=0.0, max=1.0, open_max=True, doc="total fraction pruned"),
        "layers": StagedSpec.PARAMS.params["layers"],
    })
    zero_params = ({"sparsity": 0.0},)

    @property
    def keep_fraction(self) -> float:
        return 1.0 - self.params["sparsity"]

    @property
    def id_part(self) -> str:
        return f"avit_s{fmt(self.params['sparsity'])}"


class DownscaleSpec(MethodSpec):
    """Resize the input so the encoder sees the fraction ``keep`` of the tokens."""

    name = "downscale"
    hooks = "evalsuite.methods.downscale:Downscale"
    insertion = frozenset({"encoder", "image"})
    PARAMS = Schema({"keep": Param(float, REQUIRED, min=0.0, max=1.0, open_min=True,
                                   doc="fraction of patch tokens left by the smaller input")})
    zero_params = ({"keep": 1.0},)

    @property
    def id_part(self) -> str:
        return f"downscale_k{fmt(self.params['keep'])}"

    @property
    def is_zero(self) -> bool:
        return self.params["keep"] == 1.0

    @property
    def input_scale(self) -> float:
        return math.sqrt(self.params["keep"])

    def grid_for(self, grid: tuple[int, int]) -> tuple[int, int]:
        """The smaller patch grid the resized input yields."""
        s = self.input_scale
        return max(1, round(grid[0] * s)), max(1, round(grid[1] * s))

    def schedule(self, num_patches: int, num_prefix: int, num_layers: int) -> list[int]:
        side = math.isqrt(num_patches)
        rows, cols = self.grid_for((side, num_patches // max(side, 1)))
        return [rows * cols] * (2 * num_layers)


class NoneSpec(MethodSpec):
    """The reference: every token kept, wherever a model offers to run a method (so every family,
    local or hosted, has its uncompressed case)."""

    insertion = INSERTION_POINTS


class PreLLMSpec(MethodSpec):
    """Selection of a VLM's visual tokens between its vision tower and its language model
    (:mod:`evalsuite.vlm.select`); ``keep`` is the fraction of visual tokens kept per image."""

    insertion = frozenset({"pre_llm"})
    PARAMS = Schema({"keep": Param(float, REQUIRED, min=0.0, max=1.0, open_min=True,
                                   doc="fraction of visual tokens kept per image")})
    zero_params = ({"keep": 1.0},)

    @property
    def id_part(self) -> str:
        return f"{self.name}_k{fmt(self.params['keep'])}"

    @property
    def is_zero(self) -> bool:
        return self.params["keep"] == 1.0


class VisionZipSpec(PreLLMSpec):
    """VisionZip-style: dominant tokens by attention received, the rest merged into contextual ones."""

    name = "visionzip"
    PARAMS = PreLLMSpec.PARAMS | {"contextual_ratio": Param(float, None, min=0.0, max=1.0,
                                                              doc="share of the kept tokens that are contextual")}


class DivPruneSpec(PreLLMSpec):
    """DivPrune: the kept tokens of maximal minimum pairwise distance."""

    name = "divprune"


class ImageSideSpec(MethodSpec):
    """``crop``, ``slim``, ``pack``: change only the image that is sent to a hosted model
    (:mod:`evalsuite.image_side`); the encoder in front of which they run is left as it is.

    ``target`` is the cost model that guards the bill (:mod:`evalsuite.billing`): an image that
    would cost more than the original is not sent; ``cell`` the side in pixels of the cells that are
    kept or dropped (Qwen's 28 by default)."""

    hooks = "evalsuite.methods.image_side:ImageSide"
    insertion = frozenset({"image"})
    PARAMS = Schema({"target": Param(str, "qwen2_vl", doc="cost model guarding the bill"),
                     "cell": Param(int, 28, min=1, doc="side in pixels of a kept or dropped cell")})
    zero_params = ()  # no setting sends the image unchanged: no parity case of their own

    @property
    def target(self) -> str:
        return self.params.get("target", "qwen2_vl")

    @property
    def cell(self) -> int:
        return self.params.get("cell", 28)

    def validate(self) -> None:
        from ..billing import COST_MODELS  # torch-free

        if self.target not in COST_MODELS:
            raise ParamError("target", f"{self.target!r} is not a cost model ({', '.join(COST_MODELS.names())})")

    @property
    def id_part(self) -> str:
        cell, target = self.cell, self.target
        return self.name + (f"_c{cell}" if cell != 28 else "") + (f"_{target}" if target != "qwen2_vl" else "")

    @property
    def is_zero(self) -> bool:
        return False  # the sent image differs; the encoder forward is the unpatched one either way


class CropSpec(ImageSideSpec):
    name = "crop"


class SlimSpec(ImageSideSpec):
    name = "slim"


class PackSpec(ImageSideSpec):
    name = "pack"
