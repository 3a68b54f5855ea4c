"""The OCR stage of a case: OCR what survives compression, measure WER/CER drift.

For every sample, the token plan is turned into the image a downstream model
could at best recover (:func:`~evalsuite.ocr.reconstruct.reconstruct`); both it
and the original are read by the OCR engine and scored against the reference:
the ground truth where the dataset has one, else OCR(original). Drift is
``error(reconstruction) - error(original)``.

OCR is the slow stage (about 1.7 s per rendered page and 2.8 s per receipt on one core), so reads run in a
process pool sized to this worker's share of the cores. Where the worker has a GPU, the pool's processes
run the det/rec models on it (:class:`~evalsuite.ocr.engines.RapidOcrEngine` with ``device``), and
``GPU_READERS`` of them keep it busy while each does its pre- and post-processing. Every read is cached by
image content across runs (:mod:`evalsuite.ocr.cache`): an original is read once
per machine, a reconstruction once per token plan, and one pixel-identical to its
original is not read at all. The stage looks reads up in the cache itself and
sends only the others to the pool, so a cached page is hashed, not copied to
another process. A dataset's originals, which every case of it needs, can be queued ahead
(:meth:`OcrStage.read_ahead`: the pool reads them while the worker loads its model), and a
read in flight is shared by every sample that asks for the same pixels.
A pool process claims each read as it starts it (:func:`_read`);
a read another worker has claimed is not read again but waited for, on a thread
that watches the cache (:class:`OtherWorkersReads`), while this worker's own reads
go on. Claiming at the start rather than when queueing lets two workers that
begin on the same dataset split its originals between their pools. Samples without
ground truth whose original holds no text (most photos) get no OCR KPIs.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from typing import Callable

import numpy as np

from ..data.sample import Sample, SampleError
from ..models.base import EncoderOutput
from ..results import SampleRecord
from ..workers import cores_per_worker, thread_map
from . import cache, wer
from .fields import field_hits
from .normalize import normalize_text
from .reconstruct import reconstruct

_ENGINE = None  # one engine per pool process
# Pool processes per GPU by default. On a two-H200 host (32 cores), 12 read 13% faster than 8 on one GPU,
# but made the two-GPU gate 10% slower (24 readers beside the workers' timed forwards); 4 made it 19% slower.
GPU_READERS = 8


def reader_options(device: str) -> dict:
    """Engine options of a pool process: one CPU thread each, and the GPU where reads run there."""
    return {"threads": 1} if device == "cpu" else {"threads": 1, "device": device}


def default_readers(device: str) -> int:
    """Pool processes for reads on ``device``: this worker's share of the cores on the CPU."""
    return cores_per_worker() if device == "cpu" else min(GPU_READERS, cores_per_worker())


def start_pool(engine_name: str, device: str, processes: int,
               warmup: np.ndarray | None = None) -> tuple[ProcessPoolExecutor, list[Future]]:
    """A pool of ``processes`` readers, every one started now, and futures that complete once all
    of them have loaded their models (and read ``warmup``): see :func:`_init`."""
    context = get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=processes, mp_context=context, initializer=_init,
                               initargs=(engine_name, device, context.Barrier(processes), warmup))
    # Each submit while no process is idle starts one; a task runs once its process is initialized.
    return pool, [pool.submit(_loaded) for _ in range(processes)]


def _one_thread_each(device: str) -> None:
    """Process-wide thread pools of a reader down to one thread: the pool has a process per core,
    or ``GPU_READERS`` per GPU, and 16 readers of 32 OpenCV threads each would oversubscribe a
    32-core host (onnxruntime's threads are the engine's ``threads`` option)."""
    try:
        import cv2  # rapidocr's and paddleocr's resizes and crops
    except ImportError:
        pass
    else:
        cv2.setNumThreads(1)
    if device != "cpu":
        import torch

        torch.set_num_threads(1)


def _init(engine_name: str, device: str = "cpu", all_loaded=None, warmup: np.ndarray | None = None) -> None:
    """A pool process's initializer: one thread each, its engine, models loaded (and ``warmup`` read,
    uncached, so first-inference costs are paid); then, with ``all_loaded`` (a barrier of the pool's
    processes), it waits until every process has done the same."""
    global _ENGINE
    from .engines import get_engine

    _one_thread_each(device)
    _ENGINE = get_engine(engine_name, **reader_options(device))
    load = getattr(_ENGINE, "load", None)  # optional: engines load on their first read otherwise
    try:
        if load is not None:
            load()
        if warmup is not None:
            _ENGINE.read(warmup)
    except Exception:  # an initializer that raises breaks the pool with no message: the reads load
        pass  # again, and each reports the error on its sample
    if all_loaded is not None:
        try:
            all_loaded.wait(timeout=600)
        except threading.BrokenBarrierError:  # a process that failed to start: its error comes with a read
            pass


def _loaded() -> None:
    """A task that runs once its process, and so every process of the pool, is initialized."""


