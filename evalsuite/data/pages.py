"""Seeded page generators: invoice, table, code screenshot, UI screen, infographic.

Each generator is ``(seed, dpi=144, **style) -> RenderedPage`` and is a pure
function of its arguments: the same seed gives the same pixels and the same
ground truth. Pages are 6.25 in wide (900 px at the default 144 dpi) with body
text of 11-12 pt, i.e. a cap height of at least 16 px at 144 dpi, which the OCR
engines read reliably; a lower ``dpi`` makes the same page harder to read.
"""

from __future__ import annotations

import random
import re
from typing import NamedTuple

import numpy as np
from PIL import Image

from evalsuite.data.render import WHITE, Canvas, Colour, RenderedPage
from evalsuite.ocr.reading_order import ordered_text
from evalsuite.registry import Registry

PAGES: Registry = Registry("page generator")
PAGE_WIDTH = 450  # points: 6.25 in
MARGIN = 30

_COMPANIES = ["Northwind Traders", "Blue Harbor Supply", "Kestrel Analytics", "Greenfield Tools",
              "Summit Office Goods", "Riverside Bakery", "Atlas Freight Ltd", "Copperleaf Studio"]
_STREETS = ["12 Market Street", "480 Harbor Road", "77 Elm Avenue", "9 Station Lane", "215 King Street"]
_CITIES = ["Springfield 40231", "Portsmouth PO1 3AX", "Lakeview 60614", "Fairbanks 99701", "Riverton 82501"]
_PEOPLE = ["Jordan Lee", "Maria Santos", "Arjun Patel", "Emma Novak", "Kenji Watanabe", "Olivia Brown"]
_ITEMS = ["Steel bolts M8", "Copper wire 2 mm", "Printer paper A4", "Safety gloves", "Cable ties pack",
          "LED panel 40 W", "Wood screws box", "Masking tape", "Drill bit set", "Label printer roll"]
_PRODUCTS = ["Widget", "Gasket", "Bracket", "Sensor", "Valve", "Hinge", "Pulley", "Filter", "Spring", "Clamp"]
_REGIONS = ["North", "South", "East", "West", "Central", "Coast", "Valley"]


def _money(value: float) -> str:
    return f"{value:,.2f}"


@PAGES.register("invoice")
def invoice(seed: int, dpi: int = 144, family: str = "sans") -> RenderedPage:
    """A one-page invoice: header, addresses, an item table, totals and a wrapped note."""
    rng = random.Random(seed)
    page = Canvas(PAGE_WIDTH, 700, dpi)
    right = PAGE_WIDTH - MARGIN
    company = rng.choice(_COMPANIES)
    page.text(MARGIN, 50, company, 18, family, bold=True)
    page.text(right, 50, "INVOICE", 18, family, bold=True, align="right")
    page.text(MARGIN, 72, rng.choice(_STREETS), 12, family)
    number = f"No. INV-{rng.randint(2020, 2025)}-{rng.randint(100, 9999):04d}"
    page.text(right, 72, number, 12, family, align="right")
    page.text(MARGIN, 90, rng.choice(_CITIES), 12, family)
    page.text(right, 90, f"Date: {rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{rng.randint(2020, 2025)}",
              12, family, align="right")
    page.text(MARGIN, 126, "Bill to:", 12, family, bold=True)
    page.text(MARGIN, 144, rng.choice(_PEOPLE), 12, family)
    page.text(MARGIN, 162, rng.choice(_STREETS), 12, family)

    columns = [(MARGIN, "left", "Description"), (270, "right", "Qty"), (345, "right", "Price"),
               (right, "right", "Amount")]
    y = 200
    for x, align, title in columns:
        page.text(x, y, title, 12, family, bold=True, align=align)
    page.line(MARGIN, y + 7, right, y + 7)
    subtotal = 0.0
    for item in rng.sample(_ITEMS, rng.randint(3, 6)):
        y += 22
        qty, price = rng.randint(1, 24), rng.randint(150, 9900) / 100
        subtotal += qty * price
        for (x, align, _), value in zip(columns, [item, str(qty), _money(price), _money(qty * price)]):
            page.text(x, y, value, 12, family, align=align)
    page.line(MARGIN, y + 9, right, y + 9)
    rate = rng.choice([5, 8, 10, 20])
    tax = round(subtotal * rate / 100, 2)
    totals = [("Subtotal", subtotal, False), (f"Tax {rate}%", tax, False), ("Total", subtotal + tax, True)]
    for label, value, bold in totals:
        y += 22
        page.text(345, y, label, 12, family, bold=bold, align="right")
        page.text(right, y, _money(value), 12, family, bold=bold, align="right")
    note = (f"Payment is due within {rng.choice([14, 30, 45])} days of the invoice date. Please quote the "
            f"invoice number with your transfer. Thank you for your business with {company}.")
    y = page.paragraph(MARGIN, y + 40, note, PAGE_WIDTH - 2 * MARGIN, 12, family)
    return page.finish(y + 10)


