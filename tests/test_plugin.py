"""The pytest plugin end to end: usage errors, selection, skips and bad samples.

Each test runs pytest in a subprocess on a small matrix written to a temp dir,
with the real plugin, model and OCR engine.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evalsuite.data.sample import Sample, SampleError
from evalsuite.engine import Engine, EngineSettings
from evalsuite.matrix import CaseSpec, DatasetSpec, ModelSpec

from .conftest import two_model_matrix

REPO = Path(__file__).resolve().parents[1]
TEST_MODULE = (REPO / "cases" / "test_compression.py").read_text()

SMALL_MATRIX = """
timing_repeats = 2
timing_warmup = 1
[models.dinov2_s14]
image_size = 112
[methods.none]
[methods.tome]
merge_factor = 0.5
[datasets.samples]
limit = 2
[datasets.sroie]
"""


# A plugin for the nested runs: where the xdist controller first imported torch, if it did
# (its start-up is on the critical path of every gate run; see evalsuite.distribution).
WATCH_TORCH = """
import os, sys, traceback

class FirstTorchImport:
    stack = None

    def find_spec(self, name, path=None, target=None):
        if name == "torch" and self.stack is None:
            self.stack = "".join(traceback.format_stack(limit=15))
        return None

WATCH = FirstTorchImport()
if "PYTEST_XDIST_WORKER" not in os.environ:
    sys.meta_path.insert(0, WATCH)

def pytest_unconfigure(config):
    if "PYTEST_XDIST_WORKER" not in os.environ:
        # a look-up alone (the run summary's bytecode check finds torch's files) imports nothing
        seen = (WATCH.stack or "imported before the watch") if "torch" in sys.modules else "never imported"
        with open("controller_torch.txt", "w") as fh:
            fh.write(seen)
"""


def controller_torch(tmp_path: Path) -> str:
    """What the ``watch_torch`` plugin saw of torch in the controller of the last nested run."""
    return (tmp_path / "controller_torch.txt").read_text()


def run_pytest(tmp_path: Path, matrix: str, *args: str, thresholds: str | None = None,
               env: dict | None = None, cache: bool = False) -> subprocess.CompletedProcess:
    (tmp_path / "test_cases.py").write_text(TEST_MODULE)
    (tmp_path / "matrix.toml").write_text(matrix)
    (tmp_path / "watch_torch.py").write_text(WATCH_TORCH)
    limits = tmp_path / "thresholds.toml"
    limits.write_text(thresholds if thresholds is not None else (REPO / "thresholds.toml").read_text())
    command = [sys.executable, "-m", "pytest", str(tmp_path / "test_cases.py"),
               *(() if cache else ("-p", "no:cacheprovider")), "--rootdir", str(tmp_path), "-c", os.devnull, "--evalsuite-matrix", str(tmp_path / "matrix.toml"),
               "--evalsuite-thresholds", str(limits), "--evalsuite-dsn", f"spool://{tmp_path / 'spool'}",
               "-p", "watch_torch", *args]
    python_path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))  # watch_torch
    full_env = {**os.environ, "PYTHONPATH": python_path, **(env or {})}
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=full_env)


@pytest.mark.parametrize("matrix,expected", [
    ("[models.dinov2_s14\n", "malformed TOML"),
    (SMALL_MATRIX.replace("[methods.tome]", "[methods.tomee]"), "[methods.tomee]: unknown method 'tomee'; did you mean 'tome'?"),
    (SMALL_MATRIX.replace("[datasets.sroie]", "[datasets.sorie]"), "[datasets.sorie] loader: unknown dataset 'sorie'; did you mean 'sroie'?"),
    (SMALL_MATRIX.replace("merge_factor = 0.5", "merge_factor = 1.5"), "[methods.tome] merge_factor: must be < 1, got 1.5"),
    (SMALL_MATRIX.replace("image_size = 112", "image_size = 112\ndevice = 'tpu'"), "[models.dinov2_s14] device: 'tpu'"),
])
def test_bad_matrix_is_a_usage_error_naming_file_and_key(tmp_path, matrix, expected):
    proc = run_pytest(tmp_path, matrix, "--collect-only")
    assert proc.returncode == 4, proc.stdout + proc.stderr  # pytest's usage-error exit code
    assert "matrix.toml" in proc.stderr and expected in proc.stderr, proc.stderr


def test_bad_thresholds_are_a_usage_error_naming_file_and_key(tmp_path):
    proc = run_pytest(tmp_path, SMALL_MATRIX, "--collect-only",
                      thresholds="[defaults]\ntokens_reduction = 15\n")
    assert proc.returncode == 4
    assert "thresholds.toml: [defaults] tokens_reduction: unknown KPI 'tokens_reduction'" in proc.stderr
    assert "did you mean 'tokens_reduction_pct'" in proc.stderr


@pytest.mark.parametrize("args,expected", [
    (["-o", "evalsuite_ocr_device=gpu"], "evalsuite_ocr_device = 'gpu': choose one of auto, cpu, cuda"),
    (["-o", "evalsuite_ocr_workers=many"], "evalsuite_ocr_workers = 'many': expected a count"),
    (["--evalsuite-ocr-workers", "-2"], "evalsuite_ocr_workers = -2: expected a count"),
])
def test_bad_ocr_settings_are_a_usage_error_naming_the_key(tmp_path, args, expected):
    proc = run_pytest(tmp_path, SMALL_MATRIX, "--collect-only", *args)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert expected in proc.stderr, proc.stderr


def test_matrix_expands_into_readable_case_ids_selectable_with_k(tmp_path):
    proc = run_pytest(tmp_path, SMALL_MATRIX.replace('merge_factor = 0.5', 'merge_factor = [0.5, 0.7]'),
                      "--collect-only", "-q", "-k", "tome")
    ids = [line.split("[", 1)[1].rstrip("]") for line in proc.stdout.splitlines() if "test_case[" in line]
    assert ids == ["dinov2_s14-tome_f0.5-samples", "dinov2_s14-tome_f0.5-sroie",
                   "dinov2_s14-tome_f0.7-samples", "dinov2_s14-tome_f0.7-sroie"]


def test_bad_method_parameter_under_xdist_is_the_same_usage_error(tmp_path):
    """The controller checks the methods' parameters without torch: the run ends with the message,
    not with xdist's tracebacks of restarted workers."""
    bad = SMALL_MATRIX.replace("merge_factor = 0.5", "merge_factor = 1.5")
    proc = run_pytest(tmp_path, bad, "-n", "1", "-p", "xdist")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "matrix.toml: [methods.tome] merge_factor: must be < 1, got 1.5" in proc.stderr
    assert "node down" not in proc.stdout + proc.stderr and "Traceback" not in proc.stdout + proc.stderr
    assert controller_torch(tmp_path) == "never imported"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
