"""No pass on missing data: samples that cannot be scored are counted and named, a case with too
few scored samples fails with that reason, and a mistyped store is a usage error."""

import json
from pathlib import Path

import pytest
from PIL import Image

from evalsuite.session import _explain_missing_samples
from evalsuite.thresholds import Thresholds

from .test_plugin import REPO, evaluate_once, run_pytest, small_case
from evalsuite.matrix import DatasetSpec

MATRIX = """
timing_repeats = 1
timing_warmup = 0
[models.dinov2_s14]
image_size = 56
[methods.none]
[datasets.sroie]
"""


def sroie_store(root: Path, good: int, corrupt: int) -> Path:
    """A store in SROIE's layout (img/NNN.jpg, box/NNN.csv, key/NNN.json): ``good`` readable
    receipts, then ``corrupt`` whose image files hold bytes that are not an image."""
    folder = root / "sroie"
    for sub in ("img", "box", "key"):
        (folder / sub).mkdir(parents=True)
    for index in range(good + corrupt):
        stem = f"{index:03d}"
        if index < good:
            Image.new("RGB", (80, 120), (250, 250, 250)).save(folder / "img" / f"{stem}.jpg")
        else:
            (folder / "img" / f"{stem}.jpg").write_bytes(b"this is not a JPEG " * 8)
        (folder / "box" / f"{stem}.csv").write_text("2,2,40,2,40,12,2,12,TOTAL 1.00\n", encoding="utf-8")
        (folder / "key" / f"{stem}.json").write_text(json.dumps({"total": "1.00"}), encoding="utf-8")
    return root


@pytest.mark.slow
def test_a_store_of_mostly_corrupt_images_fails_and_names_the_failed_samples(tmp_path):
    store = sroie_store(tmp_path / "store", good=2, corrupt=11)
    proc = run_pytest(tmp_path, MATRIX, "--evalsuite-no-ocr", env={"EVALSUITE_DATA": str(store)})
    out = proc.stdout
    assert proc.returncode == 1 and "1 failed" in out, out + proc.stderr
    assert "scored_share = 0.1538, limit >= 0.9 (from [reference]): 11 of 13 failed: sroie/002" in out
    row = next(line for line in out.splitlines() if line.startswith("dinov2_s14-none-sroie "))
    assert row.split()[1:4] == ["2", "0", "11"]  # n, skip, fail
    assert "samples that could not be scored" in out
    assert "dinov2_s14-none-sroie: 11 of 13 failed: sroie/002: " in out and "and 6 more" in out


def test_a_case_whose_every_sample_is_bad_says_why(tmp_path):
    store = sroie_store(tmp_path / "store", good=0, corrupt=3)
    case = small_case("none", {}, "dinov2_s14-none-sroie", dataset=DatasetSpec("sroie", "sroie", {}))
    result = evaluate_once(case, data_root=store, ocr_engine=None)
    thresholds = Thresholds.load(REPO / "thresholds.toml")
    result.breaches = thresholds.check(result.kpis, "dinov2_s14", "none", "sroie", case.id)
    _explain_missing_samples(result)
    text = {b.kpi: str(b) for b in result.breaches}
    assert text["feature_cosine_mean"].startswith(
        "feature_cosine_mean = missing, limit >= 0.9999 (from [reference]): no sample could be scored "
        "(3 of 3 failed: sroie/000: ")
    assert text["scored_share"].startswith("scored_share = 0, limit >= 0.9 (from [reference]): 3 of 3 failed")


@pytest.mark.parametrize("how", ["env", "option"])
def test_a_mistyped_store_is_a_usage_error(tmp_path, how):
    missing = tmp_path / "datasetz"
    args, env = (("--evalsuite-data", str(missing)), None) if how == "option" else ((), {"EVALSUITE_DATA": str(missing)})
    proc = run_pytest(tmp_path, MATRIX, "--evalsuite-no-ocr", "--collect-only", *args, env=env)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    name = "--evalsuite-data" if how == "option" else "EVALSUITE_DATA"
    assert f"{name}={missing}: the dataset store {missing} does not exist" in proc.stderr


@pytest.mark.slow
def test_the_ini_default_store_missing_skips_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.delenv("EVALSUITE_DATA", raising=False)
    proc = run_pytest(tmp_path, MATRIX, "--evalsuite-no-ocr", "-rs", "-o", "evalsuite_data=../no_shared/datasets")
    assert proc.returncode == 0 and "1 skipped" in proc.stdout, proc.stdout + proc.stderr
    assert "dataset 'sroie' unavailable" in proc.stdout and "no_shared" in proc.stdout