@PAGES.register("table")
def table(seed: int, dpi: int = 144, family: str = "sans") -> RenderedPage:
    """A ruled stock table with a shaded header row under a title."""
    rng = random.Random(seed)
    page = Canvas(PAGE_WIDTH, 600, dpi)
    right = PAGE_WIDTH - MARGIN
    page.text(MARGIN, 46, f"Warehouse stock report {rng.choice(['Q1', 'Q2', 'Q3', 'Q4'])} {rng.randint(2020, 2025)}",
              16, family, bold=True)
    columns = [(MARGIN, "SKU"), (110, "Product"), (230, "Stock"), (320, "Unit price")]
    row_height = 26
    top = 64
    rows = rng.randint(7, 10)
    page.rect(MARGIN, top, right, top + row_height, fill=(225, 230, 238))
    for r in range(rows + 2):
        page.line(MARGIN, top + r * row_height, right, top + r * row_height, (120, 120, 120))
    for x in [MARGIN] + [c[0] for c in columns[1:]] + [right]:
        page.line(x, top, x, top + (rows + 1) * row_height, (120, 120, 120))

    def baseline(r: int) -> float:
        return top + r * row_height + 18
    for x, title in columns:
        page.text(x + 6, baseline(0), title, 12, family, bold=True)
    for r in range(1, rows + 1):
        values = [f"{rng.choice('ABCDK')}{rng.randint(1000, 9999)}", rng.choice(_PRODUCTS),
                  str(rng.randint(0, 5000)), _money(rng.randint(50, 20000) / 100)]
        for (x, _), value in zip(columns, values):
            page.text(x + 6, baseline(r), value, 12, family)
    bottom = top + (rows + 1) * row_height
    footer = f"Generated on {rng.randint(1, 28):02d}.{rng.randint(1, 12):02d}.2024 by stock service"
    page.text(MARGIN, bottom + 26, footer, 11, family, fill=(90, 90, 90))
    return page.finish(bottom + 44)


_KEYWORD = re.compile(r"\b(def|return|import|from|for|in|is|if|else|continue|class|with|as|not|None|True|False)\b")


class Theme(NamedTuple):
    background: Colour
    text: Colour
    keyword: Colour
    string: Colour
    comment: Colour
    line_number: Colour
    tab: Colour


DARK = Theme((30, 30, 30), (212, 212, 212), (86, 156, 214), (206, 145, 120), (106, 153, 85), (133, 133, 133),
             (45, 45, 45))
LIGHT = Theme((255, 255, 255), (0, 0, 0), (0, 0, 200), (163, 21, 21), (0, 128, 0), (110, 110, 110), (236, 236, 236))


def _code_lines(rng: random.Random) -> list[str]:
    name = rng.choice(["load_orders", "parse_rows", "merge_batches", "count_tokens", "scale_image"])
    arg, other = rng.sample(["path", "items", "limit", "batch", "width", "records"], 2)
    return [
        "import json",
        "from pathlib import Path",
        "",
        f"def {name}({arg}, {other}=None):",
        f'    """Return the {arg} after cleaning."""',
        "    result = []",
        f"    for row in {arg}:",
        f"        if row.get(\"{other}\") is None:",
        "            continue  # skip empty rows",
        f"        result.append(row[\"{other}\"] * {rng.randint(2, 64)})",
        "    return result",
        "",
        f"print({name}([], {rng.randint(1, 999)}))",
    ]


