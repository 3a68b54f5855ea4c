"""OCR engines: rapidocr reads rendered pages offline and in reading order."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from evalsuite.data.pages import render_page
from evalsuite.ocr.engines import (OCR_ENGINES, OcrEngine, OcrEngineUnavailable, OcrResult, RapidOcrEngine,
                                   get_engine)
from evalsuite.ocr.fields import field_hits
from evalsuite.ocr.wer import char_error_rate

STORE = Path(os.environ.get("EVALSUITE_DATA") or Path(__file__).resolve().parents[2] / "shared" / "datasets")

# Measured with rapidocr 3.10 / PP-OCRv6 small on 12 invoices (seeds 0-5, sans and
# serif) and the 20 synthetic pages: worst invoice CER 0.004, mean 0.0005. 0.02 is
# 5x that worst case, yet a single lost item row of the table (~6 % of the
# characters) or lines read out of order fails it.
INVOICE_CER_BOUND = 0.02


@pytest.fixture(scope="module")
def engine():
    """One rapidocr engine, created and first used while any model download would fail the test."""
    from rapidocr.utils.download_file import DownloadFile

    def no_download(*args, **kwargs):
        raise AssertionError("rapidocr tried to download a model")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DownloadFile, "run", classmethod(no_download))
        engine = RapidOcrEngine(threads=2)
        engine.read(np.full((64, 64, 3), 255, np.uint8))  # loads both models
        yield engine


def test_engine_satisfies_the_protocol_and_is_registered(engine):
    assert isinstance(engine, OcrEngine)
    assert OCR_ENGINES.get("rapidocr") is RapidOcrEngine
    assert get_engine("rapidocr") is get_engine("rapidocr")
    assert get_engine("rapidocr", threads=1) is get_engine("rapidocr", threads=1) is not get_engine("rapidocr")
    assert get_engine("rapidocr", threads=1).threads == 1


def test_version_info_pins_the_bundled_pp_ocrv6_models(engine):
    info = engine.version_info()
    assert info["engine"] == "rapidocr" and info["version"]
    assert info["det_model"].startswith("PP-OCRv6_det") and info["rec_model"].startswith("PP-OCRv6_rec")
    model = Path(importlib.util.find_spec("rapidocr").origin).parent / "models" / info["det_model"]
    assert hashlib.sha256(model.read_bytes()).hexdigest().startswith(info["det_sha256"])


def test_rendered_invoice_is_read_with_low_cer(engine):
    page = render_page("invoice", 11)
    result = engine.read(np.asarray(page.image))
    assert char_error_rate(result.text, page.text) < INVOICE_CER_BOUND
    assert result.text.split("\n")[0].startswith(page.text.split("\n")[0].split()[0])  # reading order: header first
    tops = [min(y for _, y in line.box) for line in result.lines]
    assert tops[0] == pytest.approx(min(tops), abs=15)
    assert all(len(line.box) == 4 and 0 < line.score <= 1 for line in result.lines)


def test_blank_image_reads_nothing(engine):
    assert engine.read(np.full((200, 300, 3), 255, np.uint8)) == OcrResult("", [])


def test_input_must_be_uint8_rgb(engine):
    with pytest.raises(ValueError, match="uint8 RGB"):
        engine.read(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="uint8 RGB"):
        engine.read(np.zeros((10, 10, 3), np.float32))


@pytest.mark.skipif(not (STORE / "sroie").is_dir(), reason=f"no SROIE store at {STORE / 'sroie'}")
def test_real_receipt_keeps_its_key_fields(engine):
    from evalsuite.data.datasets import load_dataset

    receipt = load_dataset("sroie", STORE, limit=31)[30]  # baseline CER 0.03, all four fields found
    result = engine.read(np.asarray(receipt.load()))
    assert char_error_rate(result.text, receipt.reference_text) < 0.1
    assert field_hits(result.text, receipt.fields) == {name: True for name in receipt.fields if receipt.fields[name]}


def _receipts(count: int) -> list[np.ndarray]:
    from evalsuite.data.datasets import load_dataset

    if not (STORE / "sroie").is_dir():
        return []
    return [np.asarray(s.load()) for s in load_dataset("sroie", STORE, limit=count)]


@pytest.mark.parametrize("device", [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.gpu)])
def test_torch_runtime_reads_what_onnxruntime_reads(engine, device):
    """The det/rec graphs run by evalsuite's interpreter (on a GPU in the gate) read the same
    lines as onnxruntime: same texts, scores and boxes to float tolerance."""
    on_torch = RapidOcrEngine(threads=2, device=device, runtime="torch")
    images = [np.asarray(render_page(kind, 3).image) for kind in ("invoice", "table")] + _receipts(2)
    for image in images:
        expected, got = engine.read(image), on_torch.read(image)
        assert got.text == expected.text and got.text
        assert [line.score for line in got.lines] == pytest.approx([line.score for line in expected.lines], abs=1e-3)
        assert np.allclose(np.array([line.box for line in got.lines]),
                           np.array([line.box for line in expected.lines]), atol=1.0)


def test_each_runtime_has_its_own_version_info(engine):
    """Cached reads are keyed by version_info: a torch read never answers for an onnxruntime one."""
    on_torch = RapidOcrEngine(device="cuda:1").version_info()  # builds nothing: no GPU needed
    assert on_torch["runtime"].startswith("torch ") and on_torch["runtime"].endswith(" cuda float32 fused")
    assert "onnxruntime" not in on_torch and "runtime" not in engine.version_info()
    assert RapidOcrEngine(runtime="torch").version_info()["runtime"].endswith(" cpu float32 fused")


@pytest.mark.parametrize("options,message", [
    ({"device": "mps"}, "runs on 'cpu' or 'cuda"),
    ({"device": "cuda", "runtime": "onnxruntime"}, "onnxruntime runs on 'cpu' here"),
    ({"runtime": "tensorrt"}, "runtime 'tensorrt'"),
])
def test_a_device_or_runtime_rapidocr_cannot_use_is_refused(options, message):
    with pytest.raises(ValueError, match=message):
        RapidOcrEngine(**options)


@pytest.mark.skipif(importlib.util.find_spec("paddleocr") is not None, reason="paddleocr is installed here")
def test_paddleocr_missing_is_a_clear_error():
    with pytest.raises(OcrEngineUnavailable, match="paddleocr is not installed.*models"):
        OCR_ENGINES.get("paddleocr")()


@pytest.mark.parametrize("shape", [(40, 5000, 3), (5000, 40, 3)])
def test_an_image_too_thin_to_read_fails_with_its_size_and_the_reason(engine, shape):
    """rapidocr's own error here has an empty message; the cause it carries says why."""
    from evalsuite.ocr.engines import OcrReadError

    with pytest.raises(OcrReadError, match=rf"a {shape[1]}x{shape[0]} image: ResizeImgError: resize_w or resize_h"):
        engine.read(np.full(shape, 255, np.uint8))
