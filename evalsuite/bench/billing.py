"""What image-side methods save on the bill, per cost model, without any endpoint or encoder.

    python -m evalsuite.bench.billing --data ../shared/datasets --dataset sroie --limit 30 [--ocr]

prints, per method (``crop``, ``slim``, ``pack``, ``downscale``), the mean billed image tokens
per image before and after under each cost model, how often the guard sent the original, and
with ``--ocr`` the corpus WER of PP-OCR (RapidOCR) on the original and on the image sent.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..billing import image_tokens
from ..data.datasets import load_dataset
from ..image_side import send

METHODS = (("crop", {}), ("slim", {}), ("pack", {}), ("downscale", {"keep": 0.5}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m evalsuite.bench.billing", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--dataset", default="sroie")
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--models", default="qwen2_vl,qwen3_vl,gpt4o,gpt41_mini")
    parser.add_argument("--ocr", action="store_true", help="also read each image with PP-OCR (slow on a CPU)")
    args = parser.parse_args(argv)
    models = args.models.split(",")
    engine = None
    if args.ocr:
        from ..ocr.engines import get_engine

        engine = get_engine("rapidocr")
    rows = {name: {"before": {m: [] for m in models}, "after": {m: [] for m in models}, "original_sent": 0,
                   "errs": [], "ref": [], "errs0": []} for name, _ in METHODS}
    for sample in load_dataset(args.dataset, args.data, args.limit):
        image = sample.load()
        for name, params in METHODS:
            sent = send(name, image, keep=params.get("keep", 1.0))
            row = rows[name]
            row["original_sent"] += sent.sent_original_reason is not None
            for m in models:
                row["before"][m].append(image_tokens(m, *image.size))
                row["after"][m].append(image_tokens(m, *sent.image.size))
            if engine is not None and sample.reference_text:
                from ..ocr import wer
                from ..ocr.cache import cached_read

                words = len(sample.reference_text.split())
                row["ref"].append(words)
                for key, img in (("errs0", image), ("errs", sent.image)):
                    text = cached_read(engine, np.asarray(img.convert("RGB"))).text
                    row[key].append(wer.word_error_rate(text, sample.reference_text) * words)
    for name, row in rows.items():
        parts = [f"{m} {np.mean(row['before'][m]):.0f} -> {np.mean(row['after'][m]):.0f} "
                 f"({100 * (1 - np.sum(row['after'][m]) / np.sum(row['before'][m])):.1f}%)" for m in models]
        line = f"{name:10s} " + ", ".join(parts) + f"; original sent {row['original_sent']}x"
        if row["ref"]:
            line += f"; WER {sum(row['errs0']) / sum(row['ref']):.3f} -> {sum(row['errs']) / sum(row['ref']):.3f}"
        print(line)


if __name__ == "__main__":
    main()