def _highlight(line: str, theme: Theme) -> list[tuple[str, Colour]]:
    """Split one code line into coloured runs: comment, strings, keywords, plain text."""
    code, hash_, comment = line.partition("#")
    runs = []
    for i, part in enumerate(re.split(r'("[^"]*")', code)):
        if i % 2:
            runs.append((part, theme.string))
            continue
        last = 0
        for match in _KEYWORD.finditer(part):
            runs += [(part[last:match.start()], theme.text), (match.group(), theme.keyword)]
            last = match.end()
        runs.append((part[last:], theme.text))
    if hash_:
        runs.append((hash_ + comment, theme.comment))
    return [run for run in runs if run[0]]


@PAGES.register("code")
def code_screenshot(seed: int, dpi: int = 144, dark: bool = True) -> RenderedPage:
    """An editor screenshot: a file tab, line numbers and syntax-highlighted monospace code."""
    rng = random.Random(seed)
    theme = DARK if dark else LIGHT
    page = Canvas(PAGE_WIDTH, 420, dpi, background=theme.background)
    page.rect(0, 0, PAGE_WIDTH, 30, fill=theme.tab)
    page.text(14, 20, f"{rng.choice(['orders', 'rows', 'batches', 'pipeline'])}.py", 12, "sans", fill=theme.text)
    y = 58
    for number, line in enumerate(_code_lines(rng), start=1):
        page.text(34, y, str(number), 12, "mono", fill=theme.line_number, align="right")
        if line:
            page.runs(46, y, _highlight(line, theme), 12, "mono")
        y += 21
    return page.finish(y)


@PAGES.register("ui")
def ui_screen(seed: int, dpi: int = 144, family: str = "sans") -> RenderedPage:
    """A settings window: title bar, menu, sidebar, form fields, checkbox, buttons, status bar."""
    rng = random.Random(seed)
    page = Canvas(PAGE_WIDTH, 420, dpi, background=(246, 247, 249))
    app = rng.choice(["Acme Cloud Console", "Nimbus Mail", "Orbit Photo Manager", "Ledger Pro"])
    page.rect(0, 0, PAGE_WIDTH, 30, fill=(44, 62, 80))
    page.text(14, 20, f"Settings - {app}", 12, family, fill=WHITE)
    x = 14
    for menu in ["File", "Edit", "View", "Tools", "Help"]:
        page.text(x, 50, menu, 12, family)
        x += page.width_of(menu, 12, family) + 22
    page.line(0, 58, PAGE_WIDTH, 58, (200, 200, 200))
    page.rect(0, 59, 120, 360, fill=(232, 235, 240))
    pitch, first = 38, 92  # sidebar and form share one row grid, so rows never half-overlap
    selected = rng.randrange(5)
    for i, item in enumerate(["General", "Account", "Privacy", "Alerts", "Billing"]):
        if i == selected:
            page.rect(6, first + i * pitch - 19, 114, first + i * pitch + 8, fill=(200, 214, 235), radius=4)
        page.text(16, first + i * pitch, item, 12, family)
    person = rng.choice(_PEOPLE)
    form = [("Display name", person), ("Email", person.lower().replace(" ", ".") + "@example.com"),
            ("Language", rng.choice(["English (US)", "English (UK)", "Deutsch", "Francais"])),
            ("Time zone", rng.choice(["UTC+01:00", "UTC-05:00", "UTC+09:00"]))]
    page.text(140, first, rng.choice(["General settings", "Profile settings"]), 15, family, bold=True)
    for i, (label, value) in enumerate(form, start=1):
        y = first + i * pitch
        page.text(140, y, label, 12, family, fill=(60, 60, 60))
        page.rect(240, y - 18, PAGE_WIDTH - 20, y + 8, fill=WHITE, outline=(170, 170, 170), radius=3)
        page.text(248, y, value, 12, family)
    y = first + 5 * pitch
    page.rect(140, y - 13, 153, y, fill=WHITE, outline=(90, 90, 90))
    page.line(142, y - 6, 146, y - 2, (30, 90, 200), 2)
    page.line(146, y - 2, 151, y - 11, (30, 90, 200), 2)
    page.text(160, y, "Send weekly summary email", 12, family)
    y += pitch + 6
    page.rect(250, y - 20, 340, y + 9, fill=(37, 99, 235), radius=5)
    page.text(295, y, "Save", 12, family, bold=True, fill=WHITE, align="center")
    page.rect(350, y - 20, PAGE_WIDTH - 20, y + 9, fill=WHITE, outline=(150, 150, 150), radius=5)
    page.text((350 + PAGE_WIDTH - 20) / 2, y, "Cancel", 12, family, align="center")
    page.rect(0, 360, PAGE_WIDTH, 384, fill=(225, 228, 232))
    page.text(14, 377, f"Last synced {rng.randint(2, 59)} minutes ago", 11, family, fill=(70, 70, 70))
    return page.finish(384)