def _read(image: np.ndarray, key: str | None) -> str | None:
    """A pool process's read of ``image``, cached under ``key`` unless it is None. The claim on
    ``key`` is taken here, as the read starts, not when the read was queued: another worker's
    pool that reaches the same image first reads it, and this returns None (read elsewhere: the
    stage waits for that entry). An entry stored since the read was queued is returned as it is."""
    if key is None:
        return _ENGINE.read(image).text
    hit, claimed = cache.lookup_or_claim(key)
    if hit is not None:
        return hit.text
    if not claimed:
        return None
    try:
        result = _ENGINE.read(image)
        cache.store(key, _ENGINE, result)
    finally:
        cache.release(key)
    return result.text


def _done(text: str) -> Future:
    future = Future()
    future.set_result(text)
    return future


def _chain(job: Future, future: Future) -> None:
    """Complete ``future`` as ``job`` completes."""
    def copy(done: Future) -> None:
        if done.cancelled():
            future.cancel()
        elif done.exception() is not None:
            future.set_exception(done.exception())
        else:
            future.set_result(done.result())

    job.add_done_callback(copy)


class OtherWorkersReads:
    """Reads another worker has claimed (:func:`evalsuite.ocr.cache.claim`), waited for.

    A thread looks each one up in the cache every ``POLL_S`` and completes its future
    from the entry the other worker stores. If the claim goes away without an entry
    (that read failed, or its worker ended), ``read(image, key)`` reads it here after all.
    """

    POLL_S = 0.05

    def __init__(self, read: Callable[[np.ndarray, str], Future]):
        self._read = read
        self._waiting: list[tuple[str, np.ndarray, Future]] = []
        self._wake = threading.Condition()
        self._closed = False
        threading.Thread(target=self._run, name="evalsuite-ocr-claims", daemon=True).start()

    def wait_for(self, key: str, image: np.ndarray) -> Future:
        future = Future()
        with self._wake:
            self._waiting.append((key, image, future))
            self._wake.notify()
        return future

    def close(self) -> None:
        """Stop watching; what is still waited for is cancelled."""
        with self._wake:
            self._closed = True
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._waiting and not self._closed:
                    self._wake.wait()
                if self._closed:
                    for _, _, future in self._waiting:
                        future.cancel()
                    return
                waiting = list(self._waiting)
            settled = [item for item in waiting if self._settle(*item)]
            with self._wake:
                for item in settled:
                    self._waiting.remove(item)
            time.sleep(self.POLL_S)

    def _settle(self, key: str, image: np.ndarray, future: Future) -> bool:
        """Whether ``future`` is complete, or given to a read of this worker's, after this look."""
        hit = cache.lookup(key)
        if hit is None:
            if cache.claimed(key):
                return False  # still being read elsewhere
            # its holder stores the entry, then releases the claim: look again, the entry may have
            # landed between the two looks above
            hit = cache.lookup(key)
        if hit is not None:
            future.set_result(hit.text)
        else:
            try:
                _chain(self._read(image, key), future)
            except Exception as exc:  # e.g. this worker's pool is shut down
                future.set_exception(exc)
        return True


def _wait(jobs: list[Future]) -> None:
    """Until every job is done; their errors are reported where their results are used."""
    for job in jobs:
        try:
            job.result()
        except Exception:
            pass


def _has_text(original_job: Future) -> bool:
    """Whether OCR(original) found any text (waits for it; a failed read counts as text, to report it)."""
    try:
        return bool(original_job.result().strip())
    except Exception:
        return True