@pytest.mark.parametrize("workers", [(), ("-n", "2", "-p", "xdist")], ids=["no-xdist", "two-workers"])
def test_gpu_selection_without_cuda_fails_clearly(tmp_path, workers):
    proc = run_pytest(tmp_path, SMALL_MATRIX, "-m", "gpu", *workers)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "selects GPU cases but CUDA is not available" in proc.stderr
    assert "node down" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_run_skips_only_cases_whose_store_is_missing_and_reports_kpis(tmp_path):
    empty_store = tmp_path / "store"
    empty_store.mkdir()
    proc = run_pytest(tmp_path, SMALL_MATRIX, "--evalsuite-no-ocr", "-rs",
                      thresholds="[defaults]\ntokens_reduction_pct = 15\n", env={"EVALSUITE_DATA": str(empty_store)})
    out = proc.stdout
    assert "2 passed" in out and "2 skipped" in out, out
    assert f"dataset 'sroie' unavailable: {empty_store / 'sroie'} does not exist" in out
    assert "dinov2_s14-tome_f0.5-samples" in out and "evalsuite KPIs" in out  # the KPI table
    assert "rows spooled to" in out and list((tmp_path / "spool").glob("*.jsonl"))
    phases = re.search(r"before the first case ([\d.]+) s, cases ([\d.]+) s", out)
    assert phases and float(phases[1]) > 0.5 and float(phases[2]) > 0, out  # interpreter + imports take time


# A plugin for the nested runs: whether the worker's OCR pool was running when its first case was set up.
OCR_PROBE = """
def pytest_runtest_setup(item):
    from evalsuite.plugin import SESSION_KEY

    engine = item.config.stash[SESSION_KEY]._engine
    started = engine is not None and engine._ocr is not None and bool(engine._ocr.reader.pids())
    with open("ocr_at_setup.txt", "a") as fh:
        fh.write(f"{item.callspec.id} {started}\\n")
"""


