"""``text_pixels``: plain text rendered onto square pages, for "optical compression" (text as pixels).

Long text (agent logs, code, prose, tables kept as text) is drawn onto a page at
one of the resolution modes of DeepSeek-OCR (512, 640, 1024 and 1280 px square,
arXiv 2510.18234) in a monospace or proportional DejaVu font at a given pixel
size, then read back. The ground truth is exactly the text drawn: source lines
wrapped to the page width (at a space where there is one, else mid-word) and cut
after the last line that fits, blank lines dropped, lines joined by newlines.

Every page is a pure function of (seed, kind, mode, font size, family): texts
come from small seeded generators, not from a corpus, so two machines draw the
same pixels. The loader crosses the configured modes x font sizes x families x
kinds and renders ``pages`` pages cycling through that grid, kind fastest.

Text the font cannot draw (a CJK character, an emoji) would come out as empty
boxes that no reader can recover: such a sample is kept, but its ``load``
raises a :class:`~evalsuite.data.sample.SampleError` naming the sample and the
missing characters (``texts=[...]`` renders given texts instead of generated
ones, which is where that happens). Generated texts are ASCII: DejaVu draws Cyrillic too,
but the bundled PP-OCR models read Latin script only.

Sample ids carry the page's style, ``text_pixels/003-log-mono-16px-1024``, so
rows read back from a store can be grouped by mode and font size
(:func:`page_style`).
"""

from __future__ import annotations

import functools
import itertools
import random
import re
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from PIL import Image

from evalsuite.data.render import Canvas, RenderedPage, font_file, load_font
from evalsuite.data.sample import Sample, SampleError

DATASET = "text_pixels"
MODES = (512, 640, 1024, 1280)  # DeepSeek-OCR's Tiny, Small, Base and Large pages, px square
FONT_SIZES = (12, 16, 24)  # px
FAMILIES = ("mono", "sans")  # monospace and proportional
KINDS = ("log", "code", "prose", "table")
LEADING = 1.25  # baseline-to-baseline distance over font size: DejaVu's ascent + descent is 1.17 em,
# so neighbouring lines never overlap and the reading order keeps each drawn line whole


class PageStyle(NamedTuple):
    kind: str
    family: str
    font_px: int
    mode: int  # page side, px


# --- text generators: (rng, chars) -> text of at least ``chars`` characters, Latin script only ------

_WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at which but "
          "have an they you were her she there been one all we their has would when if so no will more out "
          "time can only new some could these two may first then do any like my now over such our man me even "
          "most made after also did many before must through back years where much your way well down should "
          "because each just those people how too little state good very make world still own see men work "
          "long get here between both life being under never day same another know while last might us great "
          "old year off come since against go came right used take three states himself few house use during "
          "without again place around however home small found thought went say part once general high upon "
          "school every number report river system water market signal window garden letter morning").split()
_SERVICES = ("api", "auth", "billing", "scheduler", "worker", "gateway", "indexer", "mailer")
_LEVELS = ("INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR")
_PATHS = ("/v1/orders", "/v1/users", "/v2/search", "/health", "/v1/invoices", "/v1/tokens", "/v2/upload")
_EVENTS = ("request done", "cache miss", "retrying upstream call", "job queued", "job finished",
           "connection reset by peer", "slow query", "token refreshed", "rate limit reached")
_IDENTS = ("items", "rows", "batch", "limit", "path", "result", "config", "count", "total", "offset", "record",
           "buffer", "index", "value", "name", "cache", "queue", "retries", "timeout", "size")
_FUNCS = ("load", "parse", "merge", "count", "scale", "flush", "fetch", "build", "split", "check", "render")
_COLUMNS = (("id", 6), ("name", 12), ("city", 11), ("qty", 5), ("price", 9), ("status", 9))
_NAMES = ("Jordan", "Maria", "Arjun", "Emma", "Kenji", "Olivia", "Lucas", "Fatima", "Noah", "Ingrid")
_CITIES = ("Lisbon", "Denver", "Osaka", "Nairobi", "Toronto", "Krakow", "Austin", "Dublin", "Perth")
_STATES = ("paid", "open", "shipped", "overdue", "void")


