"""OCR results cached on disk by image content, shared by every run on a machine.

The key is the sha256 of the pixels (RGB bytes and shape) and of the engine's
:meth:`~evalsuite.ocr.engines.OcrEngine.version_info`: a new model file or engine
setting misses the cache instead of returning stale text. The engine reads
deterministically (one onnxruntime thread per process), so an image read before
gives the same result, whichever run, case or method produced it: every original
is read once per machine, and a reconstruction once per token plan, so a gate
run whose plans did not change reads nothing again.

Entries are JSON under ``cache_dir("ocr")``, written to a temporary file and
renamed into place, so concurrent workers never read half a file. A process about
to read an image claims its key first (:func:`claim`, a file created exclusively
beside the entry); another worker that finds the claim waits for the entry
instead of reading the same image at the same time (two workers that begin on the
same dataset with a fresh cache would otherwise read all its originals twice). A claim whose process
has ended, or older than :data:`CLAIM_STALE_S`, no longer counts. A hit marks its entry used;
:func:`prune` drops the least recently used entries beyond :data:`CACHE_BYTES`
(each worker asks, at most hourly: :func:`prune_if_due`).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

from evalsuite.ocr.engines import OcrEngine, OcrLine, OcrResult
from evalsuite.paths import cache_dir


CACHE_BYTES = 512 << 20  # what :func:`prune` keeps: many gate runs' worth of new plans on the full store
PRUNE_EVERY_S = 3600.0  # :func:`prune_if_due`: scanning a full cache takes a noticeable time, so not every run
CLAIM_STALE_S = 900.0  # a claim this old counts as abandoned: a claim lasts one read (seconds), so this only
                       # bounds one left by a process on another host, whose pid is not checked


def cache_key(image: np.ndarray, engine: OcrEngine) -> str:
    """Hex sha256 of ``image`` (uint8 RGB [H, W, 3]) and the engine's version info."""
    digest = hashlib.sha256()
    digest.update(json.dumps(engine.version_info(), sort_keys=True, default=str).encode())
    digest.update(repr(image.shape).encode())
    digest.update(np.ascontiguousarray(image).data)  # the pixels in place: no copy of a page of megapixels
    return digest.hexdigest()


def lookup(key: str, directory: Path | None = None) -> OcrResult | None:
    """The cached read under ``key`` (:func:`cache_key`), or None; a hit marks the entry used."""
    path = _entry(key, directory)
    try:
        result = _from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):  # absent or unreadable, or a corrupt entry to overwrite
        return None
    _touch(path)
    return result


def store(key: str, engine: OcrEngine, result: OcrResult, directory: Path | None = None) -> bool:
    """Cache ``result``, what ``engine`` read of the image :func:`cache_key` gave ``key`` for; False
    where the cache cannot be written (the read stands, it is only not kept)."""
    try:
        _write_atomic(_entry(key, directory),
                      json.dumps({"engine": engine.version_info(), **_to_json(result)}, ensure_ascii=False))
    except OSError:
        return False
    return True


def cached_read(engine: OcrEngine, image: np.ndarray, directory: Path | None = None) -> OcrResult:
    """``engine.read(image)``, from the cache when this image was read before by this engine version."""
    key = cache_key(image, engine)
    result = lookup(key, directory)
    if result is None:
        result = engine.read(image)
        store(key, engine, result, directory)
    return result


def lookup_or_claim(key: str, directory: Path | None = None) -> tuple[OcrResult | None, bool]:
    """``(the cached read, False)`` on a hit; else ``(None, True)`` once this process holds the
    claim to read the image, or ``(None, False)`` while another live process reads it. An entry
    stored between the look and the claim is returned, and the claim given back."""
    result = lookup(key, directory)
    if result is not None or not claim(key, directory):
        return result, False
    result = lookup(key, directory)
    if result is not None:
        release(key, directory)
    return result, result is None


