"""The PoC report with the operating points of `evalsuite search`: named in the recommendation and tabled."""

from __future__ import annotations

import pytest

from evalsuite.report.poc import Limits, load_operating_points, recommend, write_report
from evalsuite.search import OperatingPoint, Probe, write_points

from .test_report_poc import PHOTOS_INFO, case, matrix, split


def point(method="tome", param="merge_factor", value=0.45, fails_at=0.675, reduction=40.0, drift=0.01,
          dataset="sroie", model="vit_b16") -> OperatingPoint:
    probes = [Probe(0.0, True, 0.0, 1.0, 0.0, [], 6)]
    if value is not None:
        probes.append(Probe(value, True, reduction, 0.95, drift, [], 6))
    if fails_at is not None:
        probes.append(Probe(fails_at, False, reduction + 20, 0.85, 0.05, ["feature_cosine_mean = 0.85, limit >= 0.9"], 6))
    return OperatingPoint(model, dataset, method, param, 0.0, 0.9, value, fails_at, probes,
                          (reduction - 2, reduction + 2), (0.93, 0.97))


def test_the_recommended_candidate_gets_its_operating_point(tmp_path):
    report = write_report(*split(matrix()), tmp_path / "POC.md", PHOTOS_INFO, [point()])
    rec = report.recommendation
    assert rec.candidate.name == "tome(r=8) on vit_b16" and rec.operating_point.value == 0.45
    assert ("Operating point: tome(merge_factor=0.45) on vit_b16 (the strongest setting passing every threshold on "
            "sroie, n=6: 40.0% [38.0, 42.0] tokens saved)") in rec.reason
    md = report.path.read_text()
    assert "### Operating points (`evalsuite search`)" in md
    assert ("| tome | vit_b16 | sroie | merge_factor in [0, 0.9] | 0.45 | 40.0 [38.0, 42.0] | 0.9500 [0.9300, 0.9700] "
            "| +0.0100 | 6 | 0.675: feature_cosine_mean = 0.85, limit >= 0.9 | eligible |") in md


def test_an_operating_point_is_recommended_when_no_matrix_point_is_eligible():
    rows = split([case("vit_b16", "none", "sroie", 0.0, 0.0), case("vit_b16", "avit", "sroie", 60.0, 0.2, {"s": 0.6})])[0]
    assert recommend(rows, PHOTOS_INFO).candidate is None
    points = [point("avit", "sparsity", 0.3, 0.45, reduction=30.0), point("v2drop", "keep", 0.7, 0.6, reduction=20.0),
              point("random", "keep", None, 1.0), point("downscale", "keep", 0.9, 0.8, reduction=10.0)]
    rec = recommend(rows, PHOTOS_INFO, points)
    assert rec.candidate is None and rec.operating_point is points[0]  # the largest saving that keeps the limits
    assert rec.reason.startswith("Recommended: avit(sparsity=0.3) on vit_b16 (the strongest setting passing")
    assert "no matrix point did" in rec.reason
    # a point without OCR drift (searched with --no-ocr) cannot show it keeps the drift limit
    rec = recommend(rows, PHOTOS_INFO, [point(drift=None)])
    assert rec.operating_point is None and rec.reason.startswith("No candidate")


def test_points_file_round_trip_and_errors(tmp_path):
    path = write_points(tmp_path / "p.json", [point(), point("random", "keep", None, 1.0)], "search-1")
    assert load_operating_points(path) == [point(), point("random", "keep", None, 1.0)]
    assert load_operating_points(tmp_path / "absent.json") == []
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json: not an operating points file"):
        load_operating_points(tmp_path / "bad.json")
    md = write_report(*split(matrix()), tmp_path / "POC.md", Limits(15, 0.02, {"photos"}),
                      load_operating_points(path)).path.read_text()
    assert "| random | vit_b16 | sroie | keep in [0, 0.9] | none | - | - | - | - | 1: feature_cosine_mean" in md
    assert "no passing setting in [0, 0.9] |" in md