def _fill(rng: random.Random, chars: int, line: Callable[[random.Random], str], head: Sequence[str] = ()) -> str:
    lines = list(head)
    while sum(len(x) + 1 for x in lines) < chars:
        lines.append(line(rng))
    return "\n".join(lines)


def _log_line(rng: random.Random) -> str:
    stamp = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} {rng.randint(0, 23):02d}:" \
            f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}"
    return (f"{stamp} {rng.choice(_LEVELS):<5} [{rng.choice(_SERVICES)}-{rng.randint(1, 9)}] "
            f"{rng.choice(_EVENTS)} id={rng.getrandbits(32):08x} path={rng.choice(_PATHS)} "
            f"status={rng.choice((200, 200, 201, 204, 400, 404, 500, 503))} took={rng.randint(1, 2500)}ms")


def log_text(rng: random.Random, chars: int) -> str:
    """Service log lines: timestamp, level, component, event and key=value fields."""
    return _fill(rng, chars, _log_line)


def _function(rng: random.Random) -> str:
    name = f"{rng.choice(_FUNCS)}_{rng.choice(_IDENTS)}"
    arg, other, acc = rng.sample(_IDENTS, 3)
    body = [f"def {name}({arg}, {other}={rng.randint(1, 64)}):",
            f'    """Return the {acc} of {arg}, at most {other}."""',
            f"    {acc} = []",
            f"    for i, row in enumerate({arg}):",
            f"        if i >= {other}:",
            "            break",
            f"        {acc}.append(row * {rng.randint(2, 9)} + {rng.randint(0, 99)})  # scaled",
            f"    return {acc}",
            ""]
    return "\n".join(body)


def code_text(rng: random.Random, chars: int) -> str:
    """Python source: imports, then small functions with indentation, strings and comments."""
    return _fill(rng, chars, _function, head=("import json", "from pathlib import Path", ""))


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 18))]
    if rng.random() < 0.3:
        words.insert(rng.randrange(1, len(words)), f"{rng.randint(2, 1999)}")
    if len(words) > 8 and rng.random() < 0.5:
        words[rng.randrange(3, len(words) - 2)] += ","
    return " ".join(words).capitalize() + rng.choice("......?!")


def _paragraph(rng: random.Random) -> str:
    return " ".join(_sentence(rng) for _ in range(rng.randint(3, 7))) + "\n"


def prose_text(rng: random.Random, chars: int) -> str:
    """Paragraphs of English-like sentences (common words, numbers, commas), a blank line between."""
    return _fill(rng, chars, _paragraph)


def _table_row(rng: random.Random) -> str:
    cells = (f"{rng.randint(1, 99999)}", rng.choice(_NAMES), rng.choice(_CITIES), f"{rng.randint(1, 500)}",
             f"{rng.randint(100, 999999) / 100:.2f}", rng.choice(_STATES))
    return "  ".join(cell.ljust(width) for cell, (_, width) in zip(cells, _COLUMNS)).rstrip()


def table_text(rng: random.Random, chars: int) -> str:
    """A space-aligned table kept as text, as a CLI lists rows (``kubectl get``, ``ps``).

    No ``+---+`` rules: OCR reads those as graphics, and a tenth of the ground truth
    in dashes would measure ruling lines rather than text.
    """
    header = "  ".join(name.upper().ljust(width) for name, width in _COLUMNS).rstrip()
    return _fill(rng, chars, _table_row, head=(header,))


GENERATORS: dict[str, Callable[[random.Random, int], str]] = {
    "log": log_text, "code": code_text, "prose": prose_text, "table": table_text}


