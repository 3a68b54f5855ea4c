"""KPI declarations (evalsuite.metrics.kpis): the one place a KPI is defined, read by the engine's
aggregation, the session's not-applicable check, the terminal table and the promoted columns."""

import math

import pytest

from evalsuite.metrics import kpis
from evalsuite.report.terminal import kpi_table
from evalsuite.results import CaseResult, SampleRecord
from evalsuite.sinks.rows import PROMOTED


def _record(sample_id, **values):
    info = {"ocr_reference_words": values.pop("words", 0), "ocr_reference_chars": values.pop("chars", 0)}
    return SampleRecord(sample_id, "document", values, info)


def _data(records, encoder=(0.010, 0.012, 0.011), compression=(0.001, 0.002, 0.001), reference=(0.020, 0.022, 0.021)):
    return kpis.CaseData(records, series={"encoder": list(encoder), "compression": list(compression),
                                          "reference_encoder": list(reference)}, given={"ideal_speedup": 1.5})


def test_case_kpis_aggregate_per_sample_values_as_declared():
    records = [_record("a", tokens_before=256.0, tokens_after=128.0, feature_cosine=0.9, emd=0.1,
                       ocr_wer=0.5, ocr_wer_drift=0.25, words=10, chars=40),
               _record("b", tokens_before=256.0, tokens_after=64.0, feature_cosine=0.7, emd=0.3,
                       ocr_wer=0.0, ocr_wer_drift=0.0, words=30, chars=120)]
    out = kpis.case_kpis(_data(records))
    assert out["tokens_after"] == 96.0
    assert out["tokens_reduction_pct"] == pytest.approx(62.5)
    assert out["feature_cosine_mean"] == pytest.approx(0.8)
    assert out["feature_cosine_p5"] == pytest.approx(0.71)  # linear interpolation between 0.7 and 0.9
    assert out["ocr_wer"] == pytest.approx(0.5 * 10 / 40)  # corpus-level: weighted by reference words
    assert out["ocr_wer_drift"] == pytest.approx(0.25 * 10 / 40)
    assert out["compression_latency_ms_p50"] == pytest.approx(1.0)
    assert out["encoder_ms_p50"] == pytest.approx(11.0)
    assert out["throughput_speedup"] == pytest.approx(21.0 / 11.0)
    assert out["ideal_speedup"] == 1.5
    # measured-only KPIs no sample carries are left out; always-KPIs are NaN when nothing was measured
    assert "ocr_cer" not in out and "sroie_fields_found" not in out
    assert math.isnan(kpis.case_kpis(_data([]))["feature_cosine_mean"])
    assert list(out)[:3] == ["tokens_before", "tokens_after", "tokens_reduction_pct"]  # declaration order


def test_not_applicable_names_measured_only_kpis_a_case_lacks():
    missing = kpis.not_applicable({"ocr_wer", "feature_cosine_mean"})
    assert "ocr_wer" not in missing and "ocr_wer_drift" in missing and "sroie_fields_found" in missing
    assert "feature_cosine_mean" not in kpis.not_applicable(set())  # always applies: a missing value breaches


def test_a_new_kpi_is_one_declaration(monkeypatch):
    monkeypatch.setattr(kpis, "_ORDER", list(kpis._ORDER))
    monkeypatch.setattr(kpis.KPIS, "_entries", dict(kpis.KPIS._entries))
    kpis.register("answer_match", True, "", "VLM answer equals the reference answer",
                  aggregate=kpis.Mean("answer_match"), applies=kpis.MEASURED, column=("ans", "{:.2f}"))
    with_answers = kpis.case_kpis(_data([_record("a", answer_match=1.0), _record("b", answer_match=0.0)]))
    assert with_answers["answer_match"] == 0.5
    without = kpis.case_kpis(_data([_record("a", feature_cosine=1.0)]))
    assert "answer_match" not in without and "answer_match" in kpis.not_applicable(without)
    header = kpi_table([CaseResult("c", "m", "tome", {}, "d", kpis=with_answers)])[0]
    assert header.split()[-3:] == ["ans", "cos_ci95", "result"]
    with pytest.raises(ValueError, match="already registered"):
        kpis.register("answer_match", True)


def test_promoted_columns_and_sample_keys_come_from_the_declarations():
    assert PROMOTED["clip_score"] == "feature_cosine_mean"
    assert set(PROMOTED) == {"tokens_before", "tokens_after", "ocr_wer", "clip_score", "compression_latency_ms_p50",
                             "compression_latency_ms_p95", "encoder_ms_p50", "encoder_ms_p95"}
    assert kpis.KPIS.get("feature_cosine_p5").sample_key == "feature_cosine"
    assert kpis.KPIS.get("tokens_reduction_pct").sample_key is None  # a ratio of two means
