"""OCR of unmodified images, cached on disk by content.

Every compression method is compared against the OCR of the same original
image, so that read is done once per machine, not once per method, model and
worker. The key is the sha256 of the pixels (RGB bytes and shape) and of the
engine's :meth:`~evalsuite.ocr.engines.OcrEngine.version_info`: a new model file
or engine setting misses the cache instead of returning stale text. Entries are
JSON under ``cache_dir("ocr")``, written to a temporary file and renamed into
place, so concurrent workers never read half a file (the worst case is two
workers computing the same entry).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from evalsuite.ocr.engines import OcrEngine, OcrLine, OcrResult
from evalsuite.paths import cache_dir


def cache_key(image: np.ndarray, engine: OcrEngine) -> str:
    """Hex sha256 of ``image`` (uint8 RGB [H, W, 3]) and the engine's version info."""
    digest = hashlib.sha256()
    digest.update(json.dumps(engine.version_info(), sort_keys=True, default=str).encode())
    digest.update(repr(image.shape).encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def cached_read(engine: OcrEngine, image: np.ndarray, directory: Path | None = None) -> OcrResult:
    """``engine.read(image)``, from the cache when this image was read before by this engine version."""
    directory = directory or cache_dir("ocr")
    key = cache_key(image, engine)
    path = directory / key[:2] / f"{key}.json"
    try:
        return _from_json(json.loads(path.read_text(encoding="utf-8")))
    except (FileNotFoundError, ValueError, KeyError, TypeError):  # absent, or a corrupt entry to overwrite
        pass
    result = engine.read(image)
    _write_atomic(path, json.dumps({"engine": engine.version_info(), **_to_json(result)}, ensure_ascii=False))
    return result


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
