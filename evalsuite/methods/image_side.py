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

from .base import Compressor


@dataclass
class ImageSide(Compressor):
    """The hooks of every image-side method: ``send`` alone (its spec is
    :class:`~evalsuite.methods.spec.ImageSideSpec`)."""

    def send(self, image, plan=None):
        """The image to send for ``image`` (PIL), guarded by the target's cost model: an
        :class:`evalsuite.image_side.Sent`."""
        from ..image_side import send

        return send(self.name, image, plan, target=self.spec.target, cell=self.spec.cell)