@pytest.mark.parametrize("args,started", [((), "True"), (("--evalsuite-no-ocr",), "False")], ids=["ocr", "no-ocr"])
def test_the_ocr_pool_starts_once_the_cases_are_collected(tmp_path, args, started):
    """Its processes load their models while the run waits for its first case and loads the model."""
    (tmp_path / "ocr_probe.py").write_text(OCR_PROBE)
    matrix = "timing_repeats = 1\ntiming_warmup = 0\n[models.dinov2_s14]\nimage_size = 56\n[methods.none]\n" \
             "[datasets.samples]\nlimit = 1\n"
    proc = run_pytest(tmp_path, matrix, "-p", "ocr_probe", "--evalsuite-ocr-workers", "1", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "ocr_at_setup.txt").read_text() == f"dinov2_s14-none-samples {started}\n"


DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.gpu)]


def small_case(method: str, params: dict, name: str, device: str = "cpu",
               dataset: DatasetSpec = DatasetSpec("samples", "samples", {"limit": 1})) -> CaseSpec:
    """A case of DINOv2-S/14 at 112 px: a real model and method, fast on a CPU."""
    return CaseSpec(ModelSpec("dinov2_s14", "dinov2_s14", 112, device, "float32"), method, params, name,
                    dataset, {}, "inline")


def evaluate_once(case: CaseSpec, **settings):
    """``case`` run by a fresh engine with one OCR process and one timed forward; the pool closed after."""
    engine = Engine(EngineSettings(**{"timing_repeats": 1, "timing_warmup": 0, "ocr_workers": 1, **settings}))
    try:
        return engine.evaluate(case)
    finally:
        engine.close()


def test_a_reader_killed_during_a_case_costs_no_kpi(tmp_path, monkeypatch):
    """kill -9 of the OCR pool's process (a child of this one) as the case queues its reads: the
    pool is built again, the reads succeed there, and the case keeps every KPI, OCR's included."""
    import signal

    from evalsuite.ocr.stage import OcrStage

    monkeypatch.setenv("EVALSUITE_CACHE", str(tmp_path))  # the reconstruction is read, not found cached
    submit, killed, stages = OcrStage.submit, [], []

    def kill_then_submit(stage, *args, **kwargs):
        stages.append(stage)
        for pid in stage.reader.pids():
            assert str(pid) in Path(f"/proc/{pid}/stat").read_text() and _parent(pid) == os.getpid()
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        return submit(stage, *args, **kwargs)

    monkeypatch.setattr(OcrStage, "submit", kill_then_submit)
    result = evaluate_once(small_case("tome", {"merge_factor": 0.5}, "tome_f0.5"))
    assert killed and stages[0].reader.restarts == 1
    assert all(s.error is None for s in result.samples), [s.error for s in result.samples]
    assert result.error is None and result.kpis["tokens_reduction_pct"] > 0 and result.kpis["feature_cosine_mean"] > 0
    assert "ocr_wer_drift" in result.kpis and result.kpis["encoder_ms_p50"] > 0


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_unreadable_image_fails_that_sample_and_the_case_goes_on(tmp_path, monkeypatch):
    from evalsuite.data.datasets import DATASETS

    good = Image.fromarray(np.random.default_rng(0).integers(0, 256, (56, 56, 3), dtype=np.uint8))
    bad_path = tmp_path / "broken.png"
    bad_path.write_bytes(b"not an image")

    def broken():
        raise SampleError(f"sample broken: cannot read image {bad_path}")

    samples = [Sample("t/good", "t", "photo", lambda: good), Sample("t/broken", "t", "photo", broken, source=bad_path)]
    monkeypatch.setitem(DATASETS._entries, "two_samples", lambda root, **kw: samples)
    result = evaluate_once(small_case("tome", {"merge_factor": 0.5}, "tome_f0.5",
                                      dataset=DatasetSpec("two", "two_samples")), ocr_engine=None)
    by_id = {s.sample_id: s for s in result.samples}
    assert str(bad_path) in by_id["t/broken"].error
    assert by_id["t/good"].error is None and result.kpis["tokens_reduction_pct"] > 0


