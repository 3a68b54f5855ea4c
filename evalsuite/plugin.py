"""pytest glue: every hook is a few lines that delegate to :class:`EvalSession`.

Loaded through the ``pytest11`` entry point. Options live in one group with
one prefix (``--evalsuite-*``) and have ini twins (``evalsuite_*``) so a
project pins its defaults in ``pytest.ini``.

Under pytest-xdist the controller's hooks import no torch (see
:mod:`evalsuite.distribution`): ``-n auto`` asks the CUDA driver for the GPUs
(:mod:`evalsuite.cuda_probe`), and what needs torch is checked by the workers.
"""

from __future__ import annotations

import pytest

from .cuda_probe import visible_gpus
from .distribution import runs_cases, worker_usage_error
from .session import EvalSession
from .settings import OCR_DEVICES

SESSION_KEY = pytest.StashKey[EvalSession]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("evalsuite", "vision-token compression gate")
    group.addoption("--evalsuite-matrix", action="append", default=[], metavar="TOML",
                    help="case matrix file(s); repeatable (ini: evalsuite_matrix)")
    group.addoption("--evalsuite-thresholds", metavar="TOML", help="KPI limits (ini: evalsuite_thresholds)")
    group.addoption("--evalsuite-data", metavar="DIR",
                    help="external dataset store (SROIE, photos); env EVALSUITE_DATA wins (ini: evalsuite_data)")
    group.addoption("--evalsuite-ocr", metavar="ENGINE", help="OCR engine: rapidocr (default) or paddleocr")
    group.addoption("--evalsuite-no-ocr", action="store_true", help="skip OCR KPIs")
    group.addoption("--evalsuite-ocr-workers", metavar="N", type=int,
                    help="OCR pool processes per worker (default: one per core on the CPU, 8 per GPU; "
                         "ini: evalsuite_ocr_workers)")
    group.addoption("--evalsuite-ocr-device", choices=OCR_DEVICES,
                    help="where OCR runs: auto (default) = the worker's GPU when its cases run on one "
                         "(ini: evalsuite_ocr_device)")
    group.addoption("--evalsuite-export", metavar="DIR", help="write per-case .npz token plans and images here")
    group.addoption("--evalsuite-dsn", metavar="DSN",
                    help="ClickHouse DSN; env EVALSUITE_CLICKHOUSE_DSN; default: embedded chDB")
    group.addoption("--evalsuite-run-id", metavar="ID", help="run id recorded with every row")
    group.addoption("--evalsuite-device", metavar="DEVICE", choices=["cpu", "cuda"],
                    help="run every case on this device, whatever its matrix says (e.g. the GPU matrix on CPU)")
    group.addoption("--evalsuite-retime-noisy", action="store_true",
                    help="time a case whose timing looks noisy once more (thresholds.toml: [timing_noise] retime)")
    group.addoption("--evalsuite-scheduler", choices=["affinity", "xdist"],
                    help="with --dist worksteal: affinity (default) plans cases by model and measured cost; "
                         "xdist keeps xdist's own (ini: evalsuite_scheduler)")
    for name, kind, default, text in [
        ("evalsuite_matrix", "args", ["cases/default.toml"], "case matrix files"),
        ("evalsuite_thresholds", "string", "thresholds.toml", "KPI limits file"),
        ("evalsuite_data", "string", "", "external dataset store"),
        ("evalsuite_ocr", "string", "rapidocr", "OCR engine"),
        ("evalsuite_ocr_device", "string", "auto", "where OCR runs: auto, cpu or cuda"),
        ("evalsuite_ocr_workers", "string", "0", "OCR pool processes per worker, 0: the default"),
        ("evalsuite_export", "string", "", "export directory"),
        ("evalsuite_dsn", "string", "", "ClickHouse DSN"),
        ("evalsuite_run_id", "string", "", "run id"),
        ("evalsuite_no_ocr", "bool", False, "skip OCR KPIs"),
        ("evalsuite_scheduler", "string", "affinity", "xdist scheduler under --dist worksteal"),
        ("evalsuite_spool_fallback", "string", "",
         "folders for the spool when its own cannot be written (os.pathsep-separated; env EVALSUITE_SPOOL_FALLBACK); "
         "the system's temporary folder comes last"),
    ]:
        parser.addini(name, text, type=kind, default=default)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs CUDA; `pytest -m gpu` is the pull-request gate")
    config.addinivalue_line("markers", "evalsuite: an evaluation case from the case matrix")
    _refuse_gpu_without_cuda(config)
    session = config.stash[SESSION_KEY] = EvalSession(config)
    _sigterm_as_ctrl_c(config)
    config.pluginmanager.register(_ReportHooks(session), "evalsuite-reports")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(), "evalsuite-xdist")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        cases = metafunc.config.stash[SESSION_KEY].cases
        marks = lambda c: [pytest.mark.evalsuite] + ([pytest.mark.gpu] if c.model.needs_gpu else [])  # noqa: E731
        metafunc.parametrize("case", [pytest.param(c, id=c.id, marks=marks(c)) for c in cases])


