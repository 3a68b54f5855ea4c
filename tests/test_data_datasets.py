"""Dataset registry and the built-in and photo datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from evalsuite.data.datasets import DATASETS, DatasetUnavailable, load_dataset
from evalsuite.data.sample import DOC_TYPES

STORE = Path(os.environ.get("EVALSUITE_DATA") or Path(__file__).resolve().parents[2] / "shared" / "datasets")


def test_registry_knows_the_datasets():
    assert {"samples", "synthetic", "sroie", "photos"} <= set(DATASETS.names())


def test_default_samples_cover_the_doc_types_without_any_data_store():
    samples = load_dataset("samples", None)
    kinds = [s.doc_type for s in samples]
    assert kinds.count("photo") == 3 and kinds.count("infographic") == 1 and len(samples) == 8
    assert set(kinds) == set(DOC_TYPES) - {"receipt"}
    assert len({s.sample_id for s in samples}) == len(samples)
    for sample in samples:
        image = sample.load()
        assert image.mode == "RGB" and min(image.size) >= 256
        assert (sample.reference_text is None) == (sample.doc_type == "photo")


def test_sample_load_returns_a_fresh_image():
    sample = load_dataset("samples", None, limit=1)[0]
    first = sample.load()
    first.paste((255, 0, 0), (0, 0, 50, 50))
    assert sample.load().getpixel((0, 0)) != (255, 0, 0)


def test_synthetic_size_limit_and_reproducibility():
    samples = load_dataset("synthetic", None, n=7)
    assert len(samples) == 7 and len(load_dataset("synthetic", None, limit=3)) == 3
    again = load_dataset("synthetic", None, n=7)
    assert [s.reference_text for s in samples] == [s.reference_text for s in again]
    assert len({s.reference_text for s in samples}) == 7
    assert load_dataset("synthetic", None, n=3, seed=1)[0].reference_text != samples[0].reference_text


def test_photos_from_a_folder(tmp_path):
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (20, 10)).save(tmp_path / "photos" / "b.png")
    Image.new("L", (10, 20)).save(tmp_path / "photos" / "a.jpg")
    (tmp_path / "photos" / "README.txt").write_text("not a photo")
    samples = load_dataset("photos", tmp_path)
    assert [s.sample_id for s in samples] == ["photos/a", "photos/b"]
    assert samples[0].load().mode == "RGB" and samples[0].reference_text is None


def test_photos_unavailable_without_root():
    with pytest.raises(DatasetUnavailable, match="photos"):
        load_dataset("photos", None)


@pytest.mark.skipif(not (STORE / "photos").is_dir(), reason=f"no photo store at {STORE / 'photos'}")
def test_real_photo_store():
    samples = load_dataset("photos", STORE)
    assert len(samples) >= 20 and all(s.doc_type == "photo" for s in samples)
    assert samples[0].load().mode == "RGB"
