"""Stage A baselines: documented row fields, the OCR cache shared across runs, the JSONL files, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evalsuite import baselines as stage_a
from evalsuite.baselines import Baselines, compute_baselines, write_baselines
from evalsuite.data.sample import Sample, SampleError
from evalsuite.ocr.cache import cache_key
from evalsuite.ocr.engines import get_engine

TOKEN_FIELDS = ["sample_id", "doc_type", "sha256", "width", "height", "tokens", "prefix_tokens", "pooled_norm",
                "pooled_head", "mean_token_norm", "target_tokens_total", "target_tokens_source"]
OCR_FIELDS = ["sample_id", "doc_type", "ocr_engine", "text", "words", "chars", "reference", "wer", "cer"]


class CountingEngine:
    """The real engine, counting the pages it actually reads."""

    def __init__(self, engine):
        self.engine, self.name, self.reads = engine, engine.name, 0

    def version_info(self):
        return self.engine.version_info()

    def read(self, image):
        self.reads += 1
        return self.engine.read(image)


@pytest.fixture(scope="module")
def samples_baselines():
    # Shares the default OCR cache with tests/test_golden.py: the same 8 images, read once per machine.
    return compute_baselines("dinov2_s14", "samples", None)


@pytest.mark.slow
def test_rows_have_the_documented_fields(samples_baselines):
    tokens, ocr = samples_baselines.tokens, samples_baselines.ocr
    assert [r["sample_id"] for r in tokens] == [r["sample_id"] for r in ocr] == [
        "samples/invoice", "samples/table", "samples/code", "samples/ui", "samples/infographic",
        "samples/astronaut", "samples/coffee", "samples/chelsea"]
    for row in tokens:
        assert list(row) == TOKEN_FIELDS
        assert len(row["sha256"]) == 64 and row["tokens"] == 256 and row["prefix_tokens"] == 1  # 224 / 14 = 16 x 16
        assert len(row["pooled_head"]) == 8 and row["pooled_norm"] > 0 and row["mean_token_norm"] > 0
    for row in ocr:
        assert list(row) == OCR_FIELDS
        assert row["ocr_engine"] == get_engine("rapidocr").version_info()
        assert row["words"] == len(row["text"].split()) and row["chars"] == len(row["text"])
    pages = {r["sample_id"]: r for r in ocr if r["doc_type"] != "photo"}
    assert all(r["reference"] == "ground_truth" and 0 <= r["wer"] < 0.2 for r in pages.values())
    assert "Atlas Freight" in pages["samples/invoice"]["text"]
    photos = [r for r in ocr if r["doc_type"] == "photo"]
    assert photos and all(r["reference"] is None and r["wer"] is None and r["cer"] is None for r in photos)


@pytest.mark.slow
def test_a_second_compute_reads_no_page_again(monkeypatch, tmp_path):
    from evalsuite.data.datasets.samples import load_samples

    quick = [s for s in load_samples() if s.sample_id in ("samples/infographic", "samples/chelsea")]  # ~1 s of OCR
    monkeypatch.setattr(stage_a, "load_dataset", lambda name, root, limit: quick)
    engine = CountingEngine(get_engine("rapidocr"))
    first = compute_baselines("dinov2_s14", "samples", None, ocr_engine=engine, ocr_cache=tmp_path)
    assert engine.reads == 2 and len(list(tmp_path.rglob("*.json"))) == 2
    again = compute_baselines("dinov2_s14", "samples", None, ocr_engine=engine, ocr_cache=tmp_path)
    assert engine.reads == 2 and again == first


def test_baselines_and_the_harness_ocr_stage_share_cache_entries():
    """OcrStage reads with threads=1 in each pool process; the thread count is not part of the key."""
    page = np.zeros((4, 4, 3), np.uint8)
    assert cache_key(page, get_engine("rapidocr")) == cache_key(page, get_engine("rapidocr", threads=1))


class FakeEngine:
    name = "fake"

    def version_info(self):
        return {"engine": "fake", "version": "0"}

    def read(self, image):
        from evalsuite.ocr.engines import OcrResult

        return OcrResult("hello world", [])


def _unreadable():
    raise SampleError("sample broken/1: file is truncated")


@pytest.mark.slow
def test_a_sample_that_fails_to_load_keeps_its_row_with_the_reason(monkeypatch, tmp_path):
    from evalsuite.data.datasets.samples import load_samples

    good = load_samples(limit=1)[0]
    broken = Sample("broken/1", "broken", "receipt", load=_unreadable)
    monkeypatch.setattr(stage_a, "load_dataset", lambda name, root, limit: [broken, good])
    result = compute_baselines("dinov2_s14", "broken", None, ocr_engine=FakeEngine(), ocr_cache=tmp_path)
    expected_error = {"sample_id": "broken/1", "doc_type": "receipt", "error": "sample broken/1: file is truncated"}
    assert result.tokens[0] == result.ocr[0] == expected_error
    assert result.tokens[1]["sample_id"] == good.sample_id and "error" not in result.tokens[1]
    assert result.ocr[1]["text"] == "hello world" and result.ocr[1]["wer"] > 0


def test_write_baselines_writes_jsonl_at_the_documented_paths(tmp_path):
    rows = Baselines(tokens=[{"sample_id": "a", "pooled_head": [0.5, -1.25]}, {"sample_id": "b", "error": "x"}],
                     ocr=[{"sample_id": "a", "text": "Total\n“naïve” 9.00", "wer": None}])
    paths = write_baselines(tmp_path / "out", "dinov2_s14", "samples", rows)
    folder = tmp_path / "out" / "dinov2_s14" / "samples"
    assert paths == [folder / "tokens_baseline.jsonl", folder / "ocr_baseline.jsonl"]
    for path, expected in zip(paths, (rows.tokens, rows.ocr)):
        lines = path.read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == expected  # one JSON object per line, nothing else


def test_cli_writes_the_files_and_an_explicit_data_root_wins(monkeypatch, tmp_path, capsys):
    from evalsuite import cli

    seen = {}

    def fake_compute(model, dataset, root, image_size=224, limit=None, ocr_engine="rapidocr"):
        seen.update(model=model, dataset=dataset, root=root, limit=limit)
        return Baselines([{"sample_id": "s"}], [{"sample_id": "s"}])

    monkeypatch.setattr(stage_a, "compute_baselines", fake_compute)
    monkeypatch.setenv("EVALSUITE_DATA", str(tmp_path / "from-env"))
    out = tmp_path / "baselines"
    assert cli.main(["baselines", "--model", "dinov2_s14", "--dataset", "sroie", "--data", str(tmp_path / "flag"),
                     "--limit", "3", "--out", str(out)]) == 0
    assert seen == {"model": "dinov2_s14", "dataset": "sroie", "root": tmp_path / "flag", "limit": 3}
    assert (out / "dinov2_s14" / "sroie" / "ocr_baseline.jsonl").read_text() == '{"sample_id": "s"}\n'
    assert str(out / "dinov2_s14" / "sroie" / "tokens_baseline.jsonl") in capsys.readouterr().out
    cli.main(["baselines", "--model", "m", "--dataset", "d", "--out", str(out)])
    assert seen["root"] == tmp_path / "from-env"