@pytest.fixture(scope="session")
def evalsuite(request: pytest.FixtureRequest) -> EvalSession:
    """The session object: ``evalsuite.evaluate(case, request.node)`` runs a case."""
    return request.config.stash[SESSION_KEY]


@pytest.hookimpl(trylast=True)  # after xdist's worker has sent its collection to the controller
def pytest_collection_finish(session: pytest.Session) -> None:
    session.config.stash[SESSION_KEY].prepare(session.items)


def pytest_sessionfinish(session: pytest.Session) -> None:
    _restore_sigterm(session.config)  # a second SIGTERM while results are written ends the run; they are spooled
    if not session.config.stash[SESSION_KEY].finish() and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.INTERNAL_ERROR  # the rows could not be kept: the gate must not pass


_SIGTERM_KEY = pytest.StashKey[object]()


def _sigterm_as_ctrl_c(config: pytest.Config) -> None:
    """SIGTERM (what CI sends to a cancelled or timed-out job) interrupts the run as Ctrl-C does:
    pytest ends it, the KPI table is printed, the finished cases' rows are written and the exit code
    is pytest's for an interrupted run. A handler someone else installed is left as it is."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    config.stash[_SIGTERM_KEY] = signal.signal(signal.SIGTERM, interrupt)
    config.add_cleanup(lambda: _restore_sigterm(config))


def _restore_sigterm(config: pytest.Config) -> None:
    import signal

    previous = config.stash.get(_SIGTERM_KEY, None)
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
        del config.stash[_SIGTERM_KEY]


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    from .report.terminal import write_summary

    write_summary(terminalreporter, config.stash[SESSION_KEY])


def pytest_unconfigure(config: pytest.Config) -> None:
    if SESSION_KEY in config.stash:
        config.stash[SESSION_KEY].close()


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto`` for the GPU gate: one worker per visible GPU (xdist would start one per core).
    Module-level: xdist asks before ``pytest_configure``. Asked of the CUDA driver: this is the
    controller, which imports no torch (the driver answers at once; torch's import would delay
    every worker's start, see docs/performance.md)."""
    if _selects_gpu_cases_only(config):
        return max(1, visible_gpus().count)
    return None


class _XdistHooks:
    """Registered only when pytest-xdist is installed."""

    def pytest_configure_node(self, node) -> None:
        node.config.stash[SESSION_KEY].configure_node(node)

    def pytest_xdist_make_scheduler(self, config: pytest.Config, log):
        return config.stash[SESSION_KEY].make_scheduler(log)

    @pytest.hookimpl(tryfirst=True)
    def pytest_testnodedown(self, node, error) -> None:
        """A worker that refused its configuration (a usage error: a bad method parameter in a matrix
        file or ``-m gpu`` without CUDA, which only workers check) ends the run with its message, as a
        run without xdist does; xdist would print its traceback and restart it, to fail alike, up to
        8 times."""
        message = worker_usage_error(error)
        if message is not None:
            raise pytest.UsageError(message)


class _ReportHooks:
    """Test reports reach the controller here (xdist ships them from the workers)."""

    def __init__(self, session: EvalSession):
        self.session = session

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.session.collect(report)


def _selects_gpu_cases_only(config: pytest.Config) -> bool:
    """True when ``-m`` asks for GPU cases specifically (``-m gpu``) and the run is not moved to the CPU."""
    markexpr = config.getoption("markexpr", "") or ""
    if not markexpr or config.getoption("evalsuite_device", None) == "cpu":  # asked for CPU explicitly
        return False
    from _pytest.mark.expression import Expression

    expression = Expression.compile(markexpr)
    with_gpu = expression.evaluate(lambda name, **kw: name in ("gpu", "evalsuite"))
    without_gpu = expression.evaluate(lambda name, **kw: name == "evalsuite")
    return with_gpu and not without_gpu


def _refuse_gpu_without_cuda(config: pytest.Config) -> None:
    """`pytest -m gpu` on a machine without CUDA is a usage error, not a silent all-skip. Checked where
    the cases run, with torch: an xdist controller reports its workers' refusal
    (:meth:`_XdistHooks.pytest_testnodedown`) rather than delay every run to check it too."""
    if _selects_gpu_cases_only(config) and runs_cases(config):
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError(
                f"-m {config.getoption('markexpr')!r} selects GPU cases but CUDA is not available on this machine "
                f"(torch {torch.__version__}); run on a GPU host, select CPU cases with -m 'not gpu', "
                f"or run the GPU matrix on the CPU with --evalsuite-device cpu")
