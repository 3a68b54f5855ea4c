"""Word and character error rates of an OCR hypothesis against a reference.

Both strings go through :func:`~evalsuite.ocr.normalize.normalize_text` first;
the edit distance itself is jiwer's. The rate is (substitutions + deletions +
insertions) / reference length, so it can exceed 1.0 when the hypothesis
invents a lot of text.

An empty reference (after normalisation) has no length to divide by; we define
the rate as 0.0 when the hypothesis is empty too (nothing to read, nothing
read) and 1.0 otherwise (everything read was wrong).

>>> word_error_rate("Total RM 9.00", "TOTAL  RM 9.00")
0.0
>>> word_error_rate("Total RM 9.0", "total rm 9.00")
0.3333333333333333
>>> char_error_rate("abcd", "abce")
0.25
>>> word_error_rate("", ""), word_error_rate("stray", "")
(0.0, 1.0)
"""

from __future__ import annotations

from typing import Callable

import jiwer

from evalsuite.ocr.normalize import normalize_text


def word_error_rate(hypothesis: str, reference: str) -> float:
    """WER of ``hypothesis`` against ``reference`` after normalisation."""
    return _error_rate(hypothesis, reference, jiwer.wer)


def char_error_rate(hypothesis: str, reference: str) -> float:
    """CER of ``hypothesis`` against ``reference`` after normalisation (spaces count)."""
    return _error_rate(hypothesis, reference, jiwer.cer)


def _error_rate(hypothesis: str, reference: str, measure: Callable[..., float]) -> float:
    hyp, ref = normalize_text(hypothesis), normalize_text(reference)
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(measure(reference=ref, hypothesis=hyp))
