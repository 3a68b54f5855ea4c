"""Quiet output: third-party log lines go to the run log and are counted in the summary; long
stages say what they are doing."""

import logging
import sys

import pytest
from PIL import Image

from evalsuite import runlog

from .test_plugin import run_pytest


@pytest.mark.slow
def test_ocr_readers_log_to_the_run_log_not_the_progress_line(tmp_path):
    """A picture without words makes RapidOCR log "The text detection result is empty" in its reader."""
    store = tmp_path / "store"
    (store / "photos").mkdir(parents=True)
    Image.new("RGB", (96, 96), (200, 200, 200)).save(store / "photos" / "blank.png")
    matrix = ("timing_repeats = 1\ntiming_warmup = 0\n[models.dinov2_s14]\nimage_size = 56\n[methods.none]\n"
              "[datasets.photos]\nlimit = 1\n")
    proc = run_pytest(tmp_path, matrix, "--evalsuite-ocr-workers", "1", "--evalsuite-run-id", "quiet1",
                      thresholds="[defaults]\n",
                      env={"EVALSUITE_DATA": str(store), "EVALSUITE_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = tmp_path / ".evalsuite" / "logs" / "quiet1.log"
    assert "The text detection result is empty" in log.read_text()  # the reader did log it ...
    assert "RapidOCR" not in proc.stdout and "RapidOCR" not in proc.stderr  # ... but not to the terminal
    lines = runlog.count_lines(log)
    assert f"evalsuite: {lines} third-party log line" in proc.stdout
    assert "see .evalsuite/logs/quiet1.log" in proc.stdout
    assert "evalsuite: loading model dinov2_s14" in proc.stdout  # long stages show progress
    assert "evalsuite: OCR of the 1 originals of photos" in proc.stdout


def test_third_party_console_handlers_move_to_the_run_log(tmp_path, monkeypatch):
    log = tmp_path / "run.log"
    monkeypatch.setenv(runlog.ENV, str(log))
    noisy = logging.getLogger("some_library_under_test")
    console = logging.StreamHandler(sys.stderr)
    noisy.addHandler(console)
    ours = logging.getLogger("evalsuite.test_quiet_output")
    own_console = logging.StreamHandler(sys.stderr)
    ours.addHandler(own_console)
    try:
        assert runlog.capture_third_party_logs([noisy.name, ours.name]) == 1
        assert console not in noisy.handlers and own_console in ours.handlers  # evalsuite's own stay
        noisy.warning("nothing found")
        for handler in noisy.handlers:
            handler.flush()
        assert "nothing found" in log.read_text() and runlog.count_lines(log) == 1
        assert runlog.summary(log, tmp_path) == "evalsuite: 1 third-party log line, see run.log"
    finally:
        for handler in list(noisy.handlers):
            noisy.removeHandler(handler)
            handler.close()
        ours.removeHandler(own_console)
    assert runlog.summary(tmp_path / "never-written.log") is None
