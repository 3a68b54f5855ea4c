"""The OCR reader of a worker: a process pool that reads images, with a cache in front of it.

:class:`OcrReader` turns an image (uint8 RGB [H, W, 3]) into the future of its text.
OCR is the slow part of a case, so reads run in a process pool sized to this
worker's share of the cores. Where the worker has a GPU, the pool's processes run
the det/rec models on it (:class:`~evalsuite.ocr.engines.RapidOcrEngine` with
``device``), and :data:`GPU_READERS` of them keep it busy while each does its pre-
and post-processing (docs/performance.md has the measurements behind the number).

Every read is cached by image content across runs (:mod:`evalsuite.ocr.cache`):
an original is read once per machine, a reconstruction once per token plan. The
reader looks reads up in the cache itself and sends only the others to the pool,
so a cached page is hashed, not copied to another process. A dataset's originals,
which every case of it needs, can be queued ahead (:meth:`OcrReader.read_ahead`:
the pool reads them while the worker loads its model), and a read in flight is
shared by every caller that asks for the same pixels.

A pool process claims each read as it starts it (:func:`read_in_process`); a read
another worker has claimed is not read again but waited for, on a thread that
watches the cache (:class:`OtherWorkersReads`), while this worker's own reads go
on. Claiming at the start rather than when queueing lets two workers that begin
on the same dataset split its originals between their pools.

A reader process that ends mid-read (killed, out of memory) breaks the pool, and
every read in flight with it: the pool is built again and those reads are queued
once more (:meth:`OcrReader.read_in_pool`); a read that fails a second time raises
its error, which the caller reports on its sample. Readers end with the process
that started them, however it ends (:func:`_end_with`): no reader outlives its worker.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, InvalidStateError, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Callable, Iterable

import numpy as np

from .. import runlog
from ..workers import cores_per_worker, thread_map
from . import cache

_ENGINE = None  # one engine per pool process
# Pool processes per GPU by default: more readers than this slowed a two-GPU gate down (they take the
# cores the workers' timed forwards need), fewer left the GPU idle (docs/performance.md).
GPU_READERS = 8
PARENT_CHECK_S = 0.5  # how often a reader checks that its worker is alive (:func:`_end_with`)


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
                               initargs=(engine_name, device, context.Barrier(processes), warmup, os.getpid()))
    # Each submit while no process is idle starts one; a task runs once its process is initialized.
    return pool, [pool.submit(_loaded) for _ in range(processes)]


def _one_thread_each(device: str) -> None:
    """Process-wide thread pools of a reader down to one thread: the pool has a process per core,
    or ``GPU_READERS`` per GPU, and that many readers with a thread per core each would
    oversubscribe the host (onnxruntime's threads are the engine's ``threads`` option)."""
    try:
        import cv2  # rapidocr's and paddleocr's resizes and crops
    except ImportError:
        pass
    else:
        cv2.setNumThreads(1)
    if device != "cpu":
        import torch

        torch.set_num_threads(1)


def _init(engine_name: str, device: str = "cpu", all_loaded=None, warmup: np.ndarray | None = None,
          parent: int | None = None) -> None:
    """A pool process's initializer: it ends with ``parent`` (:func:`_end_with`), then one thread each,
    its engine, models loaded (and ``warmup`` read, uncached, so first-inference costs are paid);
    then, with ``all_loaded`` (a barrier of the pool's processes), it waits until every process has
    done the same."""
    global _ENGINE
    from .engines import get_engine

    if parent is not None:
        _end_with(parent)
    runlog.redirect_output()  # the engine's own log lines (RapidOCR's) go to the run log
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


def _end_with(parent: int, every_s: float = PARENT_CHECK_S) -> None:
    """End this process once ``parent`` (the worker that started the pool) has ended, however it
    ended: a worker killed with -9 runs no clean-up, and its readers, each holding its models, would
    otherwise outlive it, waiting on a queue nobody writes to. A thread checks every ``every_s``
    whether this process was handed to another parent (a dead parent's children are re-parented).
    Portable, and unlike ``PR_SET_PDEATHSIG`` it does not fire when the *thread* that started the
    process ends (a pool built again is started from one of the pool's own threads)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(1)  # no clean-up to wait for: the reads of a dead worker have no one to go to

    if os.getppid() != parent:  # it ended while this process started
        os._exit(1)
    threading.Thread(target=watch, name="evalsuite-ocr-parent", daemon=True).start()


def _loaded() -> None:
    """A task that runs once its process, and so every process of the pool, is initialized."""


def read_in_process(image: np.ndarray, key: str | None) -> str | None:
    """A pool process's read of ``image``, cached under ``key`` unless it is None. The claim on
    ``key`` is taken here, as the read starts, not when the read was queued: another worker's
    pool that reaches the same image first reads it, and this returns None (read elsewhere: the
    reader waits for that entry). An entry stored since the read was queued is returned as it is.
    A process killed mid-read leaves its claim behind; the claim names the dead pid, so it no
    longer counts (:func:`evalsuite.ocr.cache.claimed`) and the read is claimed again on retry."""
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


def wait_all(jobs: Iterable[Future]) -> None:
    """Until every job is done; their errors are reported where their results are used."""
    for job in jobs:
        try:
            job.result()
        except Exception:
            pass


class OcrReader:
    """Reads images to text for one worker: cache first, then its pool (or another worker's read).

    Every read is a :class:`~concurrent.futures.Future` of the text; a read that fails raises its
    error from ``result()``. The pool's processes start with the reader and load their models
    while the worker loads its own (:meth:`wait_loaded` joins them).
    """

    def __init__(self, engine_name: str = "rapidocr", workers: int = 0, device: str = "cpu"):
        """``device``: where the pool's processes run the OCR models ("cpu" or "cuda:N");
        ``workers``: how many processes (0: :func:`default_readers`)."""
        from .engines import get_engine

        self.engine_name = engine_name
        self.device = device
        self.processes = workers or default_readers(device)
        # the pool's engine as this process sees it (version info, cache keys): it loads no models
        self.engine = get_engine(engine_name, **reader_options(device))
        self._pool, self._loading = start_pool(engine_name, device, self.processes)
        self._others = OtherWorkersReads(self.read_in_pool)
        self._in_flight: dict[str, Future] = {}  # reads queued and not done, by cache key
        self._lock = threading.Lock()
        self._ahead: list[threading.Thread] = []  # read_ahead's threads, each with its reads
        self._ahead_jobs: list[Future] = []
        self._submitted: list[tuple[ProcessPoolExecutor, Future]] = []  # pool jobs not seen done yet
        self._closed = False
        self.restarts = 0  # pools built again after one of their processes ended mid-read

    # -- reads ---------------------------------------------------------------------------
    def key(self, image: np.ndarray) -> str:
        """The cache key of ``image`` read by this reader's engine."""
        return cache.cache_key(image, self.engine)

    def read(self, image: np.ndarray) -> Future:
        """The read of ``image``: from the cache, looked up here, or by the pool, which caches it. A
        cached page costs a hash on this thread, not a copy of its pixels to another process. A read
        another worker is doing now is waited for, and one of the same pixels in flight here is
        shared, not done twice."""
        key = self.key(image)
        with self._lock:
            job = self._in_flight.get(key)
        if job is not None:  # queued ahead, or by another caller with the same pixels
            return job
        hit = cache.lookup(key)
        if hit is not None:
            return _done(hit.text)
        job = self._others.wait_for(key, image) if cache.claimed(key) else self.read_in_pool(image, key)
        with self._lock:
            self._in_flight[key] = job
        job.add_done_callback(lambda _: self._forget(key, job))  # done: the cache has it (or it failed)
        return job

    def _forget(self, key: str, job: Future) -> None:
        with self._lock:
            if self._in_flight.get(key) is job:
                del self._in_flight[key]

    def read_in_pool(self, image: np.ndarray, key: str, retries: int = 1) -> Future:
        """The pool's read of ``image`` under cache key ``key``, without this reader's own look at
        the cache; one that another worker claimed before a pool process could start it is waited
        for instead (see :func:`read_in_process`). A read lost to a crashed pool process (the pool
        is broken: every read in flight fails with it) is read again, ``retries`` times, by a new
        pool (:meth:`_rebuild`); one that still fails raises its error from ``result()``."""
        future = Future()
        pool = self._pool
        try:
            job = pool.submit(read_in_process, image, key)
        except BrokenProcessPool as exc:  # broken since the last read: no process is left to read this one
            if retries <= 0:
                future.set_exception(exc)
                return future
            self._rebuild(pool)
            return self.read_in_pool(image, key, retries - 1)

        with self._lock:
            self._submitted.append((pool, job))

        def settle(job: Future) -> None:
            error = None if job.cancelled() else job.exception()
            if isinstance(error, BrokenProcessPool) and retries > 0:
                try:
                    self._rebuild(pool)
                    _chain(self.read_in_pool(image, key, retries - 1), future)
                except Exception as exc:  # the reader is closed, or a new pool cannot start
                    future.set_exception(exc)
            elif not job.cancelled() and error is None and job.result() is None:
                _chain(self._others.wait_for(key, image), future)  # read elsewhere
            else:
                _chain(job, future)

        job.add_done_callback(settle)
        return future

    def result(self, future: Future, poll_s: float = 2.0):
        """``future.result()`` of a read of this reader's, failing on the way the pool jobs that a
        broken pool left behind (:meth:`fail_orphans`), so that their reads are retried, or fail,
        instead of being waited for forever."""
        while not wait([future], timeout=poll_s).done:
            self.fail_orphans()
        return future.result()

    def fail_orphans(self) -> int:
        """Fail with :class:`BrokenProcessPool` the jobs still pending on a pool whose manager has
        ended (broken, or shut down by :meth:`_rebuild`): a reader killed just as its pool was found
        broken can leave a job submitted in between that the executor never completes. Returns how
        many were failed."""
        with self._lock:
            self._submitted = [(pool, job) for pool, job in self._submitted if not job.done()]
            pending = list(self._submitted)
        failed = 0
        for pool, job in pending:
            manager = getattr(pool, "_executor_manager_thread", None)
            ended = getattr(pool, "_broken", False) or getattr(pool, "_shutdown_thread", False)
            if ended and (manager is None or not manager.is_alive()):
                try:
                    job.set_exception(BrokenProcessPool("the OCR pool broke before this read was run"))
                    failed += 1
                except InvalidStateError:  # completed meanwhile
                    pass
        return failed

    def _rebuild(self, broken: ProcessPoolExecutor) -> None:
        """Replace the pool ``broken`` (one of its processes ended mid-read: killed, or out of
        memory) by a new one, unless that was done already; a closed reader raises instead. The new
        processes load their models as the first ones did, and :meth:`wait_idle` waits for them."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the OCR reader is closed")
            if self._pool is not broken:  # another read found it broken first
                return
            self._pool, loading = start_pool(self.engine_name, self.device, self.processes)
            self._loading = [*self._loading, *loading]
            self.restarts += 1
        broken.shutdown(wait=False, cancel_futures=True)

    def read_ahead(self, images: Iterable[Callable[[], np.ndarray | None]]) -> None:
        """Queue the reads of the images ``images`` load (a loader returns None to be left out) from
        a thread, and return: the pool reads them while the worker does other work. A later
        :meth:`read` of the same pixels finds them in flight or cached."""
        loaders = list(images)

        def queue_all() -> None:
            jobs = thread_map(self._read_loaded, loaders)
            self._ahead_jobs.extend(job for job in jobs if job is not None)

        thread = threading.Thread(target=queue_all, name="evalsuite-ocr-ahead", daemon=True)
        thread.start()
        self._ahead.append(thread)

    def _read_loaded(self, load: Callable[[], np.ndarray | None]) -> Future | None:
        image = load()
        if image is None:
            return None
        try:
            return self.read(image)
        except RuntimeError:  # the pool is shut down: the reader closed while this thread queued
            return None

    # -- state ---------------------------------------------------------------------------
    def wait_loaded(self) -> None:
        """Until every pool process has loaded its models (they take cores a timed forward needs)."""
        while True:  # a pool built again meanwhile (:meth:`_rebuild`) adds its processes' loads
            with self._lock:
                self._loading = [job for job in self._loading if not job.done()]
                loading = list(self._loading)
            if not loading:
                return
            wait_all(loading)

    def wait_idle(self) -> None:
        """Until the pool has loaded and the reads queued by :meth:`read_ahead` are done: what the
        worker times next runs with no read of this reader in flight."""
        self.wait_loaded()
        for thread in self._ahead:
            thread.join()
        for job in self._ahead_jobs:  # their errors are reported where their results are used
            try:
                self.result(job)
            except Exception:
                pass
        self._ahead, self._ahead_jobs = [], []

    def in_flight(self) -> int:
        """Reads queued by this reader and not done yet."""
        with self._lock:
            return len(self._in_flight) + sum(not job.done() for job in self._ahead_jobs)

    def pids(self) -> list[int]:
        """Process ids of the pool's readers now (those started so far)."""
        return sorted((getattr(self._pool, "_processes", None) or {}).keys())

    def run_in_pool(self, fn: Callable, *args) -> Future:
        """``fn(*args)`` in one of the pool's processes (a picklable, module-level ``fn``): what a
        reader process holds, or a task that keeps one busy."""
        return self._pool.submit(fn, *args)

    def stop_pool(self) -> None:
        """End the pool's processes, once their reads are done: from here, a read that is not cached
        raises (a cached one is still returned)."""
        self._pool.shutdown(wait=True)

    def version_info(self) -> dict[str, str]:
        return ({f"ocr_{k}": str(v) for k, v in self.engine.version_info().items()}
                | {"ocr_engine": self.engine_name, "ocr_device": self.device})

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._others.close()
        self._pool.shutdown(wait=False, cancel_futures=True)  # a read not started holds no claim
        cache.prune_if_due()
