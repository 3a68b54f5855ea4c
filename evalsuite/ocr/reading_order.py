"""Reading order of text boxes: top-to-bottom lines, left-to-right within a line.

One rule serves both sides of an OCR comparison: the recognised lines of an
engine and the ground-truth boxes of a dataset (SROIE) or of the renderer are
put in order by the same function, so a word error rate measures what was read,
not two layout heuristics disagreeing.

>>> boxes = [[[300, 10], [400, 10], [400, 30], [300, 30]],   # right of line 1
...          [[10, 52], [90, 52], [90, 70], [10, 70]],       # line 2
...          [[10, 12], [200, 12], [200, 32], [10, 32]]]     # left of line 1
>>> reading_order(boxes)
[[2, 0], [1]]
>>> ordered_text(boxes, ["world", "next line", "hello"])
'hello world\\nnext line'
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Two boxes share a line when their vertical overlap is at least this fraction
# of the shorter box. 0.5 keeps neighbouring lines of tightly set receipts apart
# (they touch, barely overlap) while tolerating a few degrees of skew.
SAME_LINE_OVERLAP = 0.5


def reading_order(boxes: Sequence | np.ndarray) -> list[list[int]]:
    """Group boxes into lines and order them; returns indices per line.

    ``boxes`` is [N, K, 2] (K corner points of each box, x then y, image
    coordinates with y down). A box joins the current line when it overlaps
    that line's mean vertical extent by ``SAME_LINE_OVERLAP`` of the shorter
    height; lines run top to bottom, boxes in a line left to right.
    """
    pts = np.asarray(boxes, dtype=np.float64)
    if pts.size == 0:
        return []
    top, bottom = pts[:, :, 1].min(axis=1), pts[:, :, 1].max(axis=1)
    left = pts[:, :, 0].min(axis=1)
    lines: list[list[int]] = []
    line_top = line_bottom = 0.0
    for i in np.argsort((top + bottom) / 2, kind="stable"):
        i = int(i)
        if lines:
            overlap = min(bottom[i], line_bottom) - max(top[i], line_top)
            shorter = min(bottom[i] - top[i], line_bottom - line_top)
            if overlap >= SAME_LINE_OVERLAP * max(shorter, 1e-6):
                lines[-1].append(i)
                members = lines[-1]
                line_top, line_bottom = float(top[members].mean()), float(bottom[members].mean())
                continue
        lines.append([i])
        line_top, line_bottom = float(top[i]), float(bottom[i])
    return [sorted(line, key=lambda j: left[j]) for line in lines]


def ordered_text(boxes: Sequence | np.ndarray, texts: Sequence[str]) -> str:
    """Texts in reading order: a line's boxes joined by spaces, lines by newlines."""
    return "\n".join(" ".join(texts[i] for i in line) for line in reading_order(boxes))