@pytest.mark.parametrize("device", DEVICES)
def test_case_is_timed_with_no_ocr_read_in_flight(monkeypatch, device):
    """The timed forwards are host-bound. The originals' reads are queued ahead, before the model
    loads, and are done before anything is timed, the unpatched model's first timing included; the
    case queues its other reads only after its timing, and collects them all before it ends, so no
    other case's timing meets them either."""
    from evalsuite.ocr.stage import OcrStage

    events = []

    def watch(owner, name):
        original = getattr(owner, name)

        def watched(*args, **kwargs):
            if name == "_time":  # args[0]: the engine; its stage's reads queued and not yet done
                events.append(f"_time starts, {args[0]._ocr.reader.in_flight()} reads in flight")
            else:
                events.append(f"{name} starts")
            try:
                return original(*args, **kwargs)
            finally:
                events.append(f"{name} ends")
        monkeypatch.setattr(owner, name, watched)

    for owner, name in ((Engine, "model"), (Engine, "_time"), (OcrStage, "read_ahead"),
                        (OcrStage, "wait_idle"), (OcrStage, "submit"), (OcrStage, "collect")):
        watch(owner, name)
    result = evaluate_once(small_case("tome", {"merge_factor": 0.5}, "tome_f0.5", device))
    assert "ocr_wer_drift" in result.kpis
    timed = ["_time starts, 0 reads in flight", "_time ends"]
    case_runs = 2 if device == "cuda" else 1  # see test_case_timing_runs_twice_only_where...
    assert events[:2] == ["read_ahead starts", "read_ahead ends"]  # before the model loads
    assert [e for e in events if not e.startswith("model")] == [
        "read_ahead starts", "read_ahead ends", "wait_idle starts", "wait_idle ends",
        *timed,  # the unpatched model, once per model x dataset
        *timed * case_runs, "submit starts", "submit ends", "collect starts", "collect ends"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ocr_device", ["auto", "cpu"])
def test_ocr_runs_on_the_gpu_of_a_gpu_case_unless_told_otherwise(device, ocr_device):
    result = evaluate_once(small_case("random", {"keep": 0.5}, "random_k0.5", device), ocr_device=ocr_device)
    [record] = result.samples
    assert record.error is None and record.info["ocr_text"] and record.info["ocr_reread"]
    on_gpu = device == "cuda" and ocr_device == "auto"
    assert result.env["ocr_device"] == ("cuda:0" if on_gpu else "cpu")
    assert result.env["ocr_runtime" if on_gpu else "ocr_onnxruntime"]
    assert (" cuda float32 " in result.env.get("ocr_runtime", "")) == on_gpu  # then "fused" or "node by node"


def test_ocr_on_cuda_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="OCR asked to run on 'cuda' but CUDA is not available"):
        Engine(EngineSettings(ocr_device="cuda")).ocr_device()
    assert Engine(EngineSettings(ocr_device="auto")).ocr_device() == "cpu"


@pytest.mark.parametrize("device,timed_runs", [("cpu", 1), pytest.param("cuda", 2, marks=pytest.mark.gpu)])
def test_case_timing_runs_twice_only_where_the_hook_timer_would_distort_it(monkeypatch, device, timed_runs):
    """On a CPU the hook timer reads the clock (microseconds per hook): one timed run gives the encoder
    and the step times. On a GPU its events would distort the encoder time: a second run without it."""
    import evalsuite.engine as engine_module

    runs = []
    timed_calls = engine_module.timed_calls

    def counting(fn, pixels, warmup, repeats):
        calls = timed_calls(fn, pixels, warmup, repeats)
        runs.append([out.compression_seconds for _, out in calls])
        return calls

    monkeypatch.setattr(engine_module, "timed_calls", counting)
    engine = Engine(EngineSettings(ocr_engine=None, timing_repeats=3, timing_warmup=1))
    case = small_case("tome", {"merge_factor": 0.5}, "tome_f0.5", device)
    engine.evaluate(case)  # the first case of a model x dataset times the unpatched model too: not counted
    runs.clear()
    result = engine.evaluate(case)
    assert len(runs) == timed_runs
    assert all(seconds > 0 for seconds in runs[-1])  # the last run timed the hooks
    assert result.kpis["compression_latency_ms_p95"] > 0 and result.kpis["encoder_ms_p50"] > 0


