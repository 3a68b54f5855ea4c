"""The OCR cache: keyed by pixels and engine version, safe to share between processes."""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from evalsuite.ocr import cache
from evalsuite.ocr.cache import cache_key, cached_read, prune, prune_if_due
from evalsuite.ocr.engines import OcrLine, OcrResult

from .conftest import claim_of_an_ended_process


class CountingEngine:
    name = "counting"

    def __init__(self, version: str = "1"):
        self.version, self.reads = version, 0

    def version_info(self):
        return {"engine": self.name, "version": self.version}

    def read(self, image):
        self.reads += 1
        box = ((0.0, 0.0), (10.0, 0.0), (10.0, 5.0), (0.0, 5.0))
        return OcrResult(f"mean {image.mean():.1f} “naïve”", [OcrLine(box, "naïve", 0.9)])


def image(value: int = 0) -> np.ndarray:
    return np.full((8, 8, 3), value, np.uint8)


def test_second_read_comes_from_disk_unchanged(tmp_path):
    engine = CountingEngine()
    first = cached_read(engine, image(3), tmp_path)
    again = cached_read(CountingEngine(), image(3), tmp_path)  # a fresh process would hold a fresh engine
    assert engine.reads == 1 and again == first


def test_pixels_and_engine_version_are_part_of_the_key(tmp_path):
    engine = CountingEngine()
    cached_read(engine, image(3), tmp_path)
    cached_read(engine, image(4), tmp_path)
    cached_read(engine, image(3).reshape(4, 16, 3), tmp_path)  # same bytes, other shape
    newer = CountingEngine(version="2")
    cached_read(newer, image(3), tmp_path)
    assert engine.reads == 3 and newer.reads == 1
    assert cache_key(image(3), engine) != cache_key(image(3), newer)


def test_corrupt_entry_is_recomputed(tmp_path):
    engine = CountingEngine()
    cached_read(engine, image(1), tmp_path)
    [entry] = tmp_path.rglob("*.json")
    entry.write_text("{ half written")
    assert cached_read(engine, image(1), tmp_path).text.startswith("mean 1.0")
    assert engine.reads == 2 and json.loads(entry.read_text())["engine"]["version"] == "1"


def test_default_location_is_the_evalsuite_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALSUITE_CACHE", str(tmp_path))
    cached_read(CountingEngine(), image(), None)
    assert list((tmp_path / "ocr").rglob("*.json"))


def _read_in_worker(args):
    directory, value = args
    return cached_read(CountingEngine(), image(value), directory).text


def test_concurrent_processes_leave_valid_entries(tmp_path):
    with ProcessPoolExecutor(4) as pool:
        texts = list(pool.map(_read_in_worker, [(tmp_path, v % 3) for v in range(24)]))
    assert sorted(set(texts)) == [f"mean {v}.0 “naïve”" for v in range(3)]
    entries = list(tmp_path.rglob("*.json"))
    assert len(entries) == 3 and not list(tmp_path.rglob("*.tmp"))
    assert all(json.loads(e.read_text(encoding="utf-8"))["lines"] for e in entries)


def test_prune_drops_the_least_recently_used_entries_beyond_the_bound(tmp_path):
    import os

    engine = CountingEngine()
    for value in range(4):
        cached_read(engine, image(value), tmp_path)
    entries = {value: next(tmp_path.rglob(f"{cache_key(image(value), engine)}.json")) for value in range(4)}
    for age, value in enumerate((3, 2, 1, 0)):  # written in order 0..3; make 3 the oldest, 0 the newest ...
        os.utime(entries[value], (1_000_000 + age, 1_000_000 + age))
    cached_read(engine, image(3), tmp_path)  # ... then use 3 again: a hit marks it used now
    assert engine.reads == 4
    size = entries[0].stat().st_size
    assert prune(tmp_path, max_bytes=2 * size) == 2
    assert sorted(v for v, path in entries.items() if path.exists()) == [0, 3]  # 2 and 1 were used least recently
    assert prune(tmp_path, max_bytes=2 * size) == 0


def test_prune_if_due_scans_at_most_once_an_interval(tmp_path):
    import os

    engine = CountingEngine()
    for value in range(3):
        cached_read(engine, image(value), tmp_path)
    assert prune_if_due(tmp_path, every_s=3600, max_bytes=0) == 3  # no marker yet: due
    cached_read(engine, image(9), tmp_path)
    assert prune_if_due(tmp_path, every_s=3600, max_bytes=0) == 0  # pruned a moment ago: not due
    marker = tmp_path / ".pruned"
    os.utime(marker, (marker.stat().st_mtime - 7200,) * 2)
    assert prune_if_due(tmp_path, every_s=3600, max_bytes=0) == 1  # due again


def test_one_live_claim_per_key_until_released_or_abandoned(tmp_path, monkeypatch):
    """A claim is exclusive while its process lives; it lapses when released, when its process has
    ended, or when it is older than CLAIM_STALE_S."""
    key = cache_key(image(1), CountingEngine())
    assert cache.claim(key, tmp_path) and cache.claimed(key, tmp_path)
    assert not cache.claim(key, tmp_path)  # held by a live process (this one)
    cache.release(key, tmp_path)
    assert not cache.claimed(key, tmp_path) and cache.claim(key, tmp_path)

    claim_of_an_ended_process(key, tmp_path)
    assert not cache.claimed(key, tmp_path) and cache.claim(key, tmp_path)  # its process is gone

    assert not cache.claim(key, tmp_path)
    monkeypatch.setattr(cache, "CLAIM_STALE_S", -1.0)
    assert not cache.claimed(key, tmp_path) and cache.claim(key, tmp_path)  # too old
    assert len(list(tmp_path.rglob("*.claim"))) == 1 and not list(tmp_path.rglob("*.json"))


def test_a_cache_that_cannot_be_written_costs_reads_not_results(tmp_path):
    """Where the cache directory cannot hold entries (here a file stands in its place), every read
    is done and returned, unclaimed and not kept, instead of failing the sample."""
    blocked = tmp_path / "not_a_directory"
    blocked.write_text("", encoding="utf-8")
    engine = CountingEngine()
    key = cache_key(image(2), engine)
    assert cache.lookup(key, blocked) is None and not cache.claimed(key, blocked)
    assert cache.claim(key, blocked)  # read it, unclaimed
    assert not cache.store(key, engine, engine.read(image(2)), blocked)
    cache.release(key, blocked)
    assert cached_read(engine, image(2), blocked) == engine.read(image(2)) and engine.reads == 3
    assert cache.prune_if_due(blocked) == 0


def test_a_cache_root_that_cannot_be_made_costs_reads_not_results(tmp_path, monkeypatch):
    """The same through ``$EVALSUITE_CACHE``, the way a run finds its cache."""
    blocked = tmp_path / "not_a_directory"
    blocked.write_text("", encoding="utf-8")
    monkeypatch.setenv("EVALSUITE_CACHE", str(blocked))
    engine = CountingEngine()
    key = cache_key(image(2), engine)
    assert cache.lookup(key) is None and not cache.claimed(key) and cache.claim(key)
    assert cached_read(engine, image(2)) == engine.read(image(2)) and cache.prune_if_due() == 0
