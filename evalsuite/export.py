"""Per-case ``.npz`` export: the images passed to the vision encoder, with masks.

For each sample: the model-input image (whole image resized to the model's
square input), the reconstruction of what survives compression at the same
size, the keep mask and the merge-group ids on the patch grid. Arrays are
stacked over samples; ``sample_ids`` gives the order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .data.sample import Sample, SampleError
from .models.base import EncoderOutput
from .ocr.reconstruct import reconstruct


def export_case(path: Path, samples: list[Sample], outputs: list[EncoderOutput], image_size: int) -> Path:
    plans = [plan for out in outputs for plan in out.plans]
    ids, originals, seen, keep, groups, scales = [], [], [], [], [], []
    for sample, plan in zip(samples, plans):
        try:
            image = sample.load().resize((image_size, image_size), Image.BICUBIC)
        except SampleError:
            continue  # already reported on the sample's record
        ids.append(sample.sample_id)
        originals.append(np.asarray(image))
        seen.append(np.asarray(reconstruct(image, plan)))
        keep.append(plan.keep_mask)
        groups.append(plan.group_ids)
        scales.append(plan.input_scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, sample_ids=np.array(ids), images=np.stack(originals), reconstructions=np.stack(seen),
                        keep_mask=np.stack(keep), group_ids=np.stack(groups), input_scale=np.array(scales))
    return path
