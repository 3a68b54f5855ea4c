"""Text as pixels in the PoC report: read-back accuracy against optical compression ratio.

From the sample rows of ``text_pixels`` pages (KPIs of :mod:`evalsuite.metrics.text_tokens`),
one point per model x method x resolution mode x font size x reader: the mean
``optical_compression_ratio`` (text tokens per vision token) of its pages against
their mean character accuracy. The plot has a panel per resolution mode, a
colour per font size and a curve per reader (PP-OCR reading what the tokens kept;
a VLM where its cases recorded ``char_accuracy_vlm``), with DeepSeek-OCR's
published points as reference marks. Per mode, the table states the ratio at
which accuracy first falls below 95%.

Rows are dicts shaped like :func:`evalsuite.sinks.rows.to_rows` makes them.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..data.datasets.text_pixels import page_style

Row = dict[str, Any]

READERS = {"PP-OCR": "char_accuracy", "VLM": "char_accuracy_vlm"}  # reader -> KPI of its read-back
ACCURACY_FLOOR = 0.95
# DeepSeek-OCR (arXiv 2510.18234), Fox benchmark: decoding precision about 97% below 10x
# text-to-vision token compression and about 60% at 20x.
DEEPSEEK_OCR = ((10.0, 0.97), (20.0, 0.60))
DEEPSEEK_CITE = "DeepSeek-OCR, arXiv 2510.18234"


@dataclass(frozen=True)
class Point:
    """The pages of one model x method at one mode and font size, as read by one reader."""

    mode: int
    font_px: int
    reader: str
    model: str
    method: str
    pages: int
    ratio: float  # mean text tokens per vision token
    accuracy: float  # mean 1 - CER
    text_tokens: float
    vision_tokens: float
    bytes_ratio: float | None
    encoder_px: int | None = None  # side of the encoder's input (the case's image_size), None if not recorded


def _kpi(row: Row, name: str) -> float | None:
    value = (row.get("kpis") or {}).get(name)
    return float(value) if value is not None and math.isfinite(float(value)) else None


def _style(row: Row) -> tuple[int, int] | None:
    """(mode, font px) of a text_pixels sample row: from its info, else from its id."""
    info = row.get("info") or "{}"
    try:
        info = json.loads(info) if isinstance(info, str) else info
    except json.JSONDecodeError:
        info = {}
    style = (info or {}).get("text_pixels")
    if isinstance(style, dict) and "mode" in style and "font_px" in style:
        return int(style["mode"]), int(style["font_px"])
    parsed = page_style(str(row.get("sample_id", "")))
    return None if parsed is None else (parsed.mode, parsed.font_px)


def _encoder_px(row: Row) -> int | None:
    """The encoder's input side as the case recorded it (``image_size`` in the row's versions)."""
    try:
        return int((row.get("versions") or {}).get("image_size"))
    except (TypeError, ValueError):
        return None


def _method(row: Row) -> str:
    from .poc import method_label

    return method_label(row)


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def points(sample_rows: Iterable[Row]) -> list[Point]:
    """One point per model x method x mode x font size x reader with measured pages, sorted."""
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for row in sample_rows:
        style = _style(row)
        if style is None or row.get("error") or _kpi(row, "optical_compression_ratio") is None:
            continue
        for reader, key in READERS.items():
            if _kpi(row, key) is not None:
                groups[(style[0], style[1], reader, row["model"], _method(row), _encoder_px(row))].append(row)
    out = []
    for (mode, font_px, reader, model, method, encoder_px), rows in groups.items():
        byte_ratios = [v for v in (_kpi(r, "bytes_ratio_text_over_vision") for r in rows) if v is not None]
        out.append(Point(mode, font_px, reader, model, method, len(rows),
                         _mean(_kpi(r, "optical_compression_ratio") for r in rows),
                         _mean(_kpi(r, READERS[reader]) for r in rows),
                         _mean(_kpi(r, "text_tokens") or 0.0 for r in rows),
                         _mean(_kpi(r, "vision_tokens") or 0.0 for r in rows),
                         _mean(byte_ratios) if byte_ratios else None, encoder_px))
    return sorted(out, key=lambda p: (p.mode, p.reader, p.font_px, p.ratio, p.model, p.method))


def falls_below(curve: Iterable[tuple[float, float]], floor: float = ACCURACY_FLOOR) -> tuple[str, float | None]:
    """Where accuracy first drops below ``floor`` along increasing ratio: ``("at", r)`` with ``r``
    interpolated between the last point at or above it and the first below; ``("before", r)`` when
    the lowest ratio measured is already below (r: that ratio); ``("never", r)`` when no point is
    below (r: the highest ratio measured).

    >>> kind, ratio = falls_below([(2, 0.99), (4, 0.97), (8, 0.93), (16, 0.5)])
    >>> kind, round(ratio, 6)
    ('at', 6.0)
    >>> falls_below([(2, 0.9), (4, 0.99)]), falls_below([(3, 0.99), (5, 0.98)])
    (('before', 2), ('never', 5))
    """
    ordered = sorted(curve)
    if not ordered:
        return "never", None
    if ordered[0][1] < floor:
        return "before", ordered[0][0]
    for (r0, a0), (r1, a1) in zip(ordered, ordered[1:]):
        if a1 < floor:
            return "at", r0 + (a0 - floor) / (a0 - a1) * (r1 - r0) if a0 != a1 else r1
    return "never", ordered[-1][0]


def _threshold_text(kind: str, ratio: float | None) -> str:
    if ratio is None:
        return "-"
    return {"at": f"{ratio:.1f}x", "before": f"below 95% already at {ratio:.1f}x (lowest measured)",
            "never": f"stays >= 95% up to {ratio:.1f}x (highest measured)"}[kind]


def plot(pts: list[Point], path: Path) -> None:
    """Accuracy vs optical compression ratio: a panel per mode, a colour per font size, a line style per reader."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    modes = sorted({p.mode for p in pts})
    fonts = sorted({p.font_px for p in pts})
    styles = {"PP-OCR": "-", "VLM": "--"}
    fig = Figure(figsize=(4.2 * len(modes), 4.2), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(modes), squeeze=False, sharey=True)[0]
    for ax, mode in zip(axes, modes):
        for i, font_px in enumerate(fonts):
            for reader in READERS:
                curve = sorted((p.ratio, p.accuracy, p.method) for p in pts
                               if p.mode == mode and p.font_px == font_px and p.reader == reader)
                if not curve:
                    continue
                # methods differ in more than their token count: the line joins them in ratio order,
                # each point is labelled with its method
                ax.plot([c[0] for c in curve], [c[1] for c in curve], styles.get(reader, ":"), marker="o", ms=4,
                        color=f"C{i % 10}", alpha=0.8, label=f"{reader}, {font_px} px")
                for ratio, accuracy, method in curve:
                    ax.annotate(method.split("(")[0], (ratio, accuracy), fontsize=6, xytext=(3, -8),
                                textcoords="offset points", color=f"C{i % 10}")
        ax.scatter(*zip(*DEEPSEEK_OCR), marker="*", s=140, color="black", zorder=5, label=DEEPSEEK_CITE)
        ax.axhline(ACCURACY_FLOOR, color="grey", ls=":", lw=1)
        ax.set_title(f"{mode} x {mode} px page")
        ax.set_xlabel("text tokens / vision tokens")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("character accuracy (1 - CER)")
    axes[-1].legend(fontsize=7, loc="lower left")
    fig.suptitle("Text as pixels: read-back accuracy vs optical compression")
    fig.tight_layout()
    fig.savefig(path)


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in rows]


