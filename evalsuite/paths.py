"""Where evalsuite keeps caches and finds external data stores."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_dir(*parts: str, create: bool = True) -> Path:
    """``$EVALSUITE_CACHE`` or ``~/.cache/evalsuite``, joined with ``parts`` and created (unless not ``create``)."""
    root = Path(os.environ.get("EVALSUITE_CACHE") or Path.home() / ".cache" / "evalsuite")
    path = root.joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def data_root(configured: str | os.PathLike | None = None) -> Path | None:
    """The external dataset store (SROIE, photos): ``$EVALSUITE_DATA`` wins over ``configured``.

    Returns None when neither is set; callers skip the cases that need it.
    """
    value = os.environ.get("EVALSUITE_DATA") or configured
    return Path(value).expanduser() if value else None


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (model files are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
