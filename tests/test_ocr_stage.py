"""The OCR stage's process pool: started with the stage, every process loaded before anything is timed."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from evalsuite.data.pages import render_page
from evalsuite.data.sample import Sample, SampleError
from evalsuite.ocr import cache
from evalsuite.ocr import reader as reader_module
from evalsuite.ocr.stage import OcrStage
from evalsuite.plan import TokenPlan
from evalsuite.results import SampleRecord

from .conftest import claim_of_an_ended_process

HALF = TokenPlan((2, 2), np.array([0, 1, -1, -1], np.int32), 2)  # the bottom half of a 2x2 grid dropped


def _what_this_process_loaded() -> tuple[int, list]:
    """(pid, [the session types of the det and rec models this pool process holds, OpenCV's threads])."""
    import cv2

    ocr = reader_module._ENGINE._ocr
    models = [] if ocr is None else [ocr.text_det, ocr.text_rec]
    return os.getpid(), [type(model.session).__name__ for model in models if model is not None] + [cv2.getNumThreads()]


@pytest.mark.parametrize("device,session", [("cpu", "OrtInferSession"),
                                            pytest.param("cuda:0", "_TorchSession", marks=pytest.mark.gpu)])
def test_every_pool_process_has_loaded_its_models_once_the_stage_says_so(device, session):
    stage = OcrStage(workers=2, device=device)
    try:
        stage.wait_loaded()
        assert len(stage.reader.pids()) == 2  # both started with the stage, before any read
        seen = dict(stage.reader.run_in_pool(_what_this_process_loaded).result() for _ in range(6))
    finally:
        stage.close()
    assert seen and all(loaded == [session, session, 1] for loaded in seen.values())  # one OpenCV thread each


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_pool_whose_models_cannot_load_reports_it_on_every_read():
    """Loading on cuda:0 without CUDA fails in the pool's initializer; the pool still starts, and
    each read raises the error (again: it never falls back to reading on the CPU)."""
    stage = OcrStage(workers=1, device="cuda:0")
    page = np.full((64, 64, 3), 255, np.uint8)
    try:
        stage.wait_loaded()
        for _ in range(2):
            with pytest.raises(RuntimeError, match="NVIDIA driver|CUDA"):
                stage.reader.run_in_pool(reader_module.read_in_process, page, None).result()
    finally:
        stage.close()


def test_each_kind_of_sample_gets_the_reads_it_needs(tmp_path, monkeypatch):
    """Queued on threads, the reads still land on their own records: a page with ground truth, the
    same page with its bottom half dropped, a page without ground truth (scored against OCR of the
    original), a blank photo (no text to lose: no OCR KPIs) and a sample that fails to load."""


    monkeypatch.setenv("EVALSUITE_CACHE", str(tmp_path))  # the pool's processes inherit it
    page = render_page("invoice", 3)
    blank = Image.new("RGB", (200, 120), "white")

    def broken():
        raise SampleError("sample t/broken: cannot read image broken.png")

    samples = [Sample("t/page", "t", "document", lambda: page.image, reference_text=page.text),
               Sample("t/half", "t", "document", lambda: page.image, reference_text=page.text),
               Sample("t/untruthed", "t", "document", lambda: page.image),
               Sample("t/blank", "t", "photo", lambda: blank),
               Sample("t/broken", "t", "photo", broken)]
    identity = TokenPlan.identity((2, 2))
    plans = [identity, HALF, HALF, identity, identity]
    records = [SampleRecord(s.sample_id, s.doc_type) for s in samples]
    stage = OcrStage(workers=2)
    try:
        stage.collect(stage.submit(samples, [SimpleNamespace(plans=plans)], records))
    finally:
        stage.close()
    page_kpis, half_kpis, untruthed, blank_record, broken_record = records
    assert page_kpis.info["ocr_reference"] == "ground_truth" and not page_kpis.info["ocr_reread"]
    assert page_kpis.kpis["ocr_wer_drift"] == 0 and page_kpis.kpis["ocr_wer"] < 0.1
    assert half_kpis.info["ocr_reread"] and half_kpis.kpis["ocr_wer_drift"] > 0.2  # half the text is gone
    assert half_kpis.kpis["ocr_wer_original"] == page_kpis.kpis["ocr_wer"]
    assert untruthed.info["ocr_reference"] == "ocr_original" and untruthed.kpis["ocr_wer_original"] == 0
    assert untruthed.kpis["ocr_wer"] > 0.2  # against what OCR read of the whole page
    assert not blank_record.kpis and blank_record.error is None
    assert broken_record.error == "sample t/broken: cannot read image broken.png" and not broken_record.kpis


def test_reads_cached_before_are_looked_up_by_the_stage_not_sent_to_its_pool(tmp_path, monkeypatch):
    """Once a page and what a plan left of it are cached, the stage scores them with its pool shut
    down (their pixels never travel to a reader again); a page never read still needs the pool."""


    monkeypatch.setenv("EVALSUITE_CACHE", str(tmp_path))
    pages = [render_page("invoice", seed) for seed in (3, 4)]
    samples = [Sample(f"t/{i}", "t", "document", lambda page=page: page.image, reference_text=page.text)
               for i, page in enumerate(pages)]
    half = SimpleNamespace(plans=[HALF])

    def records():
        return [SampleRecord(samples[0].sample_id, "document")]

    stage = OcrStage(workers=1)
    try:
        first, again = records(), records()
        stage.collect(stage.submit(samples[:1], [half], first))
        stage.reader.stop_pool()  # from here, a read the pool has to do raises
        stage.collect(stage.submit(samples[:1], [half], again))
        with pytest.raises(RuntimeError, match="shutdown"):
            stage.submit(samples[1:], [half], records())
    finally:
        stage.close()
    assert first[0].info["ocr_reread"] and first[0].kpis["ocr_wer_drift"] > 0.2
    assert again[0].error is None and again[0].kpis == first[0].kpis


def test_a_read_another_worker_has_claimed_is_waited_for_not_done_again(tmp_path, monkeypatch):
    """Two workers on one dataset: the stage reads a page itself once a claim on it is abandoned
    without an entry, and otherwise waits for the entry the claim's holder stores instead of
    sending the page to its pool."""
    monkeypatch.setenv("EVALSUITE_CACHE", str(tmp_path))
    page = np.asarray(render_page("invoice", 5).image)
    other = np.ascontiguousarray(page[:, ::-1])
    stage = OcrStage(workers=1)
    try:
        claim_file = claim_of_an_ended_process(cache.cache_key(other, stage.reader.engine))  # its process is gone
        read_here = stage.reader.read(other)
        assert read_here.result(timeout=120) == stage.reader.engine.read(other).text
        assert not claim_file.exists() and cache.lookup(cache.cache_key(other, stage.reader.engine))  # given up

        stage.reader.stop_pool()  # from here, a read the pool has to do raises
        key = cache.cache_key(page, stage.reader.engine)
        assert cache.claim(key)  # "another worker" (a live process: this one) is reading the page
        waited = stage.reader.read(page)
        time.sleep(5 * reader_module.OtherWorkersReads.POLL_S)
        assert not waited.done()
        cache.store(key, stage.reader.engine, stage.reader.engine.read(page))  # the other worker's entry lands
        cache.release(key)
        assert waited.result(timeout=10) == cache.lookup(key).text
    finally:
        stage.close()


def test_a_read_claimed_elsewhere_after_it_was_queued_is_waited_for(tmp_path, monkeypatch):
    """The claim is taken by the pool process as the read starts: a page that another worker
    claimed between this stage's look and the start of the read is left to that worker (two
    workers starting on one dataset split its originals), and its entry is what the stage returns."""
    from evalsuite.ocr.engines import OcrResult

    monkeypatch.setenv("EVALSUITE_CACHE", str(tmp_path))
    page = np.asarray(render_page("invoice", 6).image)
    stage = OcrStage(workers=1)
    try:
        stage.wait_loaded()
        key = cache.cache_key(page, stage.reader.engine)
        assert cache.claim(key)  # taken after the look: the stage sends the page to its pool
        waited = stage.reader.read_in_pool(page, key)
        time.sleep(5 * reader_module.OtherWorkersReads.POLL_S)
        assert not waited.done() and not cache.lookup(key)  # the pool process did not read it
        cache.store(key, stage.reader.engine, OcrResult("read by the other worker", []))
        cache.release(key)
        assert waited.result(timeout=10) == "read by the other worker"
    finally:
        stage.close()


def test_originals_read_ahead_are_read_once_and_scored_without_the_pool(tmp_path, monkeypatch):
    """read_ahead queues the originals' reads and returns; reads of the same pixels queued while
    one is in flight share it (one read); once wait_idle returns, the case scores them with the pool
    shut down. A sample that fails to load is not read ahead: submit reports it on its record."""
    monkeypatch.setenv("EVALSUITE_CACHE", str(tmp_path))
    page = render_page("invoice", 7)

    def broken():
        raise SampleError("sample t/broken: cannot read image broken.png")

    samples = [Sample("t/page", "t", "document", lambda: page.image, reference_text=page.text),
               Sample("t/copy", "t", "document", lambda: page.image, reference_text=page.text),
               Sample("t/broken", "t", "photo", broken)]
    stage = OcrStage(workers=1)
    try:
        stage.wait_loaded()
        stage.reader.run_in_pool(time.sleep, 1.0)  # the one reader is busy: what is queued now stays queued
        pixels = np.asarray(page.image)
        queued = stage.reader.read(pixels)
        assert stage.reader.read(pixels.copy()) is queued and not queued.done()  # one read, shared
        stage.read_ahead(samples)
        stage.wait_idle()
        assert queued.done() and stage.reader.in_flight() == 0
        stage.reader.stop_pool()  # from here, a read the pool has to do raises
        records = [SampleRecord(s.sample_id, s.doc_type) for s in samples]
        identity = TokenPlan.identity((2, 2))
        stage.collect(stage.submit(samples, [SimpleNamespace(plans=[identity] * 3)], records))
    finally:
        stage.close()
    page_record, copy_record, broken_record = records
    assert page_record.error is None and page_record.kpis["ocr_wer"] < 0.1
    assert copy_record.kpis == page_record.kpis
    assert broken_record.error == "sample t/broken: cannot read image broken.png"


def test_an_entry_stored_as_its_claim_is_released_is_not_read_again(monkeypatch):
    """The other worker stores its entry, then releases its claim. A look that missed the entry and
    then found no claim looks once more before reading the image here."""
    from concurrent.futures import Future

    entry = SimpleNamespace(text="stored by the other worker")
    looks = iter([None, entry])  # the first look comes just before the store, the claim check after the release
    monkeypatch.setattr(cache, "lookup", lambda key: next(looks))
    monkeypatch.setattr(cache, "claimed", lambda key: False)

    def read_here(image, key):
        raise AssertionError("read again although the entry had landed")

    others = reader_module.OtherWorkersReads(read_here)
    try:
        future = Future()
        assert others._settle("key", np.zeros((2, 2, 3), np.uint8), future)
        assert future.result(timeout=0) == "stored by the other worker"
    finally:
        others.close()


def _kill(pids: list[int]) -> None:
    import signal

    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _children() -> set[int]:
    """This process's child processes, from /proc (the pool's readers among them)."""
    from pathlib import Path

    return {int(pid) for task in Path(f"/proc/{os.getpid()}/task").iterdir()
            for pid in (task / "children").read_text().split()}


def test_a_reader_killed_mid_read_costs_only_that_read_which_is_read_again(tmp_path, monkeypatch):
    """kill -9 of a pool process while a read waits for it breaks the pool; the pool is built again
    and the read queued there, so it still returns the page's text; later reads use the new pool."""
    monkeypatch.setenv("EVALSUITE_CACHE", str(tmp_path))
    page = np.ascontiguousarray(np.asarray(render_page("invoice", 8).image)[:300])  # a few lines: quick reads
    stage = OcrStage(workers=1)
    try:
        stage.wait_loaded()
        [reader_pid] = stage.reader.pids()
        assert reader_pid in _children()
        stage.reader.run_in_pool(time.sleep, 30.0)  # the one reader is busy: the read below waits for it
        text = stage.reader.read(page)
        _kill([reader_pid])
        assert text.result(timeout=120) == stage.reader.engine.read(page).text
        assert stage.reader.restarts == 1 and reader_pid not in stage.reader.pids()
        flipped = np.ascontiguousarray(page[::-1])
        assert stage.reader.read(flipped).result(timeout=120) == stage.reader.engine.read(flipped).text
        assert stage.reader.restarts == 1
    finally:
        stage.close()


def test_a_sample_whose_read_fails_again_is_reported_and_keeps_its_record(tmp_path, monkeypatch):
    """Readers killed again and again: the read fails on the rebuilt pool too, and the sample gets
    an error naming it instead of OCR KPIs (the error does not end the case)."""
    import threading

    monkeypatch.setenv("EVALSUITE_CACHE", str(tmp_path))
    page = render_page("invoice", 9)
    sample = Sample("t/page", "t", "document", lambda: page.image, reference_text=page.text)
    record = SampleRecord(sample.sample_id, "document", kpis={"feature_cosine": 1.0})
    stage = OcrStage(workers=1)
    stop = threading.Event()

    def keep_killing():
        while not stop.is_set():
            _kill(stage.reader.pids())
            time.sleep(0.05)

    killer = threading.Thread(target=keep_killing, daemon=True)
    try:
        killer.start()
        stage.collect(stage.submit([sample], [SimpleNamespace(plans=[HALF])], [record]))
    finally:
        stop.set()
        killer.join()
        stage.close()
    assert record.error.startswith("OCR failed on sample t/page: BrokenProcessPool")
    assert record.info["error_stage"] == "ocr" and record.kpis == {"feature_cosine": 1.0}
    assert 1 <= stage.reader.restarts <= 2  # each of the two reads (original, reconstruction) retried once, not forever


READER_IN_A_WORKER = """
import sys, time
from evalsuite.ocr.reader import OcrReader

reader = OcrReader(workers=2)
reader.wait_loaded()
print(*reader.pids(), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not yet reaped by its new parent, does not)."""
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_readers_end_with_their_worker_when_it_is_killed(tmp_path):
    """kill -9 of the process that started a pool (an xdist worker, say) runs no clean-up: its
    readers notice they lost their parent and end within seconds, instead of holding their models."""
    import signal
    import subprocess
    import sys

    worker = subprocess.Popen([sys.executable, "-c", READER_IN_A_WORKER], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "EVALSUITE_CACHE": str(tmp_path)})
    try:
        pids = [int(pid) for pid in worker.stdout.readline().split()]
        assert len(pids) == 2 and all(map(_alive, pids))
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    deadline = time.monotonic() + 5 * stage_module_check_s() + 5
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_alive, pids)), f"readers {pids} outlived their worker"


def stage_module_check_s() -> float:
    return reader_module.PARENT_CHECK_S


def test_a_job_left_pending_by_an_ended_pool_is_failed_not_waited_for(monkeypatch):
    """A pool that broke (or was shut down) as a job was submitted to it can leave that job pending
    with no manager to complete it: the reader fails it, so the read is retried instead of hanging."""
    from concurrent.futures import Future, ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    reader = reader_module.OcrReader(workers=1)
    try:
        ended = ProcessPoolExecutor(max_workers=1)
        ended.shutdown()
        orphan, live = Future(), reader.run_in_pool(time.sleep, 0.2)
        monkeypatch.setattr(reader, "_submitted", [(ended, orphan), (reader._pool, live)])
        started = time.monotonic()
        with pytest.raises(BrokenProcessPool):
            reader.result(orphan, poll_s=0.05)
        assert time.monotonic() - started < 5
        assert live.result(timeout=30) is None  # a job of the running pool is left to it
    finally:
        reader.close()