@PAGES.register("infographic")
def infographic(seed: int, dpi: int = 144, family: str = "sans") -> RenderedPage:
    """A matplotlib bar chart; its title, bar values, category labels and caption are the ground truth.

    Values sit inside the bars at one height and the y axis is hidden: numbers
    at many heights would make "reading order" a coin toss between engines.
    """
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rng = random.Random(seed)
    regions = rng.sample(_REGIONS, 5)
    values = [rng.randint(25, 99) for _ in regions]
    font = {"sans": "DejaVu Sans", "serif": "DejaVu Serif", "mono": "DejaVu Sans Mono"}[family]
    with rc_context({"font.family": font, "font.size": 12}):
        fig = Figure(figsize=(PAGE_WIDTH / 72, 4.6), dpi=dpi, facecolor="white")
        FigureCanvasAgg(fig)
        ax = fig.add_axes((0.06, 0.24, 0.88, 0.58))
        bars = ax.bar(regions, values, color=rng.choice(["#2f5d8a", "#7a3b69", "#2e6f40", "#8a4b2f"]), width=0.6)
        labels = [ax.text(bar.get_x() + bar.get_width() / 2, 6, str(value), ha="center", va="bottom",
                          color="white", fontsize=13, fontweight="bold") for bar, value in zip(bars, values)]
        ax.set_ylim(0, 105)
        ax.yaxis.set_visible(False)
        for side in ("left", "right", "top"):
            ax.spines[side].set_visible(False)
        ax.tick_params(axis="x", labelsize=12, length=0, pad=6)
        labels.append(fig.text(0.06, 0.9, f"Orders by region in {rng.randint(2019, 2025)} (thousands)",
                               fontsize=15, fontweight="bold"))
        labels.append(ax.set_xlabel("Sales region", fontsize=12, labelpad=8))
        labels.append(fig.text(0.06, 0.04, f"Source: {rng.choice(_COMPANIES)} sales data",
                               fontsize=11, color="#555555"))
        fig.canvas.draw()
        labels += ax.get_xticklabels()  # their text is only final after drawing
        renderer, height = fig.canvas.get_renderer(), fig.canvas.get_width_height()[1]
        boxes = []
        for label in labels:
            extent = label.get_window_extent(renderer)  # pixels, y up
            x0, x1, y0, y1 = extent.x0, extent.x1, height - extent.y1, height - extent.y0
            boxes.append([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
        text = ordered_text(boxes, [label.get_text() for label in labels])
        pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    return RenderedPage(Image.fromarray(pixels.copy(), "RGB"), text)


def render_page(kind: str, seed: int, **style) -> RenderedPage:
    """Render the page generator registered as ``kind``."""
    return PAGES.get(kind)(seed, **style)
