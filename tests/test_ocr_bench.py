"""The OCR stage benchmark (``python -m evalsuite.ocr.bench``) on the CPU and on a GPU."""

from __future__ import annotations

import pytest

from evalsuite.ocr import bench


@pytest.mark.parametrize("device,runtime", [("cpu", "onnxruntime"),
                                            pytest.param("cuda:0", "torch", marks=pytest.mark.gpu)])
def test_bench_times_a_pool_reading_on_the_device_it_is_given(capsys, device, runtime):
    assert bench.main(["--pages", "2", "--receipts", "0", "--workers", "1", "--device", device]) == 0
    out = capsys.readouterr().out
    assert f"{runtime} " in out and f"on {device}," in out
    [row] = [line.split() for line in out.splitlines() if line.startswith("rendered pages")]
    workers, pages, seconds = int(row[2]), int(row[3]), float(row[4])
    assert (workers, pages) == (1, 2) and seconds > 0


def test_bad_pool_sizes_are_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--workers", "0,2"])
    assert "pool sizes are at least 1" in capsys.readouterr().err
