"""Noisy timing is flagged (a label and a line), not turned into a verdict; its spread is stored."""

import pytest

from evalsuite.metrics import kpis
from evalsuite.report.poc import _status
from evalsuite.report.terminal import noisy_timing
from evalsuite.results import CaseResult, SampleRecord
from evalsuite.thresholds import Thresholds, ThresholdsError, TimingNoise

STEADY = [0.010, 0.0101, 0.0099, 0.0100, 0.0102]  # seconds per timed forward


def timed(encoder, compression=(0.001,) * 5, reference=STEADY, ideal=1.2):
    """The case KPIs of a fake timing sequence, computed as the engine computes them."""
    data = kpis.CaseData([SampleRecord("s", "d", {"feature_cosine": 1.0})],
                         series={"encoder": list(encoder), "compression": list(compression),
                                 "reference_encoder": list(reference)}, given={"ideal_speedup": ideal})
    return kpis.case_kpis(data)


def test_a_steady_sequence_is_not_noisy_and_stores_its_spread():
    out = timed([0.0085, 0.0084, 0.0086, 0.0085, 0.0085])
    assert TimingNoise().reasons(out) == []
    assert out["encoder_ms_iqr"] == pytest.approx(0.0, abs=0.01) and out["compression_latency_ms_iqr"] == 0.0


def test_a_p95_far_above_the_p50_is_noisy():
    out = timed([0.010, 0.010, 0.010, 0.010, 0.010, 0.010, 0.010, 0.010, 0.010, 0.120],
                compression=[0.001] * 9 + [0.011])
    reasons = TimingNoise(p95_over_p50=2.0).reasons(out)
    assert reasons[0].startswith("compression_latency_ms_p95 ") and reasons[1].startswith("encoder_ms_p95 ")
    assert out["encoder_ms_iqr"] == pytest.approx(0.0)  # the IQR alone would not see one outlier
    assert TimingNoise(p95_over_p50=10.0).reasons(out) == []  # within a looser factor


def test_a_speedup_above_its_ideal_is_noisy():
    """A loaded host slowed the reference's forwards: the method looks 6x faster than its FLOPs allow."""
    out = timed([0.010] * 5, reference=[0.060] * 5, ideal=1.2)
    assert out["throughput_speedup"] == pytest.approx(6.0)
    assert TimingNoise(speedup_margin=0.25).reasons(out) == ["throughput_speedup 6 above its ideal 1.2 (by > 25%)"]
    assert TimingNoise().reasons(timed([0.010] * 5, reference=[0.0125] * 5)) == []  # 1.25x: within the margin


def test_the_flag_shows_in_the_table_lines_and_the_report():
    result = CaseResult("c", "m", "tome", {}, "d", labels=["noisy"], env={"noisy": "encoder_ms_p95 3.5x its p50 (> 2)"})
    assert noisy_timing([result]) == ["c: encoder_ms_p95 3.5x its p50 (> 2)"]
    assert _status({"passed": 1, "labels": ["noisy"]}) == "pass (noisy timing)"


def test_timing_noise_settings_are_read_and_checked(tmp_path):
    path = tmp_path / "thresholds.toml"
    path.write_text("[timing_noise]\np95_over_p50 = 3\nspeedup_margin = 0.5\nretime = true\n")
    assert Thresholds.load(path).timing_noise == TimingNoise(3.0, 0.5, True)
    path.write_text("[timing_noise]\np95_over_p5 = 3\n")
    with pytest.raises(ThresholdsError, match=r"\[timing_noise\] p95_over_p5: .*did you mean 'p95_over_p50'"):
        Thresholds.load(path)
    path.write_text("[timing_noise]\np95_over_p50 = 0.5\n")
    with pytest.raises(ThresholdsError, match="out of range"):
        Thresholds.load(path)


def test_a_noisy_case_is_timed_once_more_when_asked():
    from evalsuite.engine import Engine, EngineSettings

    from .test_plugin import small_case

    engine = Engine(EngineSettings(timing_repeats=2, timing_warmup=0, ocr_engine=None))
    asked = []
    engine.retime_noisy = lambda measured: asked.append(dict(measured)) or ["encoder_ms_p95 9x its p50 (> 2)"]
    calls = []
    timed_calls = engine._time
    engine._time = lambda forward, batches: calls.append(forward) or timed_calls(forward, batches)
    try:
        result = engine.evaluate(small_case("tome", {"merge_factor": 0.5}, "tome_f0.5"))
    finally:
        engine.close()
    assert len(asked) == 1 and "encoder_ms_p95" in asked[0]  # asked once, with the first timing's KPIs
    assert len(calls) == 4  # reference + case, then both again
    assert result.env["retimed"] == "encoder_ms_p95 9x its p50 (> 2)"
    assert result.kpis["encoder_ms_p50"] > 0
