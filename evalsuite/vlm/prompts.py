"""What a VLM case asks about each sample, and the ground truth its answer is scored against.

Documents, screenshots, charts and photos: read all text; the ground truth is the
sample's page text (None for a photo without words: no WER). SROIE receipts: the four
key fields as JSON; the ground truth is that JSON written from the receipt's key
(same keys, same order), and the fields are also looked for in the answer
(:func:`evalsuite.ocr.fields.field_hits`).
"""

from __future__ import annotations

import json

from ..data.sample import Sample
from ..ocr.fields import SROIE_FIELDS

READ_ALL = "Read all the text in this image, line by line, from top to bottom. Output only the text."
SROIE_JSON = ("Extract the key fields of this receipt as JSON with the keys company, date, address and total. "
              "Output only the JSON.")


def prompt_for(sample: Sample) -> str:
    return SROIE_JSON if sample.dataset == "sroie" else READ_ALL


def ground_truth(sample: Sample) -> str | None:
    """The text a perfect answer would give, or None where the sample has none."""
    if sample.dataset == "sroie":
        if not sample.fields:
            return None
        return json.dumps({k: sample.fields[k] for k in SROIE_FIELDS if sample.fields.get(k)}, ensure_ascii=False)
    return sample.reference_text
