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


def varied(reduction_per_sample, drift_per_sample, words=None, **kpis):
    """A sroie case whose samples differ (so their intervals have width); ``words`` weigh the drift."""
    from evalsuite.results import CaseResult, SampleRecord

    samples = [SampleRecord(f"s{i}", "receipt", {"tokens_before": 100.0, "tokens_after": 100.0 - r, "ocr_wer_drift": d},
                            {"ocr_reference_words": (words or [1] * len(drift_per_sample))[i]})
               for i, (r, d) in enumerate(zip(reduction_per_sample, drift_per_sample))]
    mean_r = sum(reduction_per_sample) / len(reduction_per_sample)
    return CaseResult("vit_b16-tome_r8-sroie", "vit_b16", "tome", {"r": 8}, "sroie",
                      kpis={"tokens_before": 100.0, "tokens_after": 100.0 - mean_r, "tokens_reduction_pct": mean_r,
                            "ocr_wer_drift": 0.01, **kpis}, samples=samples)


def test_error_bars_come_from_the_samples_seeded_or_from_the_case_row():
    from evalsuite.report.poc import case_points

    cases, samples = split([case("vit_b16", "none", "sroie", 0.0, 0.0),
                            varied([30, 40, 50, 35, 45, 40], [0.0, 0.02, 0.01, 0.0, 0.03, 0.0])])
    [base, tome] = case_points(cases, samples, PHOTOS_INFO)
    lo, hi = tome.x_interval
    assert 30 <= lo < 40 < hi <= 50  # around the mean saving, within the samples' range
    assert tome.y_interval[0] < 0.01 < tome.y_interval[1]
    assert base.x_interval == (0.0, 0.0)  # both samples save nothing
    assert case_points(cases, samples, PHOTOS_INFO)[1].x_interval == (lo, hi)  # seeded: the same again
    assert case_points(cases, [], PHOTOS_INFO)[1].x_interval is None  # no sample rows, no bars

    # the drift is a corpus-level rate: a sample with many reference words weighs more
    heavy = split([varied([40] * 4, [0.0, 0.0, 0.0, 0.2], words=[1, 1, 1, 97])])
    assert case_points(*heavy, PHOTOS_INFO)[0].y_interval[1] > 0.19  # unweighted, the upper bound would be 0.15

    carried = split([varied([30, 50], [0.0, 0.02], ocr_wer_drift_lo=-0.5, ocr_wer_drift_hi=0.5)])
    assert case_points(*carried, PHOTOS_INFO)[0].y_interval == (-0.5, 0.5)


def test_operating_points_on_the_plot_and_n_in_every_table(tmp_path):
    from evalsuite.report.poc import operating_points

    points = [point(), point("avit", "sparsity", 0.3, 0.45, reduction=30.0, drift=None), point("random", "keep", None, 1.0)]
    drawn = operating_points(points, PHOTOS_INFO)
    assert [(p.label, p.x, p.y, p.x_interval) for p in drawn] == [
        ("tome(merge_factor=0.45) / vit_b16 / sroie", 40.0, 0.01, (38.0, 42.0)),
        ("avit(sparsity=0.3) / vit_b16 / sroie", 30.0, None, (28.0, 32.0))]  # no OCR: a vertical line
    report = write_report(*split(matrix()), tmp_path / "POC.md", PHOTOS_INFO, points)
    plain = write_report(*split(matrix()), tmp_path / "plain" / "POC.md", PHOTOS_INFO)
    assert report.plot.read_bytes() != plain.plot.read_bytes()
    md = report.path.read_text()
    assert "stars: the 2 operating point(s) of `evalsuite search`" in md and "Error bars: 95% intervals" in md
    tables = [block for block in md.split("\n\n") if block.startswith("| ")]
    assert len(tables) >= 4
    for table in tables[:-1]:  # every results table (the last one lists versions)
        header = table.splitlines()[0]
        assert "| n |" in header or "| samples |" in header, header
    assert "| tome(r=8) | vit_b16 | 2 | 4 | 38.0 | +0.0100 | eligible |" in md  # 2 cases, 4 samples
    assert "| 1.50 | 2 | pass |" in md  # the comparison table's n