def test_a_reconstruction_read_once_comes_from_the_cache_in_later_runs(tmp_path, monkeypatch):
    """OCR reads are cached by image content, reconstructions included: a later run whose token plans
    are the same reads neither the original nor the reconstruction again (here, the cached texts are
    replaced by markers between two runs, and the second run reports the markers)."""
    monkeypatch.setenv("EVALSUITE_CACHE", str(tmp_path))  # the OCR pool's processes inherit it
    case = small_case("random", {"keep": 0.5}, "random_k0.5")

    def run_case() -> dict:
        [record] = evaluate_once(case).samples
        return record.info

    first = run_case()
    assert first["ocr_reread"] and first["ocr_text"]  # the reconstruction differs from the original
    entries = list((tmp_path / "ocr").rglob("*.json"))
    assert len(entries) == 2  # the original and the reconstruction
    for entry in entries:
        cached = json.loads(entry.read_text(encoding="utf-8"))
        entry.write_text(json.dumps({**cached, "text": f"marker {entry.stem[:8]}"}), encoding="utf-8")
    again = run_case()
    assert again["ocr_text"].startswith("marker ") and again["ocr_text"] != first["ocr_text"]


def test_gpu_matrix_runs_on_cpu_only_when_asked(tmp_path):
    gpu_matrix = SMALL_MATRIX.replace("image_size = 112", "image_size = 112\ndevice = 'cuda'")
    proc = run_pytest(tmp_path, gpu_matrix, "-m", "gpu", "--evalsuite-device", "cpu", "--collect-only", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "dinov2_s14-tome_f0.5-samples" in proc.stdout
    default = run_pytest(tmp_path, gpu_matrix, "-m", "not gpu", "--collect-only", "-q")
    assert "dinov2_s14-tome_f0.5-samples" not in default.stdout  # GPU cases are not run unless selected


def test_two_workers_share_the_cases_and_the_controller_keeps_every_result(tmp_path):
    """``-n 2``: cases run in two worker processes; their results reach the controller, which alone
    writes them (every case of both models in the spool), prints the table and keeps the measured
    costs for the next run's scheduler, all without importing torch."""
    proc = run_pytest(tmp_path, two_model_matrix(dinov2_size=56, samples=1), "--evalsuite-no-ocr", "-n", "2", "--dist", "worksteal", "-v",
                      "-p", "xdist", thresholds="", cache=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    costs = json.loads((tmp_path / ".pytest_cache" / "v" / "evalsuite" / "costs" / "no-ocr").read_text())
    assert set(costs["model"]) == {"dinov2_s14", "vit_b16_random"} and all(v > 0 for v in costs["model"].values())
    assert set(costs["reference"]) == {"dinov2_s14/samples", "vit_b16_random/samples"}
    assert len(costs["case"]) == 4
    workers = set(re.findall(r"\[(gw\d)\].*PASSED .*test_case\[", proc.stdout))
    assert workers == {"gw0", "gw1"}, proc.stdout
    rows = [json.loads(line) for f in (tmp_path / "spool").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert {r["case"]["case_id"] for r in rows if r["type"] == "case"} == {f"{m}-{x}-samples" for m in ("dinov2_s14", "vit_b16_random")
                                          for x in ("none", "tome_f0.5")}
    assert "vit_b16_random-tome_f0.5-samples" in proc.stdout.split("time per stage")[0]  # the KPI table
    assert controller_torch(tmp_path) == "never imported"


def test_n_auto_starts_one_worker_per_gpu_for_the_gpu_gate(monkeypatch):
    """xdist's ``-n auto`` would start one worker per core; ``-m gpu`` gets one per GPU."""
    from types import SimpleNamespace

    from evalsuite import plugin
    from evalsuite.cuda_probe import GpuCount
    from evalsuite.plugin import pytest_xdist_auto_num_workers

    def config(markexpr, device=None):
        options = {"markexpr": markexpr, "evalsuite_device": device}
        return SimpleNamespace(getoption=lambda name, default=None: options.get(name, default))

    monkeypatch.setattr(plugin, "visible_gpus", lambda: GpuCount(3))  # the driver's count: no torch there
    assert pytest_xdist_auto_num_workers(config("gpu")) == 3
    assert pytest_xdist_auto_num_workers(config("gpu and not slow")) == 3
    assert pytest_xdist_auto_num_workers(config("not gpu")) is None  # xdist decides (cores)
    assert pytest_xdist_auto_num_workers(config("gpu", device="cpu")) is None
    monkeypatch.setattr(plugin, "visible_gpus", lambda: GpuCount(0, "no CUDA driver"))
    assert pytest_xdist_auto_num_workers(config("gpu")) == 1  # which refuses: no CUDA
