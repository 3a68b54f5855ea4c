"""The renderer: seeded determinism, legible sizes, wrapping and honest ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from evalsuite.data.pages import PAGES, render_page
from evalsuite.data.render import FONT_FAMILIES, Canvas, FontUnavailable, font_file, load_font, wrap

STYLES = {"code": [{"dark": True}, {"dark": False}], "invoice": [{"family": "serif"}]}


@pytest.mark.parametrize("kind", PAGES.names())
def test_same_seed_same_pixels_and_text(kind):
    first, again = render_page(kind, 7), render_page(kind, 7)
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    assert first.text == again.text


@pytest.mark.parametrize("kind", PAGES.names())
def test_seed_changes_the_page(kind):
    assert render_page(kind, 1).text != render_page(kind, 2).text


@pytest.mark.parametrize("kind", PAGES.names())
def test_page_size_and_ground_truth_shape(kind):
    for style in STYLES.get(kind, [{}]):
        page = render_page(kind, 3, **style)
        assert page.image.mode == "RGB"
        assert 800 <= page.image.width <= 1000 and 300 <= page.image.height <= 1400
        lines = page.text.split("\n")
        assert len(lines) >= 4 and all(line == line.strip() for line in lines if line)
        assert np.asarray(page.image).std() > 10  # something was drawn


def test_dpi_scales_the_page():
    full, half = render_page("invoice", 0, dpi=144), render_page("invoice", 0, dpi=72)
    assert half.text == full.text
    assert abs(half.image.width * 2 - full.image.width) <= 2


@pytest.mark.parametrize("family", ["sans", "serif", "mono"])
def test_body_text_cap_height_is_ocr_sized(family):
    # pages set body text at >= 11 pt; at the default 144 dpi that must give >= 16 px capitals
    canvas = Canvas(100, 100, dpi=144)
    left, top, right, bottom = canvas.font(11, family).getbbox("H", anchor="ls")
    assert -top >= 16


def test_bundled_fonts_resolve_without_system_fonts():
    for family in FONT_FAMILIES:
        try:
            path = font_file(family)
        except FontUnavailable:
            assert family == "cjk"  # the only optional family
            continue
        assert path.is_file()
    assert "mpl-data" in str(font_file("mono", bold=True))
    with pytest.raises(ValueError, match="unknown font family"):
        font_file("comic")


def test_wrap_fits_width_and_keeps_every_word():
    font = load_font("serif", 24)
    text = "Payment is due within thirty days of the invoice date; please quote the number " * 3
    lines = wrap(text, font, 400)
    assert len(lines) > 3
    assert all(font.getlength(line) <= 400 for line in lines)
    assert " ".join(lines).split() == text.split()


def test_ground_truth_follows_reading_order_not_drawing_order():
    canvas = Canvas(300, 100)
    canvas.text(150, 60, "second line")
    canvas.text(200, 30, "right", align="right")
    canvas.text(10, 30, "left")
    assert canvas.finish().text == "left right\nsecond line"


def test_coloured_runs_are_one_item():
    canvas = Canvas(300, 60)
    canvas.runs(10, 30, [("def", (0, 0, 255)), (" main():", (0, 0, 0))], family="mono")
    assert canvas.finish().text == "def main():"


def test_text_cropped_off_the_page_is_refused():
    canvas = Canvas(300, 200)
    canvas.text(10, 150, "below the fold")
    with pytest.raises(ValueError, match="below the page"):
        canvas.finish(bottom=100)
