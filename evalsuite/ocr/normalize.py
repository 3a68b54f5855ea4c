"""The one text normalisation applied to OCR hypothesis and reference alike.

Error rates should count misread characters, not typographic conventions, so
both sides go through :func:`normalize_text` before any WER/CER or field check:

1. Unicode NFKC: full-width forms, ligatures (``ﬁ``), ``…`` and compatibility
   digits become their plain equivalents.
2. Invisible characters dropped: zero-width space/joiners, BOM, soft hyphen.
3. Quotes unified to ``'`` and ``"``; dashes, hyphens and minus signs to ``-``.
4. ``casefold()``: case is not what a token compression method should be
   judged on (and SROIE transcripts are inconsistent about it).
5. Every run of whitespace, newlines included, becomes one space; ends stripped.
   Line breaks carry layout, not content, and engines split lines differently.

Punctuation is kept: on receipts ``9.00`` vs ``900`` is a real error.

>>> normalize_text("  Total:\\n\\tＲＭ 9.00 ")
'total: rm 9.00'
>>> normalize_text("“Smart” quotes — and ‘dashes’ – too")
'"smart" quotes - and \\'dashes\\' - too'
>>> normalize_text("ﬁnal\\u200b STRASSE") == normalize_text("final straße")
True
"""

from __future__ import annotations

import re
import unicodedata

_QUOTES = "\u2018\u2019\u201a\u201b\u2032\u0060"  # ‘ ’ ‚ ‛ ′ `
_DOUBLE_QUOTES = "\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb"  # “ ” „ ‟ ″ « »
_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"  # ‐ ‑ ‒ – — ― − ﹘ ﹣ －
_INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff\u00ad"

_TABLE = str.maketrans(
    {**{c: "'" for c in _QUOTES}, **{c: '"' for c in _DOUBLE_QUOTES},
     **{c: "-" for c in _DASHES}, **{c: None for c in _INVISIBLE}}
)
_WHITESPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Normalise ``text`` for comparison (see the module docstring for the rule)."""
    text = unicodedata.normalize("NFKC", text).translate(_TABLE).casefold()
    return _WHITESPACE.sub(" ", text).strip()