class OcrStage:
    def __init__(self, engine_name: str = "rapidocr", workers: int = 0, device: str = "cpu"):
        """``device``: where the pool's processes run the OCR models ("cpu" or "cuda:N");
        ``workers``: how many processes (0: :func:`default_readers`)."""
        from .engines import get_engine

        self.engine_name = engine_name
        self.device = device
        # the pool's engines as this process sees them (version info, cache keys): it loads no models
        self._engine = get_engine(engine_name, **reader_options(device))
        # every process starts now and loads its models while the worker loads its own;
        # wait_loaded() joins them before anything is timed
        self._pool, self._loading = start_pool(engine_name, device, workers or default_readers(device))
        self._others = OtherWorkersReads(self._pool_read)
        self._in_flight: dict[str, Future] = {}  # reads queued by this stage and not done, by cache key
        self._lock = threading.Lock()
        self._ahead: list[threading.Thread] = []  # read_ahead's threads, each with its reads
        self._ahead_jobs: list[Future] = []

    def wait_loaded(self) -> None:
        """Until every pool process has loaded its models (they take cores a timed forward needs)."""
        _wait(self._loading)
        self._loading = []

    def wait_idle(self) -> None:
        """Until the pool has loaded and the reads queued by :meth:`read_ahead` are done: what the
        worker times next runs with no read of this stage in flight."""
        self.wait_loaded()
        for thread in self._ahead:
            thread.join()
        _wait(self._ahead_jobs)
        self._ahead, self._ahead_jobs = [], []

    def read_ahead(self, samples: list[Sample]) -> None:
        """Queue the reads of ``samples``' originals now, from a thread, and return: the pool reads
        them while the worker loads its model and runs the reference pass. Every case needs its
        originals' reads; :meth:`submit` finds them in flight or cached. A sample that fails to load
        is left to :meth:`submit`, which reports it on its record."""
        def queue_all() -> None:
            jobs = thread_map(self._read_original, samples)
            self._ahead_jobs.extend(job for job in jobs if job is not None)

        thread = threading.Thread(target=queue_all, name="evalsuite-ocr-ahead", daemon=True)
        thread.start()
        self._ahead.append(thread)

    def _read_original(self, sample: Sample) -> Future | None:
        try:
            return self._read_job(np.asarray(sample.load()))
        except SampleError:
            return None
        except RuntimeError:  # the pool is shut down: the stage closed while this thread queued
            return None

    def version_info(self) -> dict[str, str]:
        return ({f"ocr_{k}": str(v) for k, v in self._engine.version_info().items()}
                | {"ocr_engine": self.engine_name, "ocr_device": self.device})

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
        original_job = self._read_job(original_px)
        if sample.reference_text is None and not _has_text(original_job):
            return None  # a picture without words: nothing for OCR to lose
        if sent is not None:
            seen = np.asarray(sent.convert("RGB"))
        else:
            seen = original_px if plan.is_identity else np.asarray(reconstruct(original, plan))
        identical = seen is original_px or np.array_equal(seen, original_px)
        return record, sample, original_job, None if identical else self._read_job(seen)

    def _read_job(self, image: np.ndarray) -> Future:
        """The read of ``image``: from the cache, looked up here, or by the pool, which caches it. A
        cached page costs a hash on this thread, not a copy of its pixels to another process. A read
        another worker is doing now is waited for, not done twice."""
        key = cache.cache_key(image, self._engine)
        with self._lock:
            job = self._in_flight.get(key)
        if job is not None:  # queued ahead, or by another sample with the same pixels
            return job
        hit = cache.lookup(key)
        if hit is not None:
            return _done(hit.text)
        job = self._others.wait_for(key, image) if cache.claimed(key) else self._pool_read(image, key)
        with self._lock:
            self._in_flight[key] = job
        job.add_done_callback(lambda _: self._forget(key, job))  # done: the cache has it (or it failed)
        return job

    def _forget(self, key: str, job: Future) -> None:
        with self._lock:
            if self._in_flight.get(key) is job:
                del self._in_flight[key]

    def _pool_read(self, image: np.ndarray, key: str) -> Future:
        """The pool's read of ``image``; one that another worker claimed before a pool process
        could start it is waited for instead (see :func:`_read`)."""
        future = Future()

        def settle(job: Future) -> None:
            if not job.cancelled() and job.exception() is None and job.result() is None:
                _chain(self._others.wait_for(key, image), future)  # read elsewhere
            else:
                _chain(job, future)

        self._pool.submit(_read, image, key).add_done_callback(settle)
        return future

    def collect(self, jobs: list) -> None:
        """Wait for the reads queued by :meth:`submit` and fill in the OCR KPIs."""
        for record, sample, original_job, seen_job in jobs:
            try:
                original_text = original_job.result()
                seen_text = original_text if seen_job is None else seen_job.result()
            except Exception as exc:  # one unreadable page must not end the case
                record.error = f"OCR failed on sample {sample.sample_id}: {type(exc).__name__}: {exc}"
                continue
            reference = sample.reference_text if sample.reference_text is not None else original_text
            k = record.kpis
            k["ocr_wer"] = wer.word_error_rate(seen_text, reference)
            k["ocr_cer"] = wer.char_error_rate(seen_text, reference)
            k["ocr_wer_original"] = wer.word_error_rate(original_text, reference)
            k["ocr_cer_original"] = wer.char_error_rate(original_text, reference)
            k["ocr_wer_drift"] = k["ocr_wer"] - k["ocr_wer_original"]
            k["ocr_cer_drift"] = k["ocr_cer"] - k["ocr_cer_original"]
            record.info["ocr_reference"] = "ground_truth" if sample.reference_text is not None else "ocr_original"
            normalized = normalize_text(reference)
            record.info["ocr_reference_words"] = len(normalized.split())  # weights of the corpus-level rates
            record.info["ocr_reference_chars"] = len(normalized)
            record.info["ocr_text"] = seen_text
            record.info["ocr_reread"] = seen_job is not None
            if sample.fields:
                hits = field_hits(seen_text, sample.fields)
                record.info["sroie_fields"] = hits
                if hits:
                    k["sroie_fields_found"] = sum(hits.values()) / len(hits)

    def close(self) -> None:
        self._others.close()
        self._pool.shutdown(wait=False, cancel_futures=True)  # a read not started holds no claim
        cache.prune_if_due()
