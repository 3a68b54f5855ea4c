"""thresholds.toml -> limits: the cascade, removal, explicit bounds, names checked, breaches explained."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from evalsuite.results import Breach
from evalsuite.thresholds import Limit, Thresholds, ThresholdsError

REPO = Path(__file__).resolve().parents[1]

CASCADE = """
[defaults]
tokens_reduction_pct = 15
feature_cosine_mean = 0.90
ocr_wer_drift = 0.02
emd = 0.5

[reference]
feature_cosine_mean = 0.9999
ocr_wer_drift = 0.0

[model.vit]
feature_cosine_mean = 0.80
compression_latency_ms_p95 = 40

[method.tome]
feature_cosine_mean = 0.85
emd = { max = 0.3 }

[dataset.photos]
ocr_wer_drift = false

[case."vit-tome_f0.5-photos"]
feature_cosine_mean = { min = 0.70 }
"""


def load(tmp_path: Path, text: str) -> Thresholds:
    path = tmp_path / "thresholds.toml"
    path.write_text(text, encoding="utf-8")
    return Thresholds.load(path)


def limits(thresholds: Thresholds, model: str, method: str, dataset: str, case_id: str | None = None):
    """kpi -> (value, op, source) of the limits in force for one case."""
    case_id = case_id or f"{model}-{method}_x-{dataset}"
    return {lim.kpi: (lim.value, lim.op, lim.source)
            for lim in thresholds.limits_for(model, method, dataset, case_id)}


def test_defaults_apply_when_no_scope_names_the_case(tmp_path):
    got = limits(load(tmp_path, CASCADE), "dino", "v2drop", "samples")
    assert got == {
        "tokens_reduction_pct": (15.0, ">=", "defaults"),
        "feature_cosine_mean": (0.90, ">=", "defaults"),
        "ocr_wer_drift": (0.02, "<=", "defaults"),
        "emd": (0.5, "<=", "defaults"),
    }


def test_each_scope_overrides_the_one_before_kpi_by_kpi(tmp_path):
    t = load(tmp_path, CASCADE)
    # model over defaults, and a KPI only the model table names is added
    got = limits(t, "vit", "v2drop", "samples")
    assert got["feature_cosine_mean"] == (0.80, ">=", "model.vit")
    assert got["compression_latency_ms_p95"] == (40.0, "<=", "model.vit")
    assert got["tokens_reduction_pct"] == (15.0, ">=", "defaults")
    # method over model
    got = limits(t, "vit", "tome", "samples")
    assert got["feature_cosine_mean"] == (0.85, ">=", "method.tome")
    assert got["emd"] == (0.3, "<=", "method.tome")
    assert got["compression_latency_ms_p95"] == (40.0, "<=", "model.vit")
    # case over everything, for that case id only
    got = limits(t, "vit", "tome", "photos", "vit-tome_f0.5-photos")
    assert got["feature_cosine_mean"] == (0.70, ">=", "case.vit-tome_f0.5-photos")
    got = limits(t, "vit", "tome", "photos", "vit-tome_f0.7-photos")
    assert got["feature_cosine_mean"] == (0.85, ">=", "method.tome")


def test_false_removes_an_inherited_limit_only_in_its_scope(tmp_path):
    t = load(tmp_path, CASCADE)
    assert "ocr_wer_drift" not in limits(t, "vit", "tome", "photos")
    assert "ocr_wer_drift" not in limits(t, "dino", "none", "photos")  # removed over [reference] too
    assert limits(t, "vit", "tome", "samples")["ocr_wer_drift"] == (0.02, "<=", "defaults")


def test_false_is_undone_by_a_later_scope(tmp_path):
    t = load(tmp_path, CASCADE + '\n[case."vit-tome_f0.5-photos".ocr_wer_drift]\nmax = 0.1\n')
    assert limits(t, "vit", "tome", "photos", "vit-tome_f0.5-photos")["ocr_wer_drift"] == (
        0.1, "<=", "case.vit-tome_f0.5-photos")


def test_the_none_method_starts_from_reference_not_defaults(tmp_path):
    got = limits(load(tmp_path, CASCADE), "dino", "none", "samples")
    assert got == {
        "feature_cosine_mean": (0.9999, ">=", "reference"),
        "ocr_wer_drift": (0.0, "<=", "reference"),
    }
    # the later scopes still apply to it
    assert limits(load(tmp_path, CASCADE), "vit", "none", "samples")["feature_cosine_mean"] == (
        0.80, ">=", "model.vit")


@pytest.mark.parametrize("value,expected", [
    ("{ min = 0.5 }", (0.5, ">=")),   # higher is better: a floor
    ("0.5", (0.5, ">=")),
])
def test_explicit_min_agrees_with_a_higher_is_better_kpi(tmp_path, value, expected):
    t = load(tmp_path, f"[defaults]\nfeature_cosine_mean = {value}\n")
    assert limits(t, "m", "tome", "d")["feature_cosine_mean"][:2] == expected


def test_explicit_max_agrees_with_a_lower_is_better_kpi(tmp_path):
    t = load(tmp_path, "[defaults]\nocr_cer_drift = { max = 3 }\n")
    assert limits(t, "m", "tome", "d")["ocr_cer_drift"] == (3.0, "<=", "defaults")


@pytest.mark.parametrize("kpi,bound,direction", [
    ("feature_cosine_mean", "max", "higher is better"),
    ("ocr_wer_drift", "min", "lower is better"),
])
def test_a_bound_against_the_kpi_direction_is_refused(tmp_path, kpi, bound, direction):
    with pytest.raises(ThresholdsError) as err:
        load(tmp_path, f"[method.tome]\n{kpi} = {{ {bound} = 0.5 }}\n")
    message = str(err.value)
    assert "thresholds.toml" in message and "[method.tome]" in message and kpi in message
    assert f"{bound} contradicts the KPI's direction ({direction})" in message


@pytest.mark.parametrize("value", ["{ min = 1, max = 2 }", "{ below = 1 }", "{}"])
def test_a_bound_table_must_hold_exactly_min_or_max(tmp_path, value):
    with pytest.raises(ThresholdsError, match=r"\[defaults\] emd: use a number, \{ min = N \} or \{ max = N \}"):
        load(tmp_path, f"[defaults]\nemd = {value}\n")


@pytest.mark.parametrize("value", ['"0.9"', "true", "[0.9]"])
def test_a_limit_must_be_a_number(tmp_path, value):
    with pytest.raises(ThresholdsError, match=r"\[defaults\] emd: limit must be a number"):
        load(tmp_path, f"[defaults]\nemd = {value}\n")


def test_an_unknown_kpi_is_refused_with_the_closest_name(tmp_path):
    with pytest.raises(ThresholdsError) as err:
        load(tmp_path, "[dataset.sroie]\nfeature_cosine_man = 0.9\n")
    message = str(err.value)
    assert "[dataset.sroie] feature_cosine_man" in message
    assert "unknown KPI 'feature_cosine_man'; did you mean 'feature_cosine_mean'?" in message


def test_an_unknown_table_is_refused_naming_the_valid_ones(tmp_path):
    with pytest.raises(ThresholdsError) as err:
        load(tmp_path, "[methods.tome]\nemd = 0.1\n")
    assert "unknown table [methods]; expected defaults, reference, model, method, dataset, case" in str(err.value)


def test_a_scope_must_hold_named_tables(tmp_path):
    with pytest.raises(ThresholdsError, match=r"\[model\] must hold tables like \[model.NAME\]"):
        load(tmp_path, "model = 3\n")
    with pytest.raises(ThresholdsError, match=r"\[model.vit\] must be a table of KPI limits"):
        load(tmp_path, "[model]\nvit = 3\n")


def test_an_informational_kpi_cannot_carry_a_limit(tmp_path):
    with pytest.raises(ThresholdsError, match="tokens_after: KPI is informational and cannot have a limit"):
        load(tmp_path, "[defaults]\ntokens_after = 100\n")


def test_a_missing_or_malformed_file_is_named(tmp_path):
    with pytest.raises(ThresholdsError, match="nothing.toml: thresholds file not found"):
        Thresholds.load(tmp_path / "nothing.toml")
    with pytest.raises(ThresholdsError, match="thresholds.toml: malformed TOML"):
        load(tmp_path, "[defaults\nemd = 1\n")


def test_check_reports_every_breach_with_value_limit_and_source(tmp_path):
    t = load(tmp_path, CASCADE)
    kpis = {"tokens_reduction_pct": 10.0, "feature_cosine_mean": 0.84, "ocr_wer_drift": 0.02, "emd": 0.31,
            "compression_latency_ms_p95": 12.0}
    breaches = t.check(kpis, "vit", "tome", "samples", "vit-tome_f0.5-samples")
    assert sorted((b.kpi, b.value, b.limit, b.op, b.source) for b in breaches) == [
        ("emd", 0.31, 0.3, "<=", "method.tome"),
        ("feature_cosine_mean", 0.84, 0.85, ">=", "method.tome"),
        ("tokens_reduction_pct", 10.0, 15.0, ">=", "defaults"),
    ]  # ocr_wer_drift sits exactly on its ceiling: a pass
    assert str(next(b for b in breaches if b.kpi == "emd")) == "emd = 0.31, limit <= 0.3 (from [method.tome])"


def test_a_kpi_at_its_limit_passes_and_a_hair_beyond_fails():
    floor = Limit("feature_cosine_mean", 0.9, ">=", "defaults")
    ceiling = Limit("ocr_wer_drift", 0.02, "<=", "defaults")
    assert floor.check(0.9) is None and ceiling.check(0.02) is None
    assert floor.check(0.8999) == Breach("feature_cosine_mean", 0.8999, 0.9, ">=", "defaults")
    assert ceiling.check(0.0201) == Breach("ocr_wer_drift", 0.0201, 0.02, "<=", "defaults")


@pytest.mark.parametrize("value", [None, math.nan])
def test_a_missing_value_is_a_breach_shown_as_missing(value):
    breach = Limit("emd", 0.5, "<=", "model.vit").check(value)
    assert breach == Breach("emd", None, 0.5, "<=", "model.vit")
    assert str(breach) == "emd = missing, limit <= 0.5 (from [model.vit])"


def test_check_treats_absent_kpis_as_missing_unless_not_applicable(tmp_path):
    t = load(tmp_path, CASCADE)
    kpis = {"tokens_reduction_pct": 50.0, "feature_cosine_mean": 0.95, "emd": 0.1}  # no OCR KPIs
    missing = t.check(kpis, "dino", "v2drop", "samples", "dino-v2drop_k0.5-samples")
    assert [(b.kpi, b.value) for b in missing] == [("ocr_wer_drift", None)]
    assert t.check(kpis, "dino", "v2drop", "samples", "dino-v2drop_k0.5-samples",
                   not_applicable={"ocr_wer_drift"}) == []


def test_validate_names_refuses_a_typo_in_a_scope_with_a_suggestion(tmp_path):
    t = load(tmp_path, CASCADE)
    t.validate_names({"vit", "dino"}, {"tome", "none", "v2drop"}, {"photos", "samples"})  # all known: no error
    with pytest.raises(ThresholdsError) as err:
        t.validate_names({"vit_b16", "dino"}, {"tome", "none"}, {"photos"})
    assert "table [model.vit]: unknown model 'vit'; did you mean 'vit_b16'?" in str(err.value)
    with pytest.raises(ThresholdsError, match=r"table \[method.tome\]: unknown method 'tome'"):
        t.validate_names({"vit"}, {"none", "v2drop"}, {"photos"})
    with pytest.raises(ThresholdsError, match=r"table \[dataset.photos\]: unknown dataset 'photos'; did you mean 'photo'"):
        t.validate_names({"vit"}, {"tome"}, {"photo"})


def test_validate_names_leaves_case_tables_alone(tmp_path):
    """Case tables name case ids, which depend on the method parameters: not checked here."""
    t = load(tmp_path, '[case."no-such-case"]\nemd = 0.1\n')
    t.validate_names(set(), set(), set())
    assert limits(t, "no", "such", "case", "no-such-case")["emd"] == (0.1, "<=", "case.no-such-case")


def test_the_project_thresholds_load_and_photos_drop_the_ocr_drift_limits():
    t = Thresholds.load(REPO / "thresholds.toml")
    on_photos = limits(t, "dinov2_s14", "tome", "photos")
    on_samples = limits(t, "dinov2_s14", "tome", "samples")
    assert "ocr_wer_drift" in on_samples and "ocr_cer_drift" in on_samples
    assert "ocr_wer_drift" not in on_photos and "ocr_cer_drift" not in on_photos
    assert on_photos["tokens_reduction_pct"] == on_samples["tokens_reduction_pct"] == (15.0, ">=", "defaults")
