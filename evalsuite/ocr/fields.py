"""SROIE key-field hits: which of company, date, address and total an OCR text still holds.

Both sides are normalised (:func:`~evalsuite.ocr.normalize.normalize_text`),
then, per field:

- ``total``: some number in the text equals the total as a decimal
  (``RM 9.00``, ``9.00`` and ``9.0`` all hold ``9.00``; thousands commas ignored).
- ``date``: the date, with spaces removed, is a substring of the text with
  spaces removed (engines often split ``25/12/2018`` as ``25/12/ 2018``).
- ``company`` and ``address``: token recall of at least ``TOKEN_RECALL`` (0.8),
  i.e. at least 80 % of the field's word tokens (``\\w+`` runs, counted with
  multiplicity) occur in the text. Long free-form fields are rarely read
  verbatim; a missing token or two is tolerated, a half-erased line is not.

A field that is absent or empty in the key is not reported.

>>> text = "BOOK TA .K (TAMAN DAYA) SDN BHD\\nDATE: 25/12/ 2018\\nTOTAL RM 9.00"
>>> field_hits(text, {"company": "BOOK TA .K (TAMAN DAYA) SDN BHD", "date": "25/12/2018",
...                   "total": "9.00", "address": "NO.53 JALAN SAGU 18, TAMAN DAYA"})
{'company': True, 'date': True, 'address': False, 'total': True}
"""

from __future__ import annotations

import re
from collections import Counter
from decimal import Decimal, InvalidOperation

from evalsuite.ocr.normalize import normalize_text

TOKEN_RECALL = 0.8
SROIE_FIELDS = ("company", "date", "address", "total")
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?|\.\d+")
_WORD = re.compile(r"\w+")


def field_hits(ocr_text: str, fields: dict[str, str]) -> dict[str, bool]:
    """For each SROIE field present in ``fields``: can it still be found in ``ocr_text``?"""
    text = normalize_text(ocr_text)
    hits = {}
    for name in SROIE_FIELDS:
        value = normalize_text(fields.get(name) or "")
        if value:
            hits[name] = _CHECKS[name](value, text)
    return hits


def _number(token: str) -> Decimal | None:
    try:
        return Decimal(token.replace(",", ""))
    except InvalidOperation:
        return None


def _total_found(total: str, text: str) -> bool:
    wanted = [n for n in map(_number, _NUMBER.findall(total)) if n is not None]
    if not wanted:  # a total with no digits cannot be matched as a number; fall back to the literal
        return total in text
    return any(_number(token) == wanted[-1] for token in _NUMBER.findall(text))


def _date_found(date: str, text: str) -> bool:
    return date.replace(" ", "") in text.replace(" ", "")


def token_recall(value: str, text: str) -> float:
    """Share of ``value``'s word tokens (with multiplicity) found among ``text``'s, after normalisation."""
    wanted, have = Counter(_WORD.findall(normalize_text(value))), Counter(_WORD.findall(normalize_text(text)))
    total = sum(wanted.values())
    return sum(min(n, have[token]) for token, n in wanted.items()) / total if total else 0.0


def _tokens_found(value: str, text: str) -> bool:
    return token_recall(value, text) >= TOKEN_RECALL


_CHECKS = {"company": _tokens_found, "address": _tokens_found, "date": _date_found, "total": _total_found}