def generate_text(kind: str, seed: int, chars: int) -> str:
    """At least ``chars`` characters of ``kind`` text from ``seed`` (same seed, same text)."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown text kind {kind!r}; known: {', '.join(GENERATORS)}")
    return GENERATORS[kind](random.Random(f"{DATASET}:{kind}:{seed}"), chars)


# --- glyph coverage ----------------------------------------------------------------------------

@functools.cache
def _cmap(path: Path) -> frozenset[int]:
    from fontTools.ttLib import TTFont  # matplotlib's own dependency

    with TTFont(str(path), lazy=True) as font:
        return frozenset(font.getBestCmap())


def missing_glyphs(text: str, family: str) -> list[str]:
    """Characters of ``text`` (whitespace aside) that font ``family`` has no glyph for, in first-seen order.

    Read from the font's character map: Pillow draws a missing character as the
    font's .notdef box and says nothing, and its boxes have ordinary metrics.
    """
    covered = _cmap(font_file(family))
    return list(dict.fromkeys(c for c in text if not c.isspace() and ord(c) not in covered))


def describe_chars(chars: Sequence[str]) -> str:
    """``U+4E2D '中', U+1F600 '😀'``."""
    return ", ".join(f"U+{ord(c):04X} {c!r}" for c in chars)


# --- layout --------------------------------------------------------------------------------------

def margin_px(mode: int) -> int:
    return max(8, mode // 32)


def wrap_line(line: str, fits: Callable[[str], bool]) -> list[str]:
    """Split one source line into pieces that each fit, keeping its indentation on the first piece.

    A piece breaks after the last space that still fits, or mid-word when a word
    alone is too wide; trailing spaces are dropped (nothing is drawn for them) and
    continuation pieces start at their first non-space character.

    >>> wrap_line("aa bb cc", lambda s: len(s) <= 5)
    ['aa bb', 'cc']
    >>> wrap_line("  abcdefgh", lambda s: len(s) <= 4)
    ['  ab', 'cdef', 'gh']
    """
    pieces: list[str] = []
    rest = line.rstrip()
    while rest:
        if fits(rest):
            pieces.append(rest)
            break
        lo, hi = 1, len(rest)  # longest prefix that fits: binary search (width grows with length)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(rest[:mid]) else (lo, mid - 1)
        cut = lo
        space = rest.rfind(" ", 0, cut + 1)
        if space > len(rest) - len(rest.lstrip()):  # a space after the indentation: break there
            cut = space
        piece = rest[:cut].rstrip()
        if piece.strip():
            pieces.append(piece)
        rest = rest[cut:].lstrip()
    return pieces


def render_text_page(text: str, mode: int, font_px: int, family: str) -> RenderedPage:
    """``text`` drawn top-down on a ``mode`` px square white page; ground truth is what fits.

    Raises ValueError naming the characters the font cannot draw.
    """
    missing = missing_glyphs(text, family)
    if missing:
        raise ValueError(f"font {font_file(family).name} has no glyph for {describe_chars(missing)}")
    page = Canvas(mode, mode, dpi=72)  # 72 dpi: one point is one pixel
    font = load_font(family, font_px)
    margin = margin_px(mode)
    width = mode - 2 * margin
    ascent, descent = font.getmetrics()
    baseline = margin + ascent
    drawn: list[str] = []
    for source in text.expandtabs(4).splitlines():
        if not source.strip():  # a blank line keeps its gap on the page; nothing is drawn for it
            baseline += round(font_px * LEADING)
            continue
        for piece in wrap_line(source, lambda s: font.getlength(s) <= width):
            if baseline + descent > mode - margin:
                break
            page.text(margin, baseline, piece, font_px, family)
            drawn.append(piece)
            baseline += round(font_px * LEADING)
        else:
            continue
        break
    rendered = page.finish()
    if rendered.text != "\n".join(drawn):  # the reading-order rule must see each drawn line as one line
        raise AssertionError("reading order of the drawn lines differs from the drawing order")
    return rendered


def capacity_chars(mode: int, font_px: int) -> int:
    """Characters a page can hold, generously (a monospace advance is 0.6 em; prose wraps early)."""
    lines = (mode - 2 * margin_px(mode)) // round(font_px * LEADING) + 1
    return int(lines * (mode - 2 * margin_px(mode)) / (0.5 * font_px)) + 200


# --- the dataset -------------------------------------------------------------------------------

def sample_id(index: int, style: PageStyle) -> str:
    return f"{DATASET}/{index:03d}-{style.kind}-{style.family}-{style.font_px}px-{style.mode}"


_ID = re.compile(rf"^{DATASET}/\d+-(?P<kind>[a-z]+)-(?P<family>[a-z]+)-(?P<font_px>\d+)px-(?P<mode>\d+)$")


def page_style(sample_id_: str) -> PageStyle | None:
    """The style a ``text_pixels`` sample id names, None for any other id.

    >>> page_style("text_pixels/003-log-mono-16px-1024")
    PageStyle(kind='log', family='mono', font_px=16, mode=1024)
    """
    match = _ID.match(sample_id_)
    if match is None:
        return None
    return PageStyle(match["kind"], match["family"], int(match["font_px"]), int(match["mode"]))


@functools.cache
def _page(text: str, style: PageStyle) -> RenderedPage:
    return render_text_page(text, style.mode, style.font_px, style.family)


def _image(text: str, style: PageStyle) -> Image.Image:
    return _page(text, style).image.copy()  # a copy: callers may draw on what they load


def _refuse(message: str) -> Image.Image:
    raise SampleError(message)


def _tuple(name: str, value, allowed: Sequence | None = None) -> tuple:
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not values:
        raise ValueError(f"text_pixels: {name} must not be empty")
    if allowed is not None:
        unknown = [v for v in values if v not in allowed]
        if unknown:
            raise ValueError(f"text_pixels: unknown {name} {unknown}; known: {list(allowed)}")
    return values


def load_text_pixels(root: Path | None = None, limit: int | None = None, pages: int = 16, seed: int = 0,
                     modes: Sequence[int] = MODES, font_sizes: Sequence[int] = FONT_SIZES,
                     families: Sequence[str] = FAMILIES, kinds: Sequence[str] = KINDS,
                     chars: int | None = None, texts: Sequence[str] | None = None) -> list[Sample]:
    """``pages`` rendered text pages (``root`` unused: nothing is read from disk).

    Page ``i`` takes the ``i``-th style of modes x font_sizes x families x kinds
    (kind varying fastest, cycling when ``pages`` is larger) and seed
    ``seed * 100003 + i``. ``chars`` caps the generated text per page (default:
    more than the page holds, so the page is full); ``texts`` replaces the
    generated texts with given ones, page ``i`` drawing ``texts[i % len(texts)]``.
    """
    modes = _tuple("modes", modes)
    font_sizes = _tuple("font_sizes", font_sizes)
    families = _tuple("families", families, FAMILIES)
    kinds = _tuple("kinds", kinds, KINDS)
    if texts is not None and isinstance(texts, str):
        texts = [texts]
    if any(not isinstance(m, int) or m < 64 for m in modes) or any(not isinstance(f, int) or f < 4 for f in font_sizes):
        raise ValueError(f"text_pixels: modes (>= 64 px) and font_sizes (>= 4 px) must be integers, "
                         f"got {list(modes)} and {list(font_sizes)}")
    grid = [PageStyle(kind, family, font_px, mode)
            for mode, font_px, family, kind in itertools.product(modes, font_sizes, families, kinds)]
    samples = []
    for i in range(pages if limit is None else min(pages, limit)):
        style = grid[i % len(grid)]
        if texts:
            text = texts[i % len(texts)]
        else:
            budget = capacity_chars(style.mode, style.font_px) if chars is None else chars
            text = generate_text(style.kind, seed * 100003 + i, budget)[:budget]
        sid = sample_id(i, style)
        try:
            page = _page(text, style)
        except ValueError as problem:
            samples.append(Sample(sid, DATASET, "document",
                                  load=functools.partial(_refuse, f"sample {sid}: {problem}; "
                                                                  "it would be drawn as empty boxes")))
            continue
        samples.append(Sample(sid, DATASET, "document", load=functools.partial(_image, text, style),
                              reference_text=page.text))
    return samples
