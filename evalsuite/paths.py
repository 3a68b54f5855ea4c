"""Where evalsuite keeps caches and finds external data stores."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$EVALSUITE_CACHE`` or ``~/.cache/evalsuite``, joined with ``parts`` and created."""
    root = Path(os.environ.get("EVALSUITE_CACHE") or Path.home() / ".cache" / "evalsuite")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_root(configured: str | os.PathLike | None = None) -> Path | None:
    """The external dataset store (SROIE, photos): ``$EVALSUITE_DATA`` wins over ``configured``.

    Returns None when neither is set; callers skip the cases that need it.
    """
    value = os.environ.get("EVALSUITE_DATA") or configured
    return Path(value).expanduser() if value else None
