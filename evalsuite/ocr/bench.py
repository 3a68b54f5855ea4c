"""Throughput of the OCR stage: pages per second for 1, 2 and all cores, or on a GPU.

    python -m evalsuite.ocr.bench [--data DIR] [--pages 10] [--receipts 10] [--engine rapidocr]
                                  [--device cpu|cuda[:N]] [--workers 1,2,4]

Reads run the way :class:`~evalsuite.ocr.stage.OcrStage` runs them: a spawned
process pool with one engine per process and one onnxruntime thread each, so
``workers`` processes use ``workers`` cores; with ``--device cuda`` each process
runs the models on that GPU. The cache is bypassed (every
image is read), and each process reads one warm-up image in its initializer,
so session creation and first-inference costs stay out of the timing.

Image sets: rendered pages (the ``synthetic`` generator: invoices, tables, code,
UI screens, charts at 144/168 dpi) and, when ``--data`` or ``$EVALSUITE_DATA``
points at a store with ``sroie/``, SROIE receipts. The table gives pages/s,
the speed-up over one worker and the parallel efficiency (speed-up / workers).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import reader
from ..workers import available_cores


@dataclass
class Timing:
    images: str
    workers: int
    pages: int
    seconds: float

    @property
    def pages_per_second(self) -> float:
        return self.pages / self.seconds


def worker_counts(cores: int) -> list[int]:
    """1, 2 and all cores, without repeats.

    >>> worker_counts(16), worker_counts(2), worker_counts(1)
    ([1, 2, 16], [1, 2], [1])
    """
    return sorted({1, min(2, cores), cores})


def time_reads(images: list[np.ndarray], workers: int, engine_name: str = "rapidocr", device: str = "cpu") -> float:
    """Wall seconds for ``workers`` warmed-up pool processes to read every image once, uncached."""
    pool, loading = reader.start_pool(engine_name, device, workers, warmup=images[0])  # the OCR stage's pool
    with pool:
        for job in loading:  # every process up and warm before the clock starts
            job.result()
        start = time.perf_counter()
        list(pool.map(reader.read_in_process, images, [None] * len(images)))
        return time.perf_counter() - start


def image_sets(data: Path | None, pages: int, receipts: int) -> dict[str, list[np.ndarray]]:
    from evalsuite.data.datasets import DatasetUnavailable, load_dataset

    sets = {"rendered pages": [np.asarray(s.load()) for s in load_dataset("synthetic", None, pages)]}
    if receipts:
        try:
            sets["SROIE receipts"] = [np.asarray(s.load()) for s in load_dataset("sroie", data, receipts)]
        except DatasetUnavailable as exc:
            print(f"skipping receipts: {exc}", file=sys.stderr)
    return sets


def run(sets: dict[str, list[np.ndarray]], counts: list[int], engine_name: str, device: str = "cpu") -> list[Timing]:
    timings = []
    for name, images in sets.items():
        for workers in counts:
            timings.append(Timing(name, workers, len(images), time_reads(images, workers, engine_name, device)))
            print(f"  {name}: {workers} worker(s) done", file=sys.stderr)
    return timings


def format_table(timings: list[Timing]) -> str:
    """Aligned text table, one line per image set x worker count.

    >>> print(format_table([Timing("pages", 1, 10, 20.0), Timing("pages", 2, 10, 10.5)]))
    images  workers  pages  seconds  pages/s  speed-up  efficiency
    ------  -------  -----  -------  -------  --------  ----------
    pages         1     10     20.0     0.50      1.00        100%
    pages         2     10     10.5     0.95      1.90         95%
    >>> print(format_table([Timing("pages", 8, 10, 2.0)]).splitlines()[-1])
    pages         8     10      2.0     5.00         -           -
    """
    header = ["images", "workers", "pages", "seconds", "pages/s", "speed-up", "efficiency"]
    single = {t.images: t.pages_per_second for t in timings if t.workers == 1}
    rows = []
    for t in timings:
        scaling = ["-", "-"]  # without a one-worker row there is nothing to scale from
        if t.images in single:
            speedup = t.pages_per_second / single[t.images]
            scaling = [f"{speedup:.2f}", f"{100 * speedup / t.workers:.0f}%"]
        rows.append([t.images, str(t.workers), str(t.pages), f"{t.seconds:.1f}", f"{t.pages_per_second:.2f}",
                     *scaling])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _counts(text: str) -> list[int]:
    """``--workers 1,2,4`` -> [1, 2, 4].

    >>> _counts("4,1,2,2")
    [1, 2, 4]
    """
    try:
        counts = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 1,2,4, got {text!r}") from None
    if counts[0] < 1:
        raise argparse.ArgumentTypeError(f"pool sizes are at least 1, got {text!r}")
    return counts


def main(argv: list[str] | None = None) -> int:
    from evalsuite.paths import data_root

    parser = argparse.ArgumentParser(prog="python -m evalsuite.ocr.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="store with sroie/ (default: $EVALSUITE_DATA)")
    parser.add_argument("--pages", type=int, default=10, help="rendered pages to read (default: %(default)s)")
    parser.add_argument("--receipts", type=int, default=10, help="SROIE receipts to read, 0: none (default: %(default)s)")
    parser.add_argument("--engine", default="rapidocr", help="OCR engine (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="where the models run: cpu or cuda[:N] (default: %(default)s)")
    parser.add_argument("--workers", type=_counts, help="pool sizes to time, e.g. 1,2,4 (default: 1, 2, all cores)")
    args = parser.parse_args(argv)

    from .engines import get_engine

    cores = available_cores()
    sets = image_sets(args.data or data_root(), args.pages, args.receipts)
    load_before = os.getloadavg()[0]
    counts = args.workers or worker_counts(cores)
    timings = run(sets, counts, args.engine, args.device)
    load_after = os.getloadavg()[0]
    info = get_engine(args.engine, **reader.reader_options(args.device)).version_info()
    runtime = info.get("runtime") or f"onnxruntime {info.get('onnxruntime', '-')}"
    print(f"OCR stage throughput: {info.get('engine')} {info.get('version')}, {runtime} on {args.device}, "
          f"1 CPU thread per process, cache bypassed, {cores} cores available")
    # Other processes on the machine take cores from the pool: the all-core rows mean little under load.
    print(f"1-min load average: {load_before:.2f} before, {load_after:.2f} after (the bench itself adds up to "
          f"{max(counts)})")
    print(format_table(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
