"""``crop``, ``slim`` and ``pack``: methods that change only the image that is sent.

The encoder is left as it is (these methods compress nothing inside it: a local
encoder that resizes every image to S x S sees as many tokens as before); what
shrinks is the image handed to a hosted model, and so its bill. The work is in
:mod:`evalsuite.image_side`; :meth:`ImageSide.send` is the only hook, and the
engine calls it on the original image. Parameters: ``target``, the cost model
guarding the bill (:mod:`evalsuite.billing`, default ``qwen2_vl``), and ``cell``,
the side in pixels of the cells that are kept or dropped (default 28, Qwen's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import Compressor, fmt


@dataclass
class ImageSide(Compressor):
    insertion: ClassVar[frozenset[str]] = frozenset({"image"})  # where the method acts: the input image

    def __post_init__(self) -> None:
        from ..billing import COST_MODELS

        unknown = set(self.params) - {"target", "cell"}
        if unknown:
            raise ValueError(f"{self.name}: unknown parameter(s) {sorted(unknown)}; takes target, cell")
        if str(self.params.get("target", "qwen2_vl")) not in COST_MODELS:
            raise ValueError(f"{self.name}: target {self.params['target']!r} is not a cost model "
                             f"({', '.join(COST_MODELS.names())})")
        if int(self.params.get("cell", 28)) < 1:
            raise ValueError(f"{self.name}: cell must be a positive number of pixels")

    @property
    def id_part(self) -> str:
        cell = int(self.params.get("cell", 28))
        target = str(self.params.get("target", "qwen2_vl"))
        return self.name + (f"_c{fmt(cell)}" if cell != 28 else "") + (f"_{target}" if target != "qwen2_vl" else "")

    @property
    def is_zero(self) -> bool:
        return False  # the sent image differs; the encoder forward is the unpatched one either way

    def send(self, image, plan=None):
        """The image to send for ``image`` (PIL), guarded by the target's cost model: an
        :class:`evalsuite.image_side.Sent`."""
        from ..image_side import send

        return send(self.name, image, plan, target=str(self.params.get("target", "qwen2_vl")),
                    cell=int(self.params.get("cell", 28)))


@dataclass
class Crop(ImageSide):
    name = "crop"


@dataclass
class Slim(ImageSide):
    name = "slim"


@dataclass
class Pack(ImageSide):
    name = "pack"