def claim(key: str, directory: Path | None = None) -> bool:
    """Claim the read of ``key`` for this process: True if it should read the image (and then
    :func:`release`), False while another live process holds the claim."""
    path = _claim_file(key, directory)
    for _ in range(2):  # a stale claim is removed once, then claimed afresh
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if not _stale(path):
                return False
            release(key, directory)
            continue
        except OSError:  # a cache this process cannot write: read the image unclaimed
            return True
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {socket.gethostname()}")
        return True
    return False


def claimed(key: str, directory: Path | None = None) -> bool:
    """Whether a live claim on ``key`` is held (by any process)."""
    return not _stale(_claim_file(key, directory))


def release(key: str, directory: Path | None = None) -> None:
    """Give up a claim (the entry is stored, or the read failed)."""
    try:
        _claim_file(key, directory).unlink(missing_ok=True)
    except OSError:  # never made (a read-only cache)
        pass


def _stale(path: Path) -> bool:
    """Whether the claim file ``path`` holds no live claim: absent, too old, or its process (on this
    host) has ended."""
    try:
        holder, age = path.read_text(encoding="utf-8"), time.time() - path.stat().st_mtime
    except OSError:  # absent, or a cache this process cannot read
        return True
    pid, _, host = holder.partition(" ")
    if age > CLAIM_STALE_S:
        return True
    if host == socket.gethostname() and pid.isdigit():
        return not _running(int(pid))
    return False


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs: a killed reader that its parent has not reaped yet is a zombie,
    which signal 0 still finds, but it holds its claim no more (waiting on it would wait forever when
    the parent reaps its pool's processes only as the pool shuts down)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):  # no /proc (not Linux), or it ended between the two looks
        return True


def _root(directory: Path | None) -> Path:
    """``directory``, else the machine's OCR cache; one that cannot be made is returned as it is, and
    every read and write under it then fails (reads are done and not kept)."""
    if directory is not None:
        return directory
    try:
        return cache_dir("ocr")
    except OSError:
        return cache_dir("ocr", create=False)


def _entry(key: str, directory: Path | None) -> Path:
    return _root(directory) / key[:2] / f"{key}.json"


def _claim_file(key: str, directory: Path | None) -> Path:
    return _root(directory) / key[:2] / f"{key}.claim"


def _to_json(result: OcrResult) -> dict:
    return {"text": result.text, "lines": [{"box": line.box, "text": line.text, "score": line.score}
                                           for line in result.lines]}


def _from_json(data: dict) -> OcrResult:
    lines = [OcrLine(tuple(tuple(point) for point in line["box"]), line["text"], line["score"])
             for line in data["lines"]]
    return OcrResult(data["text"], lines)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _touch(path: Path) -> None:
    """Mark an entry used now (its modification time orders :func:`prune`)."""
    try:
        os.utime(path)
    except OSError:  # pruned meanwhile, or a read-only cache: the entry was read all the same
        pass


def prune(directory: Path | None = None, max_bytes: int = CACHE_BYTES) -> int:
    """Delete the least recently used entries until the cache holds at most ``max_bytes``; how many went.
    Safe while other processes read and write it (a vanished entry is skipped)."""
    directory = _root(directory)
    entries = []
    for path in directory.glob("*/*.json"):
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        entries.append((stat.st_mtime, stat.st_size, path))
    total, deleted = sum(size for _, size, _ in entries), 0
    for _, size, path in sorted(entries):  # least recently used first
        if total <= max_bytes:
            break
        path.unlink(missing_ok=True)
        total, deleted = total - size, deleted + 1
    return deleted


def prune_if_due(directory: Path | None = None, every_s: float = PRUNE_EVERY_S, max_bytes: int = CACHE_BYTES) -> int:
    """:func:`prune`, unless this cache was pruned less than ``every_s`` ago (a marker file's time)."""
    marker = _root(directory) / ".pruned"
    try:
        if time.time() - marker.stat().st_mtime < every_s:
            return 0
    except OSError:  # never pruned, or a cache this process cannot read
        pass
    try:
        marker.touch()
        return prune(marker.parent, max_bytes)
    except OSError:  # a cache this process may read but not change stays as it is
        return 0
