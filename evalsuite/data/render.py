"""Text to pixels with exact ground truth: fonts, a page canvas and word wrapping.

A :class:`Canvas` draws text items and remembers where each one went; its
ground truth is the items put in reading order by the same rule the OCR side
uses (:mod:`evalsuite.ocr.reading_order`), so a perfect read scores 0 WER by
construction. Layout is in points and rendered at ``dpi``: the same page at 72
dpi is the same page with half the pixels. The page generators built on this
live in :mod:`evalsuite.data.pages`.

Fonts come from matplotlib's bundled DejaVu set, so rendering needs no system
fonts; Noto CJK is used when installed under a system font folder.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple, Sequence

from PIL import Image, ImageDraw, ImageFont

from evalsuite.ocr.reading_order import ordered_text

Colour = tuple[int, int, int]
BLACK: Colour = (0, 0, 0)
WHITE: Colour = (255, 255, 255)

_DEJAVU = {
    ("sans", False): "DejaVuSans.ttf",
    ("sans", True): "DejaVuSans-Bold.ttf",
    ("serif", False): "DejaVuSerif.ttf",
    ("serif", True): "DejaVuSerif-Bold.ttf",
    ("mono", False): "DejaVuSansMono.ttf",
    ("mono", True): "DejaVuSansMono-Bold.ttf",
}
FONT_FAMILIES = ("sans", "serif", "mono", "cjk")
_SYSTEM_FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path.home() / ".local/share/fonts")


class FontUnavailable(LookupError):
    """A font family that is not installed on this machine (only ``cjk`` can be)."""


class RenderedPage(NamedTuple):
    """A rendered page and its ground truth: lines in reading order joined by newlines."""

    image: Image.Image
    text: str


@functools.cache
def font_file(family: str, bold: bool = False) -> Path:
    """Path of the font file for ``family`` (one of ``FONT_FAMILIES``)."""
    if family == "cjk":
        weight = "Bold" if bold else "Regular"
        for root in _SYSTEM_FONT_DIRS:
            for pattern in (f"NotoSansCJK*-{weight}.tt[cf]", f"NotoSerifCJK*-{weight}.tt[cf]"):
                found = sorted(root.rglob(pattern)) if root.is_dir() else []
                if found:
                    return found[0]
        folders = ", ".join(map(str, _SYSTEM_FONT_DIRS))
        raise FontUnavailable(f"no Noto CJK font under {folders} (apt install fonts-noto-cjk)")
    if (family, bold) not in _DEJAVU:
        raise ValueError(f"unknown font family {family!r}; known: {', '.join(FONT_FAMILIES)}")
    import matplotlib  # only for the path of its bundled fonts

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / _DEJAVU[family, bold]


@functools.cache
def load_font(family: str, size_px: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_file(family, bold)), size_px)


def wrap(text: str, font: ImageFont.FreeTypeFont, max_width_px: float) -> list[str]:
    """Greedy word wrap of ``text`` into lines no wider than ``max_width_px``.

    A single word wider than the limit gets a line of its own rather than being split.
    """
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(candidate) <= max_width_px:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


class Canvas:
    """A page being drawn, in points at ``dpi``, that records its ground-truth text.

    Text is placed by its baseline (``y``), so items on one row share a
    baseline; their recorded boxes span the font's ascent and descent.
    """

    def __init__(self, width: float, height: float, dpi: int = 144, background: Colour = WHITE):
        self.dpi = dpi
        self.image = Image.new("RGB", (self.px(width), self.px(height)), background)
        self.draw = ImageDraw.Draw(self.image)
        self._boxes: list[list[tuple[float, float]]] = []
        self._texts: list[str] = []

    def px(self, points: float) -> int:
        return round(points * self.dpi / 72)

    def font(self, size: float, family: str = "sans", bold: bool = False) -> ImageFont.FreeTypeFont:
        return load_font(family, self.px(size), bold)

    def width_of(self, text: str, size: float, family: str = "sans", bold: bool = False) -> float:
        """Advance width of ``text`` in points."""
        return self.font(size, family, bold).getlength(text) * 72 / self.dpi

    def text(self, x: float, y: float, text: str, size: float = 12, family: str = "sans",
             bold: bool = False, fill: Colour = BLACK, align: str = "left") -> None:
        """Draw one ground-truth item; ``align`` says whether ``x`` is its left, centre or right."""
        self.runs(x, y, [(text, fill)], size, family, bold, align)

    def runs(self, x: float, y: float, runs: Sequence[tuple[str, Colour]], size: float = 12,
             family: str = "sans", bold: bool = False, align: str = "left") -> None:
        """Draw differently coloured pieces as ONE ground-truth item (syntax-highlighted code)."""
        font = self.font(size, family, bold)
        text = "".join(piece for piece, _ in runs)
        width = font.getlength(text)
        left = self.px(x) - {"left": 0, "center": width / 2, "right": width}[align]
        baseline = self.px(y)
        cursor = left
        for piece, fill in runs:
            self.draw.text((cursor, baseline), piece, font=font, fill=fill, anchor="ls")
            cursor += font.getlength(piece)
        if text.strip():
            ascent, descent = font.getmetrics()
            top, bottom = baseline - ascent, baseline + descent
            self._boxes.append([(left, top), (left + width, top), (left + width, bottom), (left, bottom)])
            self._texts.append(text)

    def paragraph(self, x: float, y: float, text: str, width: float, size: float = 12,
                  family: str = "sans", fill: Colour = BLACK, leading: float = 1.4) -> float:
        """Word-wrap ``text`` into ``width`` points from baseline ``y``; returns the next free baseline."""
        for line in wrap(text, self.font(size, family), self.px(width)):
            self.text(x, y, line, size, family, fill=fill)
            y += size * leading
        return y

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill: Colour | None = None,
             outline: Colour | None = None, width: float = 1, radius: float = 0) -> None:
        box = (self.px(x0), self.px(y0), self.px(x1), self.px(y1))
        self.draw.rounded_rectangle(box, self.px(radius), fill, outline, max(1, self.px(width)))

    def line(self, x0: float, y0: float, x1: float, y1: float, fill: Colour = BLACK, width: float = 1) -> None:
        self.draw.line((self.px(x0), self.px(y0), self.px(x1), self.px(y1)), fill, max(1, self.px(width)))

    def finish(self, bottom: float | None = None) -> RenderedPage:
        """The page cropped to ``bottom`` points (all of it when None) and its ground truth."""
        image = self.image if bottom is None else self.image.crop((0, 0, self.image.width, self.px(bottom)))
        if any(box[2][1] > image.height for box in self._boxes):
            raise ValueError("text drawn below the page's bottom edge would be ground truth nobody can read")
        return RenderedPage(image, ordered_text(self._boxes, self._texts))
