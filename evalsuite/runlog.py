"""The run log: where third-party log lines go instead of the progress line.

Libraries the harness runs print warnings of their own (RapidOCR logs "The text
detection result is empty" for every picture without words, from each OCR
reader process). Printed to the terminal they land between pytest's progress
dots. The controller names one file per run, ``<rootdir>/.evalsuite/logs/<run
id>.log``, in ``$EVALSUITE_RUN_LOG`` before any other process starts, so
that xdist workers and OCR readers (spawned children inherit the environment)
find it:

* a process that only does third-party work (an OCR reader) sends all its
  output there (:func:`redirect_output`, file descriptors 1 and 2, so C
  libraries' lines too);
* a process that runs cases moves the console handlers of third-party loggers
  there (:func:`capture_third_party_logs`); pytest keeps capturing what the
  tests themselves print.

The terminal summary counts the file's lines and names it (:func:`summary`).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Iterable

ENV = "EVALSUITE_RUN_LOG"
OWN_LOGGERS = ("evalsuite", "pytest", "_pytest", "xdist", "execnet")


def path_for(root: Path, run_id: str) -> Path:
    return root / ".evalsuite" / "logs" / f"{run_id}.log"


def start(path: Path) -> Path | None:
    """Controller: publish the run log to the processes started after this (the file itself is
    created by the first line written to it; one left by an earlier run of the same id is
    removed); None when its folder cannot be created (output then stays on the terminal)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
    except OSError:
        return None
    os.environ[ENV] = str(path)
    return path


def current() -> Path | None:
    value = os.environ.get(ENV)
    return Path(value) if value else None


def redirect_output() -> None:
    """Send everything this process writes to stdout and stderr to the run log (appending, so
    that several processes share it line by line). No-op without a run log."""
    path = current()
    if path is None:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


class _RunLogHandler(logging.FileHandler):
    """Marks the handlers this module installed."""


def capture_third_party_logs(names: Iterable[str] | None = None) -> int:
    """Move console handlers of third-party loggers (not evalsuite's nor pytest's; only ``names``
    when given) to the run log; returns how many were moved. Call it again after importing a
    library that adds its own (RapidOCR adds one as it is imported). No-op without a run log."""
    path = current()
    if path is None:
        return 0
    moved = 0
    handler: _RunLogHandler | None = None
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger) or name.split(".")[0] in OWN_LOGGERS:
            continue
        if names is not None and name not in names:
            continue
        console = [h for h in logger.handlers if type(h) is logging.StreamHandler
                   and getattr(h, "stream", None) in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)]
        for old in console:
            if handler is None:
                handler = _RunLogHandler(path, encoding="utf-8", delay=True)
                handler.setFormatter(logging.Formatter("[%(levelname)s] %(asctime)s [%(name)s] %(message)s"))
            logger.removeHandler(old)
            logger.addHandler(handler)
            moved += 1
    return moved


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    except OSError:
        return 0


def summary(path: Path | None, root: Path | None = None) -> str | None:
    """``12 third-party log lines, see .evalsuite/logs/RUN.log``; None when there were none.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     log = Path(tmp) / ".evalsuite" / "logs" / "r1.log"
    ...     log.parent.mkdir(parents=True)
    ...     _ = log.write_text("a\\n\\nb\\n")
    ...     summary(log, Path(tmp))
    'evalsuite: 2 third-party log lines, see .evalsuite/logs/r1.log'
    """
    if path is None:
        return None
    lines = count_lines(path)
    if not lines:
        return None
    shown = path
    if root is not None:
        try:
            shown = path.relative_to(root)
        except ValueError:
            pass
    return f"evalsuite: {lines} third-party log line{'s' if lines != 1 else ''}, see {shown}"
