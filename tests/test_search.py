"""`evalsuite search`: the strongest setting of a method that passes every threshold, by bisection."""

from __future__ import annotations

import json

import pytest

from evalsuite import search
from evalsuite.cli import main
from evalsuite.engine import Engine, EngineSettings
from evalsuite.matrix import DatasetSpec, ModelSpec
from evalsuite.sinks.clickhouse import TABLE, ClickHouseSink
from evalsuite.thresholds import Thresholds

MODEL = ModelSpec("dinov2_s14", "dinov2_s14", 112, "cpu", "float32")
DATASET = DatasetSpec("synthetic", "synthetic", {"limit": 2})
FAST = {"timing_repeats": 1, "timing_warmup": 0}


@pytest.fixture(scope="module")
def engine():
    engine = Engine(EngineSettings(ocr_engine=None, **FAST))
    yield engine
    engine.close()


def limits(tmp_path, text: str) -> Thresholds:
    path = tmp_path / "thresholds.toml"
    path.write_text(text)
    return Thresholds.load(path)


def evaluate(engine, method: str, value: float):
    return engine.evaluate(search.case_spec(MODEL, DATASET, method, {search.KNOBS[method].param: value}, FAST))


@pytest.mark.slow
def test_bisection_finds_a_passing_setting_next_to_a_failing_one(engine, tmp_path):
    # the floor is what sparsity 0.5 keeps: the bisection of [0, 0.9] in two steps brackets it
    floor = evaluate(engine, "avit", 0.5).kpis["feature_cosine_mean"]
    thresholds = limits(tmp_path, f"[defaults]\nfeature_cosine_mean = {floor}\n")
    seen = []
    point = search.search(engine.evaluate, thresholds, MODEL, DATASET, "avit", 0.0, 0.9, steps=2, settings=FAST,
                          on_result=seen.append)

    assert [p.value for p in point.probes] == [0.0, 0.9, 0.45, 0.675]
    assert (point.value, point.fails_at) == (0.45, 0.675)
    assert len(seen) == 4 and all(r.method == "avit" for r in seen)
    # computed again: the safe setting passes every threshold, the next stronger one probed does not
    assert not search.check(thresholds, evaluate(engine, "avit", point.value)).breaches
    assert search.check(thresholds, evaluate(engine, "avit", point.fails_at)).breaches
    safe = point.probe(point.value)
    assert safe.passed and safe.reduction_pct > 30 and safe.n == 2
    lo, hi = point.cosine_interval
    assert lo <= safe.feature_cosine <= hi
    assert "avit sparsity=0.45: saves" in point.describe() and "sparsity=0.675 fails" in point.describe()
    # one model and one reference pass served every probe
    assert list(engine._models) == ["dinov2_s14"] and list(engine._references) == [("dinov2_s14", "synthetic")]

    path = search.write_points(tmp_path / "points.json", [point], "run-x")
    [back] = search.read_points(path)
    assert back == point


def test_keep_knobs_search_downwards(engine, tmp_path):
    """For a keep fraction the weaker end is the higher value: it is probed first."""
    thresholds = limits(tmp_path, "[defaults]\ntokens_reduction_pct = 40\n")  # fails at keep 1, passes at 0.2
    point = search.search(engine.evaluate, thresholds, MODEL, DATASET, "v2drop", 0.2, 1.0, steps=1, settings=FAST)
    assert [p.value for p in point.probes] == [1.0]  # the weakest fails: nothing stronger is tried
    assert not point.found and point.fails_at == 1.0
    assert "no passing setting in [0.2, 1]" in point.describe()

    point = search.search(engine.evaluate, thresholds, MODEL, DATASET, "v2drop", 0.2, 0.5, steps=1, settings=FAST)
    assert [p.value for p in point.probes] == [0.5, 0.2] and point.value == 0.2 and point.fails_at is None


@pytest.mark.slow
def test_cli_reports_a_range_without_passing_setting_and_stores_the_probes(tmp_path, capsys):
    (tmp_path / "thresholds.toml").write_text("[defaults]\ntokens_reduction_pct = 99\n")
    out, chdb = tmp_path / "points.json", tmp_path / "chdb"
    code = main(["search", "--model", "dinov2_s14", "--dataset", "synthetic", "--limit", "1", "--image-size", "56",
                 "--device", "cpu", "--no-ocr", "--method", "avit", "--lo", "0", "--hi", "0.3", "--steps", "0", "--timing-repeats", "1",
                 "--thresholds", str(tmp_path / "thresholds.toml"), "--out", str(out), "--chdb-dir", str(chdb),
                 "--run-id", "search-test"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "avit sparsity: no passing setting in [0, 0.3]" in printed and "tokens_reduction_pct = 0" in printed
    assert json.loads(out.read_text())["points"][0]["found"] is False
    _, rows = ClickHouseSink(chdb_dir=chdb).select(
        f"SELECT case_id FROM {TABLE} WHERE run_id = 'search-test' AND row_kind = 'case' ORDER BY case_id")
    assert [r[0] for r in rows] == ["dinov2_s14-avit_s0-synthetic", "dinov2_s14-none-synthetic"]


def test_cli_refuses_a_method_without_knob(tmp_path, capsys):
    assert main(["search", "--model", "dinov2_s14", "--dataset", "synthetic", "--method", "none"]) == 2
    assert "unknown searchable method 'none'" in capsys.readouterr().err


def test_bad_ends_are_refused_and_a_probe_that_raises_fails(tmp_path):
    """The bisection itself, over an evaluation whose outcome is known: cosine falls with sparsity,
    and the model cannot run beyond sparsity 0.8."""
    from evalsuite.results import CaseResult, SampleRecord

    def evaluate(spec):
        sparsity = spec.params["sparsity"]
        if sparsity > 0.8:
            raise RuntimeError("no token left")
        samples = [SampleRecord(f"s{i}", "document", {"tokens_before": 100.0, "tokens_after": 100 * (1 - sparsity),
                                                      "feature_cosine": 1 - sparsity / 4 + i / 100}) for i in range(3)]
        return CaseResult(spec.id, spec.model.id, spec.method, spec.params, spec.dataset.id, samples=samples,
                          kpis={"tokens_reduction_pct": 100 * sparsity, "feature_cosine_mean": 1 - sparsity / 4 + 0.01})

    thresholds = limits(tmp_path, "[defaults]\nfeature_cosine_mean = 0.85\n")  # passes up to sparsity 0.64
    point = search.search(evaluate, thresholds, MODEL, DATASET, "avit", 0.0, 0.9, steps=4)
    assert [p.value for p in point.probes] == [0.0, 0.9, 0.45, 0.675, 0.562, 0.619]
    assert point.probes[1].breaches == ["error: RuntimeError: no token left"]
    assert (point.value, point.fails_at) == (0.619, 0.675)
    assert point.reduction_interval == pytest.approx((61.9, 61.9))
    with pytest.raises(ValueError, match="keep"):
        search.search(evaluate, thresholds, MODEL, DATASET, "v2drop", 0.0, 1.0)
