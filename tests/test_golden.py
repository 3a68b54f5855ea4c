"""Golden Stage A baselines of dinov2_s14 x samples, and the tolerant comparison that checks them.

The golden files are ``golden/test_golden/test_tokens_baseline.json`` and
``golden/test_golden/test_ocr_baseline.json``. After an intended change (a new
OCR model, another resize filter), refresh them with
``pytest tests/test_golden.py --snapshot-update`` and commit the diff.
"""

from __future__ import annotations

import copy
import json
import textwrap

import pytest

from evalsuite.baselines import compute_baselines
from evalsuite.golden import BaselineGoldenExtension, GoldenJSONExtension, Tolerance

pytest_plugins = ["pytester"]


@pytest.fixture
def golden(snapshot):
    return snapshot.use_extension(BaselineGoldenExtension)


@pytest.fixture(scope="module")
def baselines():
    # The built-in sample set: rendered pages + scikit-image photos, nothing external.
    # OCR of its 8 images takes ~20 s on 2 cold cores, then comes from the OCR cache.
    return compute_baselines("dinov2_s14", "samples", None)


@pytest.mark.slow
def test_tokens_baseline(baselines, golden):
    assert baselines.tokens == golden


@pytest.mark.slow
def test_ocr_baseline(baselines, golden):
    assert baselines.ocr == golden


# -- the extension itself ----------------------------------------------------------------------

ENGINE = {"engine": "rapidocr", "version": "3.10.0", "onnxruntime": "1.32.0", "det_sha256": "090f04abcd9d9a74"}
TOKENS = [
    {"sample_id": "samples/invoice", "doc_type": "document", "tokens": 256, "pooled_norm": 51.301178,
     "pooled_head": [0.332642, -0.611072, 0.250164, -5.060716], "mean_token_norm": 51.438473},
    {"sample_id": "samples/astronaut", "doc_type": "photo", "tokens": 256, "pooled_norm": 38.10461,
     "pooled_head": [-1.791013, -0.152471, 1.58125, 0.015749], "mean_token_norm": 40.780685},
]
OCR = [
    {"sample_id": "samples/invoice", "doc_type": "document", "ocr_engine": ENGINE,
     "text": "Atlas Freight Ltd INVOICE\nBill to:\nTotal 1,246.45", "words": 8, "wer": 0.0, "cer": 0.0},
    {"sample_id": "samples/astronaut", "doc_type": "photo", "ocr_engine": ENGINE,
     "text": "", "words": 0, "wer": None, "cer": None},
]


def check(expected, actual, extension=BaselineGoldenExtension):
    """(matches, diff text) of ``actual`` against the golden ``expected``, as syrupy would see them."""
    ext = extension()
    serialized, golden_text = ext.serialize(actual), ext.serialize(expected)
    matches = ext.matches(serialized_data=serialized, snapshot_data=golden_text)
    return matches, "\n".join(ext.diff_lines(serialized, golden_text))


def changed(rows, sample, edit):
    rows = copy.deepcopy(rows)
    edit(next(r for r in rows if r["sample_id"] == sample))
    return rows


def test_float_noise_from_other_cpu_kernels_is_accepted():
    def noise(row):  # 1e-5: what other CPU kernels did to these fields (see BaselineGoldenExtension)
        row["pooled_norm"] += 1e-5
        row["mean_token_norm"] -= 1e-5
        row["pooled_head"] = [v + 1e-5 for v in row["pooled_head"]]

    assert check(TOKENS, changed(TOKENS, "samples/invoice", noise))[0]
    assert check(OCR, changed(OCR, "samples/invoice", lambda r: r.update(wer=1e-6)))[0]


def test_a_real_embedding_change_fails_naming_sample_and_field():
    ok, diff = check(TOKENS, changed(TOKENS, "samples/astronaut", lambda r: r["pooled_head"].__setitem__(3, 0.0175)))
    assert not ok
    assert "sample samples/astronaut, field pooled_head[3]: expected 0.015749, got 0.0175" in diff
    assert "tolerance rel 0 / abs 0.001" in diff
    # 0.05 on a norm of 51 is within a relative 1e-3 but not what a kernel does: the norm has no relative slack
    assert not check(TOKENS, changed(TOKENS, "samples/invoice", lambda r: r.update(pooled_norm=51.35)))[0]


def test_ints_and_strings_must_match_exactly():
    ok, diff = check(TOKENS, changed(TOKENS, "samples/invoice", lambda r: r.update(tokens=257)))
    assert not ok and "sample samples/invoice, field tokens: expected 256, got 257" in diff
    ok, diff = check(TOKENS, changed(TOKENS, "samples/invoice", lambda r: r.update(doc_type="screenshot")))
    assert not ok and 'field doc_type: expected "document", got "screenshot"' in diff
    assert not check([{"sample_id": "a", "n": 1}], [{"sample_id": "a", "n": 1.0}])[0]  # the type changed


def test_a_new_ocr_engine_version_fails_with_a_readable_diff():
    def upgrade(row):
        row["ocr_engine"] = dict(row["ocr_engine"], onnxruntime="1.33.0", det_sha256="feedfacefeedface")

    ok, diff = check(OCR, changed(OCR, "samples/astronaut", upgrade))
    assert not ok
    assert 'sample samples/astronaut, field ocr_engine.onnxruntime: expected "1.32.0", got "1.33.0"' in diff
    assert 'sample samples/astronaut, field ocr_engine.det_sha256: expected "090f04abcd9d9a74"' in diff
    assert diff.startswith("2 differences from the golden file")


def test_changed_ocr_text_shows_the_changed_lines():
    ok, diff = check(OCR, changed(OCR, "samples/invoice", lambda r: r.update(text=r["text"].replace("1,246", "1,248"))))
    assert not ok
    assert "sample samples/invoice, field text: text differs" in diff
    assert "-Total 1,246.45" in diff and "+Total 1,248.45" in diff
    assert "Bill to:" not in diff  # unchanged lines stay out


def test_rows_are_matched_by_sample_id():
    ok, diff = check(TOKENS, TOKENS[:1] + [dict(TOKENS[1], sample_id="samples/coffee")])
    assert not ok
    assert "sample samples/astronaut: missing, expected" in diff
    assert "sample samples/coffee: not in the golden file" in diff
    ok, diff = check(TOKENS, TOKENS[::-1])
    assert not ok and diff.count("\n") == 1 and "sample order" in diff


def test_tolerances_are_configurable_per_subclass():
    class Loose(GoldenJSONExtension):
        tolerance = Tolerance(rel=0.1, abs=0.0)

    rows = changed(TOKENS, "samples/invoice", lambda r: r.update(pooled_norm=52.0))
    assert check(TOKENS, rows, Loose)[0]
    assert not check(TOKENS, rows, GoldenJSONExtension)[0]  # default rel 1e-3 / abs 1e-4


def test_nan_matches_only_nan():
    assert Tolerance().accepts(float("nan"), float("nan"))
    assert not Tolerance().accepts(float("nan"), 0.0)


def test_snapshots_live_under_golden_and_fail_through_syrupy(pytester, monkeypatch):
    """End to end through syrupy: files under <project>/golden/, a readable failure, no rewrite for noise."""
    pytester.makefile(".toml", pyproject="[project]\nname = 'x'\n")
    pytester.makepyfile(test_rows=textwrap.dedent("""
        import json, os
        import pytest
        from evalsuite.golden import BaselineGoldenExtension

        def test_rows(snapshot):
            rows = json.loads(os.environ["ROWS"])
            assert rows == snapshot.use_extension(BaselineGoldenExtension)
    """))
    args = ("-p", "no:evalsuite", "-p", "no:cacheprovider")
    monkeypatch.setenv("ROWS", json.dumps(OCR))
    pytester.runpytest_inprocess(*args, "--snapshot-update").assert_outcomes(passed=1)
    golden_file = pytester.path / "golden" / "test_rows" / "test_rows.json"
    assert json.loads(golden_file.read_text()) == OCR
    assert not (pytester.path / "__snapshots__").exists()

    monkeypatch.setenv("ROWS", json.dumps(changed(OCR, "samples/invoice", lambda r: r.update(wer=1e-6))))
    pytester.runpytest_inprocess(*args, "--snapshot-update").assert_outcomes(passed=1)
    assert json.loads(golden_file.read_text()) == OCR  # noise is a match: nothing rewritten

    upgraded = changed(OCR, "samples/invoice", lambda r: r["ocr_engine"].update(version="3.11.0"))
    monkeypatch.setenv("ROWS", json.dumps(upgraded))
    result = pytester.runpytest_inprocess(*args)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(['*sample samples/invoice, field ocr_engine.version: expected "3.10.0", got "3.11.0"*'])
