"""Per-case ``.npz`` export: the images passed to the vision encoder, with masks.

For each sample: the model-input image (whole image resized to the model's
square input), the reconstruction of what survives compression at the same
size, the keep mask and the merge-group ids on the patch grid. Arrays are
stacked over samples; ``sample_ids`` gives the order. ``sent_sizes`` [N, 2] is the
(width, height) of the image a hosted model is sent (:mod:`evalsuite.image_side`);
for a method acting on the image (``crop``, ``slim``, ``pack``) that image itself is
stored as PNG bytes under ``sent_png_<i>`` (``Image.open(io.BytesIO(z["sent_png_0"].tobytes()))``).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from .data.sample import Sample, SampleError
from .models.base import EncoderOutput
from .ocr.reconstruct import reconstruct


def export_case(path: Path, samples: list[Sample], outputs: list[EncoderOutput], image_size: int,
                sent_sizes: list[tuple[int, int]] | None = None, sent: list[Image.Image] | None = None) -> Path:
    plans = [plan for out in outputs for plan in out.plans]
    ids, originals, seen, keep, groups, scales, sizes, pngs = [], [], [], [], [], [], [], {}
    for i, (sample, plan) in enumerate(zip(samples, plans)):
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
        if sent_sizes is not None:
            sizes.append(sent_sizes[i])
        if sent is not None:
            buf = io.BytesIO()
            sent[i].save(buf, "PNG")
            pngs[f"sent_png_{len(ids) - 1}"] = np.frombuffer(buf.getvalue(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, sample_ids=np.array(ids), images=np.stack(originals), reconstructions=np.stack(seen),
                        keep_mask=np.stack(keep), group_ids=np.stack(groups), input_scale=np.array(scales),
                        **({"sent_sizes": np.array(sizes, dtype=np.int64)} if sent_sizes is not None else {}), **pngs)
    return path
