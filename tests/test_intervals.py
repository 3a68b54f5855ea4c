"""Paired, seeded bootstrap intervals and the gate on the interval's bound."""

import numpy as np
import pytest

from evalsuite.metrics import bootstrap
from evalsuite.metrics.kpis import CaseData, case_kpis
from evalsuite.results import CaseResult, SampleRecord
from evalsuite.sinks.rows import to_rows
from evalsuite.results import RunInfo
from evalsuite.thresholds import IntervalSettings, Thresholds, ThresholdsError


def ocr_case(seed=0, n=12):
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        original = float(rng.uniform(0.0, 0.6))  # how hard the page is: varies a lot between samples
        drift = 0.02 + float(rng.normal(0, 0.002))  # what compression adds: nearly constant
        records.append(SampleRecord(f"s{i}", "document", {
            "feature_cosine": float(rng.uniform(0.85, 0.99)), "tokens_before": 256.0, "tokens_after": 128.0,
            "ocr_wer_original": original, "ocr_wer": original + drift, "ocr_wer_drift": drift},
            {"ocr_reference_words": 50}))
    return CaseData(records)


def test_intervals_are_seeded_contain_the_value_and_pair_the_drift():
    data = ocr_case()
    first, again = bootstrap.intervals(data, seed=0), bootstrap.intervals(data, seed=0)
    assert first == again  # the same on every run and worker
    values = case_kpis(data)
    for name in ("feature_cosine_mean", "ocr_wer", "ocr_wer_drift", "feature_cosine_p5"):
        low, high = first[name]
        assert low <= values[name] <= high, name
    # paired: the drift's interval is as narrow as its per-sample spread, far narrower than the
    # rates it is the difference of, which vary with each page's difficulty
    width = lambda name: first[name][1] - first[name][0]  # noqa: E731
    assert width("ocr_wer_drift") < 0.01 < width("ocr_wer") / 5
    assert first["tokens_reduction_pct"] == (50.0, 50.0)
    assert "encoder_ms_p50" not in first  # timing is not per sample
    assert bootstrap.intervals(CaseData(data.records[:1])) == {}  # one sample: nothing to resample


def test_gate_on_the_bound_cascades_and_says_why(tmp_path):
    path = tmp_path / "thresholds.toml"
    path.write_text("[defaults]\nfeature_cosine_mean = 0.90\nocr_wer_drift = 0.02\n"
                    "[method.tome]\ngate = \"bound\"\n[intervals]\nmin_samples = 20\nresamples = 200\n")
    limits = Thresholds.load(path)
    assert limits.intervals == IntervalSettings(resamples=200, min_samples=20)
    kpis, intervals = {"feature_cosine_mean": 0.92, "ocr_wer_drift": 0.01}, {"feature_cosine_mean": [0.88, 0.95],
                                                                            "ocr_wer_drift": [0.0, 0.015]}
    assert limits.check(kpis, "m", "v2drop", "d", "c", intervals=intervals) == []  # gate = mean
    breaches = limits.check(kpis, "m", "tome", "d", "c", intervals=intervals)
    assert [b.kpi for b in breaches] == ["feature_cosine_mean"]
    assert str(breaches[0]) == ("feature_cosine_mean = 0.88, limit >= 0.9 (from [defaults]): gate = bound: the 95% "
                                "interval [0.88, 0.95] must clear it (mean 0.92)")
    path.write_text("[defaults]\ngate = \"upper\"\n")
    with pytest.raises(ThresholdsError, match=r"\[defaults\] gate: expected one of 'mean', 'bound'"):
        Thresholds.load(path)


def test_intervals_reach_the_rows():
    result = CaseResult("c", "m", "tome", {}, "d", kpis={"feature_cosine_mean": 0.9, "samples_scored": 12.0},
                        intervals={"feature_cosine_mean": [0.88, 0.93]})
    case_row = to_rows(RunInfo("r", "2026-01-01T00:00:00", "x", "h", "none"), [result])[0]
    assert case_row["kpis"]["ci_low.feature_cosine_mean"] == 0.88
    assert case_row["kpis"]["ci_high.feature_cosine_mean"] == 0.93
    assert CaseResult.from_json(result.to_json()).intervals == result.intervals