def section(sample_rows: Iterable[Row], plot_path: Path | None = None) -> str:
    """The report's markdown section (and the PNG at ``plot_path``); "" when no text_pixels page was measured."""
    pts = points(sample_rows)
    if not pts:
        return ""
    out = ["", "## Text as pixels: accuracy vs optical compression", "",
           "Pages of plain text (`text_pixels`) at DeepSeek-OCR's resolution modes. Ratio: text tokens of the "
           "drawn text (Qwen2 BPE unless the case brought its own tokenizer) per vision token the page cost the "
           "case's model after compression; accuracy: 1 - CER of the reader's read-back. PP-OCR reads the page at its "
           "own resolution as the token plan left it (merged patches painted their mean colour, dropped ones "
           "blank, a downscaled input resampled): what survives compression, an upper bound on what a decoder "
           "of those tokens could read, not a trained decoder like DeepSeek-OCR's. Reference marks: "
           f"{DEEPSEEK_CITE}, about 97% decoding precision below 10x and about 60% at 20x. The bytes ratio (UTF-8 bytes of text over bytes of vision-token activations) "
           "is how 40-80x claims count; it is not a token ratio.", ""]
    if plot_path is not None:
        plot(pts, Path(plot_path))
        out += [f"![accuracy vs optical compression ratio]({Path(plot_path).name})", ""]
    coarse = [p for p in pts if p.encoder_px is not None and p.encoder_px < p.mode]
    if coarse:
        out += [f"> Caveat: in {len(coarse)} of {len(pts)} points the encoder saw the page at fewer pixels than "
                f"it has (e.g. {coarse[0].encoder_px} px for a {coarse[0].mode} px page), while PP-OCR read the "
                "page at full resolution as the token plan left it. Their accuracy overstates what those vision "
                "tokens carry; for an honest curve run the encoder at the page's resolution (image_size = mode).",
                ""]
    out += ["### Where accuracy falls below 95%", "",
            "Along increasing ratio, over the points of a mode (all font sizes, then each font size): "
            "interpolated between the last point at or above 95% and the first below.", ""]
    curves: dict[tuple[int, str, int], list[tuple[float, float]]] = defaultdict(list)  # font 0: all sizes
    for p in pts:
        curves[(p.mode, p.reader, 0)].append((p.ratio, p.accuracy))
        curves[(p.mode, p.reader, p.font_px)].append((p.ratio, p.accuracy))
    out += _table(["mode (px)", "reader", "font px", "points", "accuracy < 95% at ratio"],
                  ([str(mode), reader, str(font or "all"), str(len(curve)), _threshold_text(*falls_below(curve))]
                   for (mode, reader, font), curve in sorted(curves.items())))
    out += ["", "### Points", ""]
    out += _table(["mode (px)", "font px", "reader", "model", "encoder input px", "method", "pages", "text tokens",
                   "vision tokens", "ratio (tokens)", "accuracy", "bytes ratio (bytes, not tokens)"],
                  ([str(p.mode), str(p.font_px), p.reader, p.model, "-" if p.encoder_px is None else str(p.encoder_px),
                    p.method, str(p.pages), f"{p.text_tokens:.0f}", f"{p.vision_tokens:.0f}", f"{p.ratio:.2f}x",
                    f"{p.accuracy:.4f}", "-" if p.bytes_ratio is None else f"{p.bytes_ratio:.4g}"] for p in pts))
    return "\n".join(out) + "\n"
