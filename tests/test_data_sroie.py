"""The SROIE loader: the real store when present, and a tiny store with broken files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from evalsuite.data.datasets import DatasetUnavailable, load_dataset
from evalsuite.data.sample import SampleError
from evalsuite.ocr.fields import field_hits

# on dev/CI machines the store sits beside the checkout (../shared/datasets)
STORE = Path(os.environ.get("EVALSUITE_DATA") or Path(__file__).resolve().parents[2] / "shared" / "datasets")
needs_store = pytest.mark.skipif(not (STORE / "sroie").is_dir(), reason=f"no SROIE store at {STORE / 'sroie'}")


@needs_store
def test_real_store_loads_every_receipt_with_ground_truth():
    samples = load_dataset("sroie", STORE)
    assert len(samples) == len(list((STORE / "sroie" / "img").glob("*.jpg")))
    assert len({s.sample_id for s in samples}) == len(samples)
    for sample in samples:
        assert sample.doc_type == "receipt" and sample.dataset == "sroie"
        assert sample.reference_text and sample.fields and set(sample.fields) >= {"company", "total"}
    first = samples[0]
    image = first.load()
    assert image.mode == "RGB" and image.size == Image.open(first.source).size


@needs_store
def test_real_reference_text_holds_the_key_fields():
    # the transcripts are the page text, so (bar label noise) they must contain the labelled fields
    samples = load_dataset("sroie", STORE, limit=20)
    found = [hit for s in samples for hit in field_hits(s.reference_text, s.fields).values()]
    assert sum(found) >= 0.95 * len(found)


@needs_store
def test_limit_keeps_the_first_samples_in_order():
    assert [s.sample_id for s in load_dataset("sroie", STORE, limit=3)] == ["sroie/000", "sroie/001", "sroie/002"]


def make_store(root: Path) -> Path:
    folder = root / "sroie"
    for sub in ("img", "box", "key"):
        (folder / sub).mkdir(parents=True)
    for name in ("000", "001", "002", "003"):
        Image.new("RGB", (60, 80), "white").save(folder / "img" / f"{name}.jpg")
        (folder / "key" / f"{name}.json").write_text(json.dumps({"company": "ACME", "total": "9.00"}))
    (folder / "box" / "000.csv").write_text(
        "10,40,50,40,50,50,10,50,TOTAL: 9.00\r\n"      # second line
        "30,10,58,10,58,20,30,20,SDN BHD\r\n"          # right half of the first line
        "2,11,28,11,28,21,2,21,ACME, TRADING, CO\r\n",  # transcript with commas, first
        encoding="utf-8")
    (folder / "box" / "001.csv").write_bytes("1,1,9,1,9,9,1,9,CAF\u00c9 ROYAL\n".encode("latin-1"))
    (folder / "box" / "003.csv").write_text("1,1,9,1,9,9,1,9\n")  # no transcript column
    return root                                                   # and 002 has no box file at all


def test_reading_order_and_commas_in_transcripts(tmp_path):
    sample = load_dataset("sroie", make_store(tmp_path))[0]
    assert sample.reference_text == "ACME, TRADING, CO SDN BHD\nTOTAL: 9.00"
    assert sample.fields == {"company": "ACME", "total": "9.00"}


def test_broken_box_files_refuse_only_their_sample(tmp_path):
    samples = {s.sample_id: s for s in load_dataset("sroie", make_store(tmp_path))}
    assert len(samples) == 4
    assert samples["sroie/000"].load().size == (60, 80)
    for sample_id, problem in [("sroie/001", r"001\.csv is not UTF-8"), ("sroie/002", r"002\.csv is missing"),
                               ("sroie/003", r"003\.csv line 1: expected 8 coordinates")]:
        assert samples[sample_id].reference_text is None
        with pytest.raises(SampleError, match=f"sample {sample_id}: box file .*{problem}"):
            samples[sample_id].load()


def test_missing_root_or_folder_is_unavailable(tmp_path):
    with pytest.raises(DatasetUnavailable, match="no data root configured") as info:
        load_dataset("sroie", None)
    assert info.value.name == "sroie"
    with pytest.raises(DatasetUnavailable, match="sroie does not exist"):
        load_dataset("sroie", tmp_path)
