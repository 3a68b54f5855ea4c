"""Responses on disk, keyed by (endpoint, model, prompt, image hash): a rerun costs nothing.

One JSON file per call under ``<dir>/<key[:2]>/<key>.json``, written atomically (temp file
and rename) so that two workers never read half a reply. Nothing of the credential is in
the key or the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path


def image_hash(png: bytes) -> str:
    return hashlib.sha256(png).hexdigest()


def cache_key(endpoint: str, model: str, prompt: str, image_sha256: str) -> str:
    """
    >>> cache_key("http://h/v1", "m", "p", "0" * 64) == cache_key("http://h/v1", "m", "p", "0" * 64)
    True
    >>> cache_key("http://h/v1", "m", "p", "0" * 64) == cache_key("http://h/v1", "m", "q", "0" * 64)
    False
    """
    blob = json.dumps([endpoint, model, prompt, image_sha256], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    def __init__(self, directory: Path | str | None):
        self.directory = Path(directory) if directory is not None else None

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        if self.directory is None:
            return None
        try:
            return json.loads(self._path(key).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def put(self, key: str, reply: dict) -> None:
        if self.directory is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(reply, f, ensure_ascii=False)
        os.replace(tmp, path)
