"""The evalsuite session: the state behind the pytest hooks.

One :class:`EvalSession` lives in every pytest process. It knows whether it is
an xdist worker or the controller (or both, without xdist):

* workers own an :class:`~evalsuite.engine.Engine` (models loaded once per
  worker, pinned to GPU ``worker index % device count``) and evaluate cases;
  each :class:`CaseResult` travels to the controller as JSON in the test
  report's ``user_properties``;
* only the controller collects results, writes them to the sinks (ClickHouse
  or the spool) and prints the KPI table. Workers never open the database.

A controller that hands the cases out to xdist workers never imports torch:
its start-up is on the critical path of every gate run (the workers start
after it). It reads and checks the matrix as the workers do (the method specs
are torch-free), and schedules from the cases themselves; only the workers
build the methods' hooks, at their models' real depths.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import socket
import subprocess
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from . import matrix, paths, runlog
from .data.datasets import DatasetUnavailable
from .distribution import runs_cases
from .metrics.kpis import not_applicable, sample_counts
from .results import CaseResult, RunInfo
from .settings import OCR_DEVICES, EngineSettings
from .thresholds import Thresholds, ThresholdsError
from .workers import cores_per_worker, xdist_workers

if TYPE_CHECKING:
    from .engine import Engine

RESULT_PROPERTY = "evalsuite_result"
NOISY = "noisy"  # the label of a case whose timing looks like a loaded host's (thresholds.TimingNoise)
FEW_SAMPLES = "few-samples"  # the label of a case with fewer scored samples than [intervals] min_samples


class KPIBreachError(AssertionError):
    """A case missed one or more KPI limits; the message lists every one."""


class EvalSession:
    def __init__(self, config: pytest.Config):
        self.config = config
        self.rootdir = Path(config.rootpath)
        self.worker_id = os.environ.get("PYTEST_XDIST_WORKER")  # None on the controller
        self.is_controller = not hasattr(config, "workerinput")
        self.runs_cases = runs_cases(config)
        self.results: list[CaseResult] = []
        self.process_start = _process_start_time()
        self.first_case_start: float | None = None  # epoch seconds, from the test reports
        self.last_case_stop: float | None = None
        self.outcomes: list[str] = []  # where results went, for the terminal summary
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")  # tells reruns of an id apart
        self._journal = None  # the controller's spool of finished cases (evalsuite.sinks.journal)
        self._run_static: dict | None = None
        self._engine: Engine | None = None
        workerinput = getattr(config, "workerinput", {})
        self.run_id = workerinput.get("evalsuite_run_id") or option(config, "run_id") or _new_run_id()
        self.shard = shard_label(config)  # "2/3" when pytest-split runs one group of the matrix
        # third-party log lines of every process of the run go here, not into the progress line
        self.run_log = (runlog.start(runlog.path_for(self.rootdir, self.run_id)) if self.is_controller
                        else runlog.current())
        if option(config, "ocr_device") not in OCR_DEVICES:
            raise pytest.UsageError(f"evalsuite_ocr_device = {option(config, 'ocr_device')!r}: "
                                    f"choose one of {', '.join(OCR_DEVICES)}")
        self.ocr_workers = _count(option(config, "ocr_workers"), "evalsuite_ocr_workers")
        _check_data_store(config, self.rootdir)
        try:
            self.thresholds = Thresholds.load(self._path(option(config, "thresholds")))
            files = matrix.read([self._path(p) for p in option(config, "matrix")], self.defaults())
            self.model_ids = {model.id for file in files for model in file.models}
            self.dataset_ids = {dataset.id for file in files for dataset in file.datasets}
            self.cases: list[matrix.CaseSpec] = matrix.expand(files)  # torch-free: the controller has them too
            from .methods import METHODS
            from .data.datasets import DATASETS

            self.thresholds.validate_names(self.model_ids, set(METHODS.names()),
                                           self.dataset_ids | set(DATASETS.names()))
        except (ThresholdsError, matrix.MatrixError) as exc:
            raise pytest.UsageError(str(exc)) from None

    @property
    def device_override(self) -> str | None:
        """``--evalsuite-device``: run every case there; markers still follow the matrix."""
        return self.config.getoption("evalsuite_device", None)

    @property
    def allure_dir(self) -> Path | None:
        """Where allure-pytest writes, when it is active for this run."""
        value = getattr(self.config.option, "allure_report_dir", None)
        return Path(value) if value else None

    def _path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.rootdir / path

    def defaults(self) -> dict[str, int]:
        """Run settings a matrix file may override (``seed``, ``batch_size``, timing), from the engine's."""
        engine_defaults = EngineSettings()
        return {key: getattr(engine_defaults, key) for key in matrix.RUN_KEYS}

    # -- xdist -------------------------------------------------------------------------
    def configure_node(self, node) -> None:
        """Controller -> worker: share the run id so every row of a run agrees."""
        node.workerinput["evalsuite_run_id"] = self.run_id

    def make_scheduler(self, log):
        """The xdist scheduler for ``--dist worksteal``: :class:`~evalsuite.scheduling.AffinityScheduling`
        with the costs of the last run, unless ``--evalsuite-scheduler xdist`` keeps xdist's own."""
        if self.config.getvalue("dist") != "worksteal" or option(self.config, "scheduler") == "xdist":
            return None
        from .scheduling import AffinityScheduling

        return AffinityScheduling(self.config, log, self._describe, self._costs())

    def _describe(self, collection: list[str]) -> list:
        """Collected node ids -> scheduling items: model and model x dataset of each case, read from
        the controller's own cases (the node id's parameter part is the case id)."""
        from .scheduling import Item

        by_id = {case.id: case for case in self.cases}
        items = []
        for index, nodeid in enumerate(collection):
            case_id = nodeid.rpartition("[")[2].removesuffix("]") if nodeid.endswith("]") else ""
            case = by_id.get(case_id)
            items.append(Item(index) if case is None else
                         Item(index, case_id, case.model.id, f"{case.model.id}/{case.dataset.id}"))
        return items

    @property
    def _costs_key(self) -> str:
        from .scheduling import CACHE_KEY

        ocr = "no-ocr"
        if not option(self.config, "no_ocr"):  # OCR on a GPU costs a fraction of OCR on the cores
            ocr = f"{option(self.config, 'ocr')}@{option(self.config, 'ocr_device')}"
        return f"{CACHE_KEY}/{ocr}"

    def _costs(self):
        """Seconds measured on earlier runs (pytest's cache), for the scheduler."""
        from .scheduling import Costs

        cache = getattr(self.config, "cache", None)
        return Costs.from_json(cache.get(self._costs_key, None)) if cache is not None else Costs()

    def _record_costs(self) -> None:
        """Controller: keep this run's seconds per case, model load and reference pass for the next
        run's scheduler. A case's own work is its stages other than those two and ``device_init``,
        which every worker pays once whatever it runs."""
        from .scheduling import Costs

        cache = getattr(self.config, "cache", None)
        measured = Costs()
        for r in self.results:
            if r.error or not r.stage_seconds:
                continue
            stages = dict(r.stage_seconds)
            stages.pop("device_init", None)
            for costs, key, stage in ((measured.model, r.model, "model_load"),
                                      (measured.reference, f"{r.model}/{r.dataset}", "uncompressed_pass")):
                seconds = stages.pop(stage, 0.0)
                if seconds:
                    costs[key] = max(seconds, costs.get(key, 0.0))
            measured.case[r.case_id] = sum(stages.values())
        if cache is not None and measured.case:
            cache.set(self._costs_key, self._costs().updated(measured).to_json())

    # -- worker side ---------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from .engine import Engine

            worker = int(self.worker_id.removeprefix("gw")) if self.worker_id else 0
            _share_cpu_threads()
            data = option(self.config, "data")
            self._engine = Engine(EngineSettings(
                data_root=paths.data_root(self._path(data) if data else None),
                ocr_engine=None if option(self.config, "no_ocr") else option(self.config, "ocr"),
                ocr_device=option(self.config, "ocr_device"),
                ocr_workers=self.ocr_workers,
                export_dir=self._export_dir(),
                device_override=self.device_override,
                worker_index=worker,
            ))
            if self.worker_id is None:  # an xdist worker cannot write to the controller's terminal
                self._engine.progress = self.progress
            self._engine.interval_resamples = self.thresholds.intervals.resamples
            if self.thresholds.timing_noise.retime or self.config.getoption("evalsuite_retime_noisy", False):
                self._engine.retime_noisy = self.thresholds.timing_noise.reasons
        return self._engine

    def progress(self, message: str) -> None:
        """A line on the terminal while a long stage runs (model load, OCR of a dataset's
        originals), printed past pytest's output capture."""
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            reporter.ensure_newline()
            reporter.write_line(f"evalsuite: {message}")

    def prepare(self, items: list[pytest.Item]) -> None:
        """Cases collected, on a process that runs them: start the OCR pool now, so that its processes
        load their models while this one waits for its first case (under xdist, for the other workers'
        collections and the controller's plan) and loads its model."""
        if not self.runs_cases or self.config.getoption("collectonly"):
            return
        if any("case" in getattr(item, "fixturenames", ()) for item in items):
            self.engine.start_ocr()

    def _export_dir(self) -> Path | None:
        export = option(self.config, "export")
        if not export:
            return None
        path = self._path(export) / self.run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def evaluate(self, case: matrix.CaseSpec, node: pytest.Item) -> CaseResult:
        """Run one case, attach its result to the test report, check its thresholds."""
        if case.model.needs_gpu and not _cuda_available() and self.device_override != "cpu":
            pytest.skip(f"{case.id} needs CUDA (model {case.model.id}); run it with -m gpu on a GPU host")
        runlog.capture_third_party_logs()  # libraries imported since the last case may have added some
        try:
            result = self.engine.evaluate(case)
        except DatasetUnavailable as exc:
            self._annotate(_empty_result(case), [])
            pytest.skip(str(exc))
        except Exception as exc:
            failed = _empty_result(case)
            failed.error = f"{type(exc).__name__}: {exc}"
            node.user_properties.append((RESULT_PROPERTY, failed.to_json()))
            self._annotate(failed, [])
            raise
        result.env["worker"] = self.worker_id or "main"  # which xdist worker ran it (benchmarks.scaling)
        self.config.hook.pytest_evalsuite_result(result=result, case=case)
        from .vlm.case import not_applicable as vlm_not_applicable  # answer KPIs: VLM cases only, real weights

        result.breaches = self.thresholds.check(result.kpis, case.model.id, case.method, case.dataset.id,
                                                case.id, not_applicable(result.kpis) | vlm_not_applicable(result),
                                                result.intervals)
        _explain_missing_samples(result)
        scored = sample_counts(result.samples).scored
        if scored < self.thresholds.intervals.min_samples:  # said, not failed: the verdict is partly luck
            result.labels.append(FEW_SAMPLES)
            result.env["few_samples"] = (f"{scored} samples scored, fewer than min_samples = "
                                         f"{self.thresholds.intervals.min_samples}: wide intervals")
        noisy = self.thresholds.timing_noise.reasons(result.kpis)
        if noisy:  # a flag for the reader, not a verdict: the limits were checked as measured
            result.labels.append(NOISY)
            result.env["noisy"] = "; ".join(noisy)
        node.user_properties.append((RESULT_PROPERTY, result.to_json()))
        self._annotate(result, self.engine.last_artifacts)
        return result

    def _annotate(self, result: CaseResult, artifacts) -> None:
        """Allure labels, one step per KPI and the worst samples, when allure-pytest is active."""
        if self.allure_dir:
            from .report import allure

            limits = self.thresholds.limits_for(result.model, result.method, result.dataset, result.case_id)
            allure.annotate(result, limits, artifacts)

    def assert_passed(self, result: CaseResult) -> None:
        __tracebackhide__ = True  # the breach list is the message; the harness frames are noise
        if result.breaches:
            lines = "\n".join(f"  - {b}" for b in result.breaches)
            raise KPIBreachError(f"KPI breach in {result.case_id} ({len(result.breaches)}):\n{lines}")

    # -- controller side -------------------------------------------------------------------
    def collect(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        self.first_case_start = min(report.start, self.first_case_start or report.start)
        self.last_case_stop = max(report.stop, self.last_case_stop or report.stop)
        for name, value in report.user_properties:
            if name == RESULT_PROPERTY:
                self.results.append(CaseResult.from_json(value))
                if self.is_controller:  # on disk before the next case: a run cut short keeps it
                    self.journal.append(self.run_info(), self.results[-1])

    @property
    def journal(self):
        """Controller: the run's spool, written case by case (:mod:`evalsuite.sinks.journal`)."""
        if self._journal is None:
            from .sinks import Journal, spool_folder
            from .sinks.journal import fallback_folders

            folders = [spool_folder(self.config), *fallback_folders(option(self.config, "spool_fallback"))]
            self._journal = Journal(folders, self.run_id)
        return self._journal

    def run_info(self) -> RunInfo:
        if self._run_static is None:  # what does not change during the run, looked up once
            self._run_static = dict(git_commit=_git_commit(self.rootdir), host=socket.gethostname(),
                                    tenant_id=os.environ.get("EVALSUITE_TENANT", "default"),
                                    versions={**package_versions(), **({"shard": self.shard} if self.shard else {})}, seed=self.defaults()["seed"])
        return RunInfo(run_id=self.run_id, started_at=self.started_at, gpu=_gpu_summary(self.results),
                       **self._run_static)

    def finish(self) -> bool:
        """Controller only: hand every collected result to the sinks; False when their rows could not
        be kept anywhere (the store and every spool folder failed)."""
        if not self.is_controller:
            return True
        kept = True
        run = self.run_info()
        self._record_costs()
        if self.results:
            from .sinks import ROWS_LOST, write_results

            lines = write_results(self.config, run, self.results, self.journal)
            self.outcomes.extend(lines)
            kept = not any(ROWS_LOST in line for line in lines)
            if self.shard and not option(self.config, "run_id"):
                self.outcomes.append(f"evalsuite: shard {self.shard} wrote run {self.run_id} on its own: give every "
                                     "shard the same --evalsuite-run-id to read them as one run")
        if self.allure_dir:
            from .report import allure

            allure.write_environment(self.allure_dir, run, self.results)
            self.outcomes.append(f"evalsuite Allure results: {self.allure_dir} "
                                 f"(HTML: allure generate {self.allure_dir} -o allure-report)")
        return kept

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()


def _share_cpu_threads() -> None:
    """Under xdist, give each worker its share of the cores: N workers x all-core thread pools
    oversubscribe the CPU and slow model loading and CPU-side work. Pinning each worker to its own
    cores as well was measured and gained nothing (docs/performance.md, "GPU gate")."""
    import torch

    if xdist_workers() > 1:
        torch.set_num_threads(cores_per_worker())


def _process_start_time() -> float:
    """When this process started (epoch seconds), from /proc where there is one; else now."""
    import time

    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            started_after_boot = int(fh.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - started_after_boot)
    except (OSError, ValueError, IndexError, AttributeError):
        return time.time()


def _check_data_store(config: pytest.Config, rootdir: Path) -> None:
    """A dataset store that was asked for explicitly must exist.

    "Explicitly" means ``$EVALSUITE_DATA`` or ``--evalsuite-data`` on the command line: a
    mistyped path there is a usage error (exit 4), not a run that skips every case of the store
    and passes. The ini value (``evalsuite_data`` in pytest.ini, the project's usual mount
    point, e.g. ``../shared/datasets``) is a default location: a clone without it still runs,
    and the cases that need the store are skipped with the reason. A store that exists but lacks
    one dataset's folder skips that dataset's cases either way (a store may hold some datasets).
    """
    # relative paths as the engine resolves them: the variable from the working directory, the option from the rootdir
    for source, value, base in (("EVALSUITE_DATA", os.environ.get("EVALSUITE_DATA"), Path.cwd()),
                                ("--evalsuite-data", config.getoption("evalsuite_data", None), rootdir)):
        if not value:
            continue
        path = Path(value).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_dir():
            raise pytest.UsageError(f"{source}={value}: the dataset store {path} does not exist "
                                    f"(or is not a folder); fix the path, or unset it to use the default location")
        return  # EVALSUITE_DATA wins over the option (evalsuite.paths.data_root)


def _explain_missing_samples(result: CaseResult) -> None:
    """Breaches caused by samples that could not be scored say so: a KPI missing because every
    sample failed, and the share of scored samples, name the failed samples and why."""
    counts = sample_counts(result.samples)
    if not counts.failed:
        return
    for breach in result.breaches:
        if breach.value is None and not counts.scored and not counts.skipped:
            breach.reason = counts.why_missing()
        elif breach.kpi == "scored_share":
            breach.reason = counts.failed_text()


def _empty_result(case: matrix.CaseSpec) -> CaseResult:
    return CaseResult(case.id, case.model.id, case.method, dict(case.params), case.dataset.id)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def option(config: pytest.Config, name: str):
    """``--evalsuite-NAME`` if given, else the ``evalsuite_NAME`` ini value."""
    value = config.getoption(f"evalsuite_{name}", None)
    if value in (None, [], ""):
        try:
            value = config.getini(f"evalsuite_{name}")
        except ValueError:
            value = None
    return value


def _count(value, key: str) -> int:
    """A non-negative count from an option or ini value, else a usage error naming ``key``."""
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = -1
    if count < 0:
        raise pytest.UsageError(f"{key} = {value!r}: expected a count (0: the default)")
    return count


def shard_label(config: pytest.Config) -> str | None:
    """``GROUP/SPLITS`` of a pytest-split run (``--splits 3 --group 2`` -> ``"2/3"``), else None.
    Every shard of a run writes under one run id; the label tells their rows apart."""
    splits, group = getattr(config.option, "splits", None), getattr(config.option, "group", None)
    return f"{group}/{splits}" if splits and group else None


def _new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _git_commit(root: Path) -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit if re.fullmatch(r"[0-9a-f]{40}", commit) else "unknown"  # not a checkout, or no commit yet


def _gpu_summary(results: list[CaseResult]) -> str:
    """The GPUs the cases ran on, as the workers reported them (the controller never touches CUDA:
    initialising it there would delay the gate's end).

    >>> r = CaseResult("c", "m", "none", {}, "d", env={"device": "cuda:1", "gpu_name": "GPU-X"})
    >>> _gpu_summary([r, CaseResult("c", "m", "none", {}, "d", env={"device": "cuda:0", "gpu_name": "GPU-X"})])
    '2x GPU-X'
    """
    gpus = {(r.env["device"], r.env["gpu_name"]) for r in results if "gpu_name" in r.env}
    if gpus:
        return f"{len(gpus)}x " + ", ".join(sorted({name for _, name in gpus}))
    return f"none (CPU: {platform.processor() or platform.machine()})"


def package_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("torch", "timm", "transformers", "open_clip_torch", "rapidocr", "onnxruntime",
                 "paddleocr", "evalsuite"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions
