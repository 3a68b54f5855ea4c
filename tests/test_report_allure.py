"""Allure results of evaluation cases: the page :func:`annotate` writes, the run-wide files,
and, end to end, the HTML report a person opens in a browser.

The end-to-end test needs headless Chromium and the allure CLI; CI installs both with
``.ci/install-report-tools`` before running the tests. Elsewhere it is skipped.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from evalsuite.report import allure as report
from evalsuite.results import CaseResult, RunInfo, SampleRecord

REPO = Path(__file__).resolve().parents[1]
RUN = RunInfo("run-allure", "2026-11-22T09:00:00+00:00", "f00dbabe", "box", "1x H100", tenant_id="lab",
              versions={"torch": "2.14.1", "rapidocr": "3.10.0"}, seed=7)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a nested pytest: nothing of this (maybe xdist) run leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "EVALSUITE_"))}
    return env | extra


# -- pure parts -------------------------------------------------------------------------

def test_enabled_follows_alluredir():
    assert report.enabled(SimpleNamespace(option=SimpleNamespace(allure_report_dir="out")))
    assert not report.enabled(SimpleNamespace(option=SimpleNamespace(allure_report_dir=None)))
    assert not report.enabled(SimpleNamespace(option=SimpleNamespace()))  # allure-pytest not installed


def test_worst_samples_prefer_ocr_drift_and_leave_out_errors():
    records = [
        SampleRecord("a", "receipt", {"feature_cosine": 0.2, "ocr_wer_drift": 0.0}),
        SampleRecord("b", "receipt", {"feature_cosine": 0.9, "ocr_wer_drift": 0.4}),
        SampleRecord("c", "photo", {"feature_cosine": 0.1}),  # no OCR drift: ranks after every drift
        SampleRecord("d", "receipt", error="unreadable"),
        SampleRecord("e", "receipt", {"feature_cosine": 0.5, "ocr_wer_drift": float("nan")}),
    ]
    assert [r.sample_id for r in report.worst_samples(records, 2)] == ["b", "a"]
    assert "d" not in [r.sample_id for r in report.worst_samples(records, 10)]
    by_cosine = [SampleRecord(x, "photo", {"feature_cosine": c}) for x, c in (("x", .9), ("y", .3), ("z", .6))]
    assert [r.sample_id for r in report.worst_samples(by_cosine, 3)] == ["y", "z", "x"]


def test_write_environment(tmp_path):
    results = [
        CaseResult("m-none-sroie", "m", "none", {}, "sroie",
                   env={"device": "cuda:0", "dtype": "float16", "ocr_engine": "rapidocr",
                        "ocr_det_model": "PP-OCRv6_det_small.onnx", "ocr_det_sha256": "0123456789abcdef"}),
        CaseResult("m-tome_f0.5-sroie", "m", "tome", {"merge_factor": 0.5}, "sroie",
                   env={"device": "cuda:1", "dtype": "float16", "ocr_engine": "rapidocr"}),
    ]
    report.write_environment(tmp_path / "results", RUN, results)

    props = dict(line.split(" = ", 1) for line in
                 (tmp_path / "results" / "environment.properties").read_text().splitlines())
    assert props["run_id"] == "run-allure" and props["git_commit"] == "f00dbabe" and props["seed"] == "7"
    assert props["gpu"] == "1x H100" and props["version.torch"] == "2.14.1"
    assert props["device"] == "cuda:0, cuda:1"
    assert props["ocr_engine"] == "rapidocr" and props["ocr_det_model"] == "PP-OCRv6_det_small.onnx"

    # Allure picks the first category whose statuses and (whole-message) regex match, as fullmatch does
    categories = json.loads((tmp_path / "results" / "categories.json").read_text())

    def category(status: str, message: str) -> str | None:
        for c in categories:
            if status in c["matchedStatuses"] and re.fullmatch(c.get("messageRegex", ".*"), message, re.S):
                return c["name"]
        return None

    breach = ("evalsuite.session.KPIBreachError: KPI breach in dinov2_s14-tome_f0.5-samples (2):\n"
              "  - ocr_wer_drift = 0.5106, limit <= 0.02 (from [defaults])")
    assert category("failed", breach) == "KPI breach"
    assert category("failed", "AssertionError: assert 1 == 2") == "Infrastructure error"
    assert category("broken", "RuntimeError: CUDA out of memory") == "Infrastructure error"
    assert category("skipped", "Skipped: dataset 'sroie' unavailable: /data/sroie does not exist") == "Missing dataset"


def test_write_environment_without_ocr(tmp_path):
    report.write_environment(tmp_path, RUN, [CaseResult("c", "m", "none", {}, "d", env={"device": "cpu"})])
    assert "ocr_engine = off (no OCR KPIs)" in (tmp_path / "environment.properties").read_text()


# -- annotate() under allure-pytest ----------------------------------------------------------

ANNOTATED_TESTS = '''
import numpy as np
from PIL import Image

from evalsuite.data.sample import Sample, SampleError
from evalsuite.plan import TokenPlan
from evalsuite.report import allure as report
from evalsuite.results import Breach, CaseResult, SampleRecord
from evalsuite.thresholds import Limit


def picture(width, height):
    x = np.linspace(0, 255, width, dtype=np.uint8)
    return Image.fromarray(np.stack([np.tile(x, (height, 1))] * 3, axis=-1), "RGB")


def unreadable():
    raise SampleError("sample s2: file is truncated")


def sample(sample_id, load):
    return Sample(sample_id, "toy", "document", load=load)


MERGED = TokenPlan((2, 2), np.array([0, 0, -1, 1], dtype=np.int32), 2)  # one pair merged, one dropped


def test_breached_case():
    result = CaseResult(
        "toy_vit-tome_f0.5-toy", "toy_vit", "tome", {"merge_factor": 0.5}, "toy",
        kpis={"tokens_reduction_pct": 46.875, "feature_cosine_mean": 0.8, "emd": 0.01},
        breaches=[Breach("feature_cosine_mean", 0.8, 0.9, ">=", "method.tome"),
                  Breach("ocr_wer_drift", None, 0.02, "<=", "defaults")],
        samples=[SampleRecord("s0", "document", {"feature_cosine": 0.99, "ocr_wer_drift": 0.0}),
                 SampleRecord("s1", "document", {"feature_cosine": 0.95, "ocr_wer_drift": 0.3}),
                 SampleRecord("s2", "document", {"feature_cosine": 0.5, "ocr_wer_drift": 0.5}),
                 SampleRecord("s3", "document", error="sample s3: not an image")],
        env={"device": "cpu", "dtype": "float32", "ocr_engine": "rapidocr"},
    )
    limits = [Limit("tokens_reduction_pct", 15.0, ">=", "defaults"),
              Limit("feature_cosine_mean", 0.9, ">=", "method.tome"),
              Limit("ocr_wer_drift", 0.02, "<=", "defaults"),
              Limit("ocr_cer_drift", 0.02, "<=", "defaults")]
    artifacts = [(sample("s0", lambda: picture(64, 64)), MERGED),
                 (sample("s1", lambda: picture(2000, 1000)), MERGED),
                 (sample("s2", unreadable), MERGED)]
    report.annotate(result, limits, artifacts, worst=2)  # s2 and s1 are worst; s2 cannot be loaded


def test_crop_case():
    page = Image.new("RGB", (560, 560), "white")
    page.paste((0, 0, 0), (100, 100, 300, 200))
    result = CaseResult("toy_vit-crop-toy", "toy_vit", "crop", {}, "toy", kpis={},
                        samples=[SampleRecord("s0", "document", {"ocr_wer_drift": 0.1})])
    report.annotate(result, [], [(sample("s0", lambda: page), TokenPlan.identity((2, 2)))])


def test_reference_case():
    result = CaseResult("toy_vit-none-toy", "toy_vit", "none", {}, "toy", kpis={"feature_cosine_mean": 1.0},
                        samples=[SampleRecord("s0", "document", {"feature_cosine": 1.0})],
                        env={"device": "cpu"}, labels=["random-weights"])
    report.annotate(result, [Limit("feature_cosine_mean", 0.9999, ">=", "reference")],
                    [(sample("s0", lambda: picture(32, 16)), TokenPlan.identity((2, 2)))])
'''


@pytest.fixture(scope="module")
def annotated(tmp_path_factory) -> tuple[dict[str, dict], Path]:
    """Allure results of ANNOTATED_TESTS, by test title, and the results folder."""
    root = tmp_path_factory.mktemp("annotate")
    (root / "pytest.ini").write_text("[pytest]\n")
    (root / "test_annotated.py").write_text(ANNOTATED_TESTS)
    run = subprocess.run([sys.executable, "-m", "pytest", "test_annotated.py", "-q", "-p", "no:evalsuite",
                          "-p", "no:cacheprovider", "--alluredir", "results"],
                         cwd=root, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    results = [json.loads(p.read_text()) for p in (root / "results").glob("*-result.json")]
    return {r["name"]: r for r in results}, root / "results"


def steps(result: dict) -> dict[str, dict]:
    return {s["name"]: s for s in result["steps"]}


def test_annotate_names_and_files_the_case(annotated):
    results, _ = annotated
    case = results["toy_vit-tome_f0.5-toy"]
    labels = {(label["name"], label["value"]) for label in case["labels"]}
    assert {("parentSuite", "toy_vit"), ("suite", "tome"), ("subSuite", "toy"),
            ("model", "toy_vit"), ("method", "tome"), ("dataset", "toy")} <= labels
    params = {p["name"]: p["value"] for p in case["parameters"]}
    assert params["merge_factor"] == "0.5" and params["model"] == "'toy_vit'" and params["dataset"] == "'toy'"
    assert "feature_cosine_mean = 0.8, limit &gt;= 0.9 (from [method.tome])" in case["descriptionHtml"]
    assert "rapidocr" in case["descriptionHtml"]
    reference = results["toy_vit-none-toy"]
    assert ("tag", "random-weights") in {(label["name"], label["value"]) for label in reference["labels"]}


def test_annotate_gives_each_kpi_a_step_that_fails_on_breach(annotated):
    results, _ = annotated
    kpi_steps = {name: s for name, s in steps(results["toy_vit-tome_f0.5-toy"]).items()
                 if not name.startswith("sample ")}
    assert {name: s["status"] for name, s in kpi_steps.items()} == {
        "tokens_reduction_pct = 46.88 (limit >= 15 from [defaults])": "passed",
        "feature_cosine_mean = 0.8 (limit >= 0.9 from [method.tome])": "failed",
        "emd = 0.01 (no limit)": "passed",
        "ocr_wer_drift = missing (limit <= 0.02 from [defaults])": "failed",  # limited, not produced
        "ocr_cer_drift not measured (limit <= 0.02 from [defaults]): not checked": "skipped",
    }
    failed = kpi_steps["feature_cosine_mean = 0.8 (limit >= 0.9 from [method.tome])"]
    assert failed["statusDetails"]["message"].startswith(
        "AssertionError: feature_cosine_mean = 0.8, limit >= 0.9 (from [method.tome])")


def test_annotate_attaches_the_worst_loadable_samples(annotated):
    results, folder = annotated
    sample_steps = [s for name, s in steps(results["toy_vit-tome_f0.5-toy"]).items() if name.startswith("sample ")]
    assert [s["name"] for s in sample_steps] == [
        "sample s1 (document): feature_cosine = 0.95, ocr_wer_drift = 0.3"]  # s2 is worse but unloadable
    attachments = {a["name"]: a for a in sample_steps[0]["attachments"]}
    assert set(attachments) == {"original", "token plan overlay", "reconstruction", "metrics"}
    for name in ("original", "token plan overlay", "reconstruction"):
        assert attachments[name]["type"] == "image/png"
        with Image.open(folder / attachments[name]["source"]) as image:
            assert image.size == (800, 400)  # 2000 x 1000, shrunk to 800 px on the long side
    metrics = json.loads((folder / attachments["metrics"]["source"]).read_text())
    assert metrics["sample_id"] == "s1" and metrics["kpis"]["ocr_wer_drift"] == 0.3
    assert metrics["image_size"] == [2000, 1000] and metrics["plan"] == {"grid": [2, 2], "tokens": 2,
                                                                         "input_scale": 1.0}


def test_annotate_attaches_the_image_an_image_side_method_sends(annotated):
    results, folder = annotated
    (step,) = [s for name, s in steps(results["toy_vit-crop-toy"]).items() if name.startswith("sample ")]
    attachments = {a["name"]: a for a in step["attachments"]}
    with Image.open(folder / attachments["image sent (224x140)"]["source"]) as image:
        assert image.size == (224, 140)  # the inked cells' bounding box, 28-px cells
    assert "image sent" not in str(steps(results["toy_vit-none-toy"]))


def test_annotate_shows_an_identity_plan_once(annotated):
    results, _ = annotated
    (step,) = [s for name, s in steps(results["toy_vit-none-toy"]).items() if name.startswith("sample ")]
    assert [a["name"] for a in step["attachments"]] == ["original", "token plan", "metrics"]


# -- end to end: a real evaluation, the HTML report, a browser ----------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ALLURE = next((str(p) for p in [REPO / ".evalsuite/tools/node_modules/.bin/allure"] if p.exists()),
              shutil.which("allure"))
INSTALL = "run .ci/install-report-tools"

MATRIX = """\
seed = 0
batch_size = 8
timing_repeats = 2   # timing is not what this test looks at
timing_warmup = 1

[models.dinov2_s14]
image_size = 224

[methods.none]

[methods.tome]
merge_factor = 0.5

[datasets.samples]

[datasets.sroie]     # EVALSUITE_DATA points at an empty folder: skipped as a missing dataset
"""

THRESHOLDS = """\
[defaults]
tokens_reduction_pct = 15
feature_cosine_mean = 0.99999   # no real merge keeps this: the tome case shows a failed KPI step
ocr_wer_drift = 0.02            # not measured under --evalsuite-no-ocr

[reference]
feature_cosine_mean = 0.9999
"""


def chromium(url: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp / 'chromium'}", "--virtual-time-budget=15000", *args, url],
        capture_output=True, text=True, timeout=60)


def page_steps(dom: str) -> dict[str, str]:
    """Step title -> status of the test body's steps, as the page shows them (each step's status icon)."""
    body = dom.partition(">Test body<")[2].partition(">Tear down<")[0]  # not the fixtures' stages
    shown = {}
    for block in body.split('<div class="step">')[1:]:
        status = re.search(r"status-icon_status_(\w+)", block)
        name = re.search(r'class="step__name">([^<]*)<', block)
        if status and name:
            shown[html.unescape(name.group(1))] = status.group(1)
    return shown


@pytest.fixture
def served(tmp_path):
    """``serve(folder) -> base URL``: a static HTTP server on a free port, stopped afterwards."""
    servers = []

    def serve(folder: Path) -> str:
        server = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1"],
                                  cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        servers.append(server)
        line = server.stdout.readline()  # "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        port = re.search(r"port (\d+)", line)
        assert port, f"http.server said {line!r}"
        return f"http://127.0.0.1:{port.group(1)}"

    yield serve
    for server in servers:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason=f"chromium is not installed ({INSTALL})")
@pytest.mark.skipif(ALLURE is None, reason=f"the allure CLI is not installed ({INSTALL})")
def test_case_pages_in_the_html_report(tmp_path, served):
    (tmp_path / "matrix.toml").write_text(MATRIX)
    (tmp_path / "thresholds.toml").write_text(THRESHOLDS)
    (tmp_path / "no-data").mkdir()
    results, html_report = tmp_path / "results", tmp_path / "report"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "cases", "-p", "no:cacheprovider", "-p", "no:randomly",
         "-k", "none-samples or tome_f0.5-samples or none-sroie", "--alluredir", str(results),
         "--evalsuite-no-ocr", "--evalsuite-matrix", str(tmp_path / "matrix.toml"),
         "--evalsuite-thresholds", str(tmp_path / "thresholds.toml"),
         "--evalsuite-dsn", f"chdb://{tmp_path / 'chdb'}"],
        cwd=REPO, env=clean_env(EVALSUITE_DATA=str(tmp_path / "no-data")), capture_output=True, text=True,
        timeout=300)
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]  # the tome case breaches, on purpose
    assert "1 failed, 1 passed, 1 skipped" in run.stdout, run.stdout[-3000:]
    assert (results / "environment.properties").is_file() and (results / "categories.json").is_file()

    generate = subprocess.run([ALLURE, "generate", str(results), "-o", str(html_report), "--clean"],
                              env=clean_env(ALLURE_NO_ANALYTICS="1"), capture_output=True, text=True, timeout=120)
    assert generate.returncode == 0, generate.stdout + generate.stderr
    cases = {c["name"]: c for c in map(json.loads, map(Path.read_text, (html_report / "data/test-cases").glob("*.json")))}
    assert {"dinov2_s14-none-samples", "dinov2_s14-tome_f0.5-samples"} <= set(cases), sorted(cases)
    tome, none = cases["dinov2_s14-tome_f0.5-samples"], cases["dinov2_s14-none-samples"]
    base = served(html_report)

    dom = chromium(f"{base}/index.html#testresult/{tome['uid']}", tmp_path, "--dump-dom").stdout
    assert "dinov2_s14-tome_f0.5-samples" in dom and 'label_status_failed">Failed' in dom
    shown = page_steps(dom)
    cosine = next(title for title in shown if title.startswith("feature_cosine_mean = "))
    assert cosine.endswith("(limit >= 0.99999 from [defaults])") and shown[cosine] == "failed", shown
    reduction = next(title for title in shown if title.startswith("tokens_reduction_pct = "))
    assert shown[reduction] == "passed" and "limit >= 15 from [defaults]" in reduction, shown
    assert shown["ocr_wer_drift not measured (limit <= 0.02 from [defaults]): not checked"] == "skipped"
    assert sum(title.startswith("sample samples/") for title in shown) == 3, shown

    overlay = next(a for step in tome["testStage"]["steps"] for a in step.get("attachments", [])
                   if a["name"] == "token plan overlay")
    dom = chromium(f"{base}/index.html#testresult/{tome['uid']}?attachment={overlay['uid']}", tmp_path,
                   "--dump-dom").stdout
    assert f'src="data/attachments/{overlay["source"]}' in dom  # the overlay opens as an image

    dom = chromium(f"{base}/index.html#testresult/{none['uid']}", tmp_path, "--dump-dom").stdout
    assert "dinov2_s14-none-samples" in dom and 'label_status_passed">Passed' in dom
    assert set(page_steps(dom).values()) <= {"passed", "skipped"}

    dom = chromium(f"{base}/index.html#categories", tmp_path, "--dump-dom").stdout
    assert "KPI breach" in dom and "Missing dataset" in dom

    shot = tmp_path / "case.png"
    chromium(f"{base}/index.html#testresult/{tome['uid']}", tmp_path, "--hide-scrollbars",
             "--window-size=1400,2000", f"--screenshot={shot}")
    with Image.open(shot) as image:
        assert image.size == (1400, 2000) and len(image.convert("L").getcolors(1 << 16) or []) > 20
