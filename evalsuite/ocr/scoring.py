"""Scoring one sample's OCR: what a read of the compressed view lost against the reference.

Pure functions of texts: :func:`score` fills a :class:`~evalsuite.results.SampleRecord`
from OCR(original), OCR(what the token plan left) and the sample's reference (its
ground truth, else OCR(original)). Drift is ``error(reconstruction) - error(original)``.
"""

from __future__ import annotations

from ..data.sample import Sample
from ..results import SampleRecord
from . import wer
from .fields import field_hits
from .normalize import normalize_text

# The per-sample OCR KPIs :func:`score` sets (a sample without them has none: no text to lose, or a failed read).
OCR_KPIS = ("ocr_wer", "ocr_cer", "ocr_wer_original", "ocr_cer_original", "ocr_wer_drift", "ocr_cer_drift",
            "sroie_fields_found")


def score(record: SampleRecord, sample: Sample, original_text: str, seen_text: str, reread: bool) -> None:
    """Set ``record``'s OCR KPIs and info: WER/CER of ``seen_text`` and of ``original_text`` against
    the reference, their drift, and the SROIE fields found in ``seen_text``. ``reread``: whether
    ``seen_text`` was read from a reconstruction (False: the plan left the image as it was)."""
    reference = sample.reference_text if sample.reference_text is not None else original_text
    k = record.kpis
    k["ocr_wer"] = wer.word_error_rate(seen_text, reference)
    k["ocr_cer"] = wer.char_error_rate(seen_text, reference)
    k["ocr_wer_original"] = wer.word_error_rate(original_text, reference)
    k["ocr_cer_original"] = wer.char_error_rate(original_text, reference)
    k["ocr_wer_drift"] = k["ocr_wer"] - k["ocr_wer_original"]
    k["ocr_cer_drift"] = k["ocr_cer"] - k["ocr_cer_original"]
    record.info["ocr_reference"] = "ground_truth" if sample.reference_text is not None else "ocr_original"
    normalized = normalize_text(reference)
    record.info["ocr_reference_words"] = len(normalized.split())  # weights of the corpus-level rates
    record.info["ocr_reference_chars"] = len(normalized)
    record.info["ocr_text"] = seen_text
    record.info["ocr_reread"] = reread
    if sample.fields:
        hits = field_hits(seen_text, sample.fields)
        record.info["sroie_fields"] = hits
        if hits:
            k["sroie_fields_found"] = sum(hits.values()) / len(hits)
