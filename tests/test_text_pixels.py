"""Text as pixels: the ``text_pixels`` dataset, its token KPIs and its report section."""

from __future__ import annotations

import numpy as np
import pytest

from evalsuite.data.datasets import load_dataset
from evalsuite.data.datasets.text_pixels import (FAMILIES, KINDS, MODES, PageStyle, generate_text, load_font,
                                                 margin_px, missing_glyphs, page_style, render_text_page)
from evalsuite.data.sample import SampleError
from evalsuite.ocr.normalize import normalize_text

# --- the dataset --------------------------------------------------------------------------------


def test_same_seed_same_pages_and_texts_other_seed_other_texts():
    first = load_dataset("text_pixels", None, pages=8, modes=[512])
    again = load_dataset("text_pixels", None, pages=8, modes=[512])
    assert [s.sample_id for s in first] == [s.sample_id for s in again]
    assert [s.reference_text for s in first] == [s.reference_text for s in again]
    assert np.array_equal(np.asarray(first[3].load()), np.asarray(again[3].load()))
    other = load_dataset("text_pixels", None, pages=8, modes=[512], seed=1)
    assert all(a.reference_text != b.reference_text for a, b in zip(first, other))


def test_pages_cross_modes_font_sizes_families_and_kinds():
    samples = load_dataset("text_pixels", None, pages=32, font_sizes=[16])
    styles = [page_style(s.sample_id) for s in samples]
    assert [s.kind for s in styles[:4]] == list(KINDS)  # kind varies fastest
    assert {s.mode for s in styles} == set(MODES) and {s.family for s in styles} == set(FAMILIES)
    for sample, style in zip(samples[::7], styles[::7]):
        image = sample.load()
        assert image.size == (style.mode, style.mode) and image.mode == "RGB"
        assert sample.doc_type == "document" and sample.reference_text
    assert len(load_dataset("text_pixels", None, pages=32, font_sizes=[16], limit=5)) == 5
    with pytest.raises(ValueError, match="families"):
        load_dataset("text_pixels", None, families=["comic"])


def test_ground_truth_is_what_fits_on_the_page():
    """Wrapped to the width, cut at the bottom: every line fits, and the text is a prefix of the source."""
    source = generate_text("log", 5, 20_000)
    page = render_text_page(source, 512, 16, "mono")
    font, width = load_font("mono", 16), 512 - 2 * margin_px(512)
    lines = page.text.split("\n")
    assert all(font.getlength(line) <= width for line in lines)
    assert 10 < len(lines) <= 512 // 16 and len(page.text) < len(source) / 4
    assert source.replace("\n", " ").startswith(" ".join(lines)[:200])
    assert normalize_text(source).startswith(normalize_text(page.text))  # words kept, nothing invented
    short = render_text_page("def f(x):\n\n    return x  # trailing   ", 640, 24, "sans")
    assert short.text == "def f(x):\n    return x  # trailing"  # blank line not in the truth, indent kept


def test_text_length_is_configurable():
    short = load_dataset("text_pixels", None, pages=4, modes=[1280], font_sizes=[12], chars=300)
    full = load_dataset("text_pixels", None, pages=4, modes=[1280], font_sizes=[12])
    assert all(len(s.reference_text) <= 300 for s in short)
    assert all(len(f.reference_text) > 3 * len(s.reference_text) for s, f in zip(short, full))


def test_characters_the_font_cannot_draw_are_named_per_sample():
    assert missing_glyphs("plain ASCII, accents é ü", "sans") == []
    assert missing_glyphs("a 中 b 😀 中", "mono") == ["中", "😀"]
    samples = load_dataset("text_pixels", None, pages=3, texts=["all fine here", "see 中文 and 😀"])
    assert samples[0].load().size == (512, 512)
    with pytest.raises(SampleError) as error:
        samples[1].load()
    message = str(error.value)
    assert samples[1].sample_id in message and "U+4E2D" in message and "U+1F600" in message and "'文'" in message
    assert samples[1].reference_text is None
    assert samples[2].reference_text == "all fine here"  # the run goes on with the next page


def test_page_style_of_other_ids_is_none():
    assert page_style("samples/invoice") is None
    assert page_style("text_pixels/012-table-sans-24px-640") == PageStyle("table", "sans", 24, 640)


def test_rapidocr_reads_back_a_clean_large_font_page():
    """The real PP-OCR engine reads the drawn text: the ground truth is what is on the page."""
    from evalsuite.ocr import wer
    from evalsuite.ocr.engines import get_engine

    text = generate_text("prose", 3, 220)[:220]
    page = render_text_page(text, 512, 24, "sans")
    read = get_engine("rapidocr").read(np.asarray(page.image)).text
    truth_words = normalize_text(page.text).split()
    read_words = set(normalize_text(read).split())
    assert sum(w in read_words for w in truth_words) >= 0.9 * len(truth_words)
    assert wer.char_error_rate(read, page.text) < 0.03
