"""The OCR stage of a case: OCR what survives compression, measure WER/CER drift.

For every sample, the token plan is turned into the image a downstream model
could at best recover (:func:`~evalsuite.ocr.reconstruct.reconstruct`); both it
and the original are read (:class:`~evalsuite.ocr.reader.OcrReader`: cache, pool,
reads shared with other workers) and scored against the reference
(:func:`~evalsuite.ocr.scoring.score`). Samples without ground truth whose
original holds no text (most photos) get no OCR KPIs.
"""

from __future__ import annotations

from concurrent.futures import Future

import numpy as np

from ..data.sample import Sample, SampleError
from ..models.base import EncoderOutput
from ..results import SampleRecord
from ..workers import thread_map
from .reader import OcrReader
from .reconstruct import reconstruct
from .scoring import score


ERROR_STAGE = "error_stage"  # SampleRecord.info key: the stage whose error ``record.error`` is, when not the whole sample's


def describe(exc: BaseException) -> str:
    """A read's error as one line that always says something (some errors have an empty message)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else f"{type(exc).__name__} (no message)"


def _has_text(original_job: Future) -> bool:
    """Whether OCR(original) found any text (waits for it; a failed read counts as text, to report it)."""
    try:
        return bool(original_job.result().strip())
    except Exception:
        return True


def _pixels_or_none(sample: Sample) -> np.ndarray | None:
    """``sample``'s pixels, or None when it fails to load (:meth:`OcrStage.submit` reports that)."""
    try:
        return np.asarray(sample.load())
    except SampleError:
        return None


class OcrStage:
    """A case's OCR: reads through :attr:`reader`, scores with :func:`~evalsuite.ocr.scoring.score`."""

    def __init__(self, engine_name: str = "rapidocr", workers: int = 0, device: str = "cpu"):
        """``device``: where the reader's processes run the OCR models ("cpu" or "cuda:N");
        ``workers``: how many processes (0: :func:`~evalsuite.ocr.reader.default_readers`).
        The processes start now and load their models while the worker loads its own."""
        self.reader = OcrReader(engine_name, workers, device)

    def wait_loaded(self) -> None:
        """Until every reader process has loaded its models (they take cores a timed forward needs)."""
        self.reader.wait_loaded()

    def wait_idle(self) -> None:
        """Until the reader has loaded and the reads queued by :meth:`read_ahead` are done."""
        self.reader.wait_idle()

    def read_ahead(self, samples: list[Sample]) -> None:
        """Queue the reads of ``samples``' originals now and return: the pool reads them while the
        worker loads its model and runs the reference pass. Every case needs its originals' reads;
        :meth:`submit` finds them in flight or cached. A sample that fails to load is left to
        :meth:`submit`, which reports it on its record."""
        self.reader.read_ahead([lambda sample=sample: _pixels_or_none(sample) for sample in samples])

    def version_info(self) -> dict[str, str]:
        return self.reader.version_info()

    def submit(self, samples: list[Sample], outputs: list[EncoderOutput], records: list[SampleRecord],
               sent: list | None = None) -> list:
        """Queue the reads of ``samples`` (aligned with ``records``): the pool reads the first ones
        while the rest are loaded and reconstructed, on a thread per core of this worker.

        Returns once every read is queued. A sample with no ground truth waits for
        its OCR(original), which decides whether there is text to lose (cached after
        the first case). A sample that fails to load gets its error at once. ``sent``: for a method
        acting on the image (``crop``, ``slim``, ``pack``), the images it sends, read instead of a
        reconstruction.
        """
        plans = [plan for out in outputs for plan in out.plans]
        sent = sent if sent is not None else [None] * len(plans)
        queued = thread_map(lambda item: self._queue(*item), list(zip(samples, plans, records, sent)))
        return [job for job in queued if job is not None]

    def _queue(self, sample: Sample, plan, record: SampleRecord, sent=None) -> tuple[SampleRecord, Sample, Future,
                                                                           Future | None] | None:
        """One sample's reads: its original and, unless identical, what ``plan`` left of it."""
        try:  # reloaded per case: holding every original (SROIE pages are up to 9 MP) costs GBs
            original = sample.load()
        except SampleError as exc:
            record.error = str(exc)
            return None
        original_px = np.asarray(original)
        original_job = self.reader.read(original_px)
        if sample.reference_text is None and not _has_text(original_job):
            return None  # a picture without words: nothing for OCR to lose
        if sent is not None:
            seen = np.asarray(sent.convert("RGB"))
        else:
            seen = original_px if plan.is_identity else np.asarray(reconstruct(original, plan))
        identical = seen is original_px or np.array_equal(seen, original_px)
        return record, sample, original_job, None if identical else self.reader.read(seen)

    def collect(self, jobs: list) -> None:
        """Wait for the reads queued by :meth:`submit` and fill in the OCR KPIs."""
        for record, sample, original_job, seen_job in jobs:
            try:
                original_text = self.reader.result(original_job)
                seen_text = original_text if seen_job is None else self.reader.result(seen_job)
            except Exception as exc:  # one unreadable page must not end the case
                record.error = f"OCR failed on sample {sample.sample_id}: {describe(exc)}"
                record.info[ERROR_STAGE] = "ocr"  # its tokens and cosine were measured: they still count
                continue
            score(record, sample, original_text, seen_text, reread=seen_job is not None)

    def close(self) -> None:
        self.reader.close()
