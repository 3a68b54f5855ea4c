"""Text side of OCR scoring: normalisation, WER/CER, reading order, SROIE field hits."""

from __future__ import annotations

import doctest
import importlib

import jiwer
import pytest

from evalsuite.ocr.fields import field_hits, token_recall
from evalsuite.ocr.normalize import normalize_text
from evalsuite.ocr.reading_order import ordered_text, reading_order
from evalsuite.ocr.wer import char_error_rate, word_error_rate


@pytest.mark.parametrize("module", ["normalize", "wer", "reading_order", "fields"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(f"evalsuite.ocr.{module}"))
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("variant, plain", [
    ("ＴＯＴＡＬ　９．００", "total 9.00"),             # full-width forms and ideographic space
    ("Oﬃce – “Main” ‘St’", "office - \"main\" 'st'"),  # ligature, en dash, curly quotes
    ("a\u200bb\u00adc", "abc"),                        # zero-width space, soft hyphen
    ("Line one\r\n\n\tline   TWO ", "line one line two"),
    ("STRASSE", "straße"),                             # casefold, not lower()
    ("e\u0301", "é"),                                  # composed form
])
def test_typographic_variants_normalise_alike(variant, plain):
    assert normalize_text(variant) == normalize_text(plain)


def test_normalisation_keeps_what_matters_on_receipts():
    assert normalize_text("9.00") != normalize_text("900")
    assert normalize_text("RM 9.00") != normalize_text("RM9.00")


def test_wer_matches_jiwer_on_normalised_text():
    hyp, ref = "the quick brwn fox  JUMPS", "The quick brown fox jumps over"
    assert word_error_rate(hyp, ref) == pytest.approx(jiwer.wer(normalize_text(ref), normalize_text(hyp)))
    assert char_error_rate(hyp, ref) == pytest.approx(jiwer.cer(normalize_text(ref), normalize_text(hyp)))
    assert word_error_rate(hyp, ref) == pytest.approx(2 / 6)


def test_rates_ignore_layout_and_typography():
    assert word_error_rate("Total:\nRM 9.00", "TOTAL: RM 9.00") == 0.0
    assert char_error_rate("“quoted” — text", '"quoted" - text') == 0.0


def test_empty_reference_rule():
    assert word_error_rate("", "") == 0.0 and char_error_rate(" \n", "") == 0.0
    assert word_error_rate("ghost text", " ") == 1.0 and char_error_rate("x", "") == 1.0


def test_insertions_can_exceed_one():
    assert word_error_rate("a b c d", "a") == 3.0


def test_reading_order_groups_lines_by_vertical_overlap():
    def box(x, y, w=50, h=20):
        return [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]

    boxes = [box(200, 104), box(10, 100), box(10, 130), box(300, 98, h=30), box(10, 10)]
    assert reading_order(boxes) == [[4], [1, 0, 3], [2]]
    assert ordered_text(boxes, list("bacdt")) == "t\na b d\nc"
    assert reading_order([]) == []


def test_touching_lines_stay_apart():
    boxes = [[(0, 0), (100, 0), (100, 20), (0, 20)], [(0, 17), (100, 17), (100, 37), (0, 37)]]
    assert reading_order(boxes) == [[0], [1]]  # 3 px of overlap on 20 px lines


def test_total_is_matched_as_a_number():
    assert field_hits("TOTAL RM9.0", {"total": "9.00"}) == {"total": True}
    assert field_hits("Total 1,234.50", {"total": "1234.50"}) == {"total": True}
    assert field_hits("Total 19.00", {"total": "9.00"}) == {"total": False}
    assert field_hits("TOTAL RM 9.00", {"total": "RM9.00"}) == {"total": True}


def test_date_tolerates_split_tokens_only():
    assert field_hits("date 25/12/ 2018", {"date": "25/12/2018"}) == {"date": True}
    assert field_hits("date 25/12/2019", {"date": "25/12/2018"}) == {"date": False}


def test_company_and_address_need_80_percent_of_tokens():
    address = "NO 53 JALAN SAGU 18 TAMAN DAYA 81100 JOHOR BAHRU JOHOR"  # 11 tokens
    nine = "no 53 jalan sagu 18 taman daya 81100 johor"  # 9/11 = 0.82
    eight = "no 53 jalan sagu 18 taman daya 81100"  # 8/11 = 0.73
    assert token_recall(address, nine) == pytest.approx(9 / 11)
    assert field_hits(nine, {"address": address}) == {"address": True}
    assert field_hits(eight, {"address": address}) == {"address": False}


def test_missing_or_empty_fields_are_not_reported():
    assert field_hits("anything", {"total": "", "company": "ACME"}) == {"company": False}
