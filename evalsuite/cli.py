"""The ``evalsuite`` command: ``ingest`` spool files, build the PoC ``report``, ``compare`` runs, ``query`` results.

``evalsuite baselines --model M --dataset D [--data DIR] [--limit N] [--out baselines/]``
writes the Stage A baselines of one model x dataset (:mod:`evalsuite.baselines`);
it needs no store.

Every subcommand talks to ClickHouse through :class:`ClickHouseSink`: ``--dsn``,
else ``$EVALSUITE_CLICKHOUSE_DSN``, else the embedded chDB directory
``<project root>/.evalsuite/chdb``. Passwords are read from the environment
only (``EVALSUITE_CLICKHOUSE_PASSWORD`` or the DSN in ``EVALSUITE_CLICKHOUSE_DSN``);
a ``--dsn`` that carries one is refused, since command lines end up in shell
history and process lists.

``evalsuite ingest`` takes spool files or directories of them; a file whose
rows all reached the store is moved to ``done/`` beside it (re-ingesting it is
harmless: rows already stored are skipped). Run it when no pytest session owns
the chDB directory: chDB lets one process at a time open it.

``evalsuite search --model M --dataset D [--method tome] [--lo --hi --steps]`` bisects each method's
main knob for its strongest setting that passes every threshold (:mod:`evalsuite.search`).

``evalsuite compare RUN_A RUN_B [--margin KPI=VALUE] [--markdown FILE]`` prints the KPI deltas of
the cases both runs hold (:mod:`evalsuite.report.compare`) and exits 1 on a regression, 2 when a
run id is not in the store.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from evalsuite.sinks import has_password, spool


def project_root(start: Path | None = None) -> Path:
    """The nearest directory at or above ``start`` (cwd) with a pyproject.toml or .git, else ``start``."""
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").exists() or (folder / ".git").exists():
            return folder
    return start


def _sink(args: argparse.Namespace):
    from evalsuite.sinks.clickhouse import ClickHouseSink

    root = project_root()
    return ClickHouseSink(args.dsn, chdb_dir=args.chdb_dir or root / ".evalsuite" / "chdb",
                          spool_dir=root / ".evalsuite" / "spool")


def _spool_files(paths: list[str]) -> list[Path]:
    files = []
    for p in map(Path, paths):
        files += sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    return files


def cmd_ingest(args: argparse.Namespace) -> int:
    sink, rc = _sink(args), 0
    missing = [p for p in args.spool if not Path(p).exists()]
    if missing:
        print(f"evalsuite ingest: no such spool file or folder: {', '.join(missing)}", file=sys.stderr)
        return 1
    files = _spool_files(args.spool)
    if not files:  # nothing pending: every run reached the store
        print(f"evalsuite ingest: nothing to ingest: no spool files (*.jsonl) in {', '.join(args.spool)}")
        return 0
    for path in files:
        try:
            written = skipped = replaced = 0
            runs, bad = spool.load_intact(path)
            for line in bad:  # e.g. the last line of a run killed while writing it
                print(f"{line}: not a spool line, left out (the file's other lines are ingested)", file=sys.stderr)
                rc = 1
            for run, cases in runs:
                counts = sink.insert(run, cases)
                written, skipped, replaced = (written + counts.written, skipped + counts.skipped,
                                              replaced + counts.replaced)
        except Exception as exc:  # keep the file; say why and go on with the next
            print(f"{path}: not ingested, kept: {sink.explain(exc)}", file=sys.stderr)
            rc = 1
            continue
        moved = "" if path.parent.name == spool.DONE_DIR else f"; moved to {spool.mark_done(path)}"
        again = f", replacing {replaced} rows of an earlier run with the same run id" if replaced else ""
        print(f"{path}: {written} rows written to {sink.where}, {skipped} already present or superseded"
              f"{again}{moved}")
    return rc


def cmd_report(args: argparse.Namespace) -> int:
    from evalsuite.report import poc
    from evalsuite.sinks.clickhouse import is_store_error

    sink = _sink(args)
    try:
        limits = poc.Limits(args.min_reduction, args.max_wer_drift, frozenset(args.drift_informational))
        points = poc.load_operating_points(args.operating_points)
        report = poc.generate(sink, args.out, limits, run_id=args.run_id, tenant_id=args.tenant, points=points)
    except LookupError as exc:
        print(f"evalsuite report: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if not is_store_error(exc):
            raise
        print(f"evalsuite report: {sink.explain(exc)}", file=sys.stderr)
        return 1
    print(f"{report.path} (run {report.run_id}, plot {report.plot.name})")
    print(report.recommendation.reason)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Exit 0: no regression; 1: a regression (for CI); 2: an unknown run, KPI or margin, or no store."""
    from evalsuite.registry import UnknownNameError
    from evalsuite.report import compare
    from evalsuite.sinks.clickhouse import is_store_error

    sink = _sink(args)
    try:
        margins = {}
        for spec in args.margin:
            kpi, sep, value = spec.partition("=")
            if not sep:
                raise ValueError(f"--margin {spec!r}: expected KPI=VALUE (e.g. feature_cosine_mean=0.005, "
                                 "encoder_ms_p50=20%)")
            margins[kpi.strip()] = compare.Margin.parse(value)
        rows_a, rows_b = compare.load_runs(sink, args.run_a, args.run_b)
        result = compare.compare(rows_a, rows_b, args.run_a, args.run_b, kpis=args.kpi or compare.DEFAULT_KPIS,
                                 margins=margins, resamples=args.resamples, seed=args.seed)
    except (compare.CompareError, UnknownNameError, ValueError) as exc:
        print(f"evalsuite compare: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not is_store_error(exc):
            raise
        print(f"evalsuite compare: {sink.explain(exc)}", file=sys.stderr)
        return 2
    print(result.text(every_kpi=args.all))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(result.markdown(), encoding="utf-8")
        print(f"markdown: {args.markdown}")
    return 1 if result.regressed else 0


def cmd_search(args: argparse.Namespace) -> int:
    """Exit 0 whether or not a method has a passing setting; 1: the dataset is unavailable; 2: bad arguments."""
    import socket
    from datetime import datetime, timezone

    from evalsuite import search
    from evalsuite.data.datasets import DATASETS, DatasetUnavailable
    from evalsuite.engine import Engine, EngineSettings
    from evalsuite.matrix import DTYPES, DatasetSpec, ModelSpec
    from evalsuite.models import MODELS
    from evalsuite.paths import data_root
    from evalsuite.registry import UnknownNameError
    from evalsuite.results import RunInfo
    from evalsuite.session import _git_commit, _new_run_id, package_versions
    from evalsuite.thresholds import Thresholds, ThresholdsError

    try:
        MODELS.get(args.model), DATASETS.get(args.dataset)
        methods = args.method or list(search.KNOBS)
        unknown = [m for m in methods if m not in search.KNOBS]
        if unknown:
            raise UnknownNameError("searchable method", unknown[0], list(search.KNOBS))
        if args.dtype not in DTYPES:
            raise ValueError(f"--dtype {args.dtype!r}: one of {', '.join(DTYPES)}")
        thresholds = Thresholds.load(args.thresholds)
    except (UnknownNameError, ThresholdsError, ValueError) as exc:
        print(f"evalsuite search: {exc}", file=sys.stderr)
        return 2
    model = ModelSpec(args.model, args.model, args.image_size, args.device, args.dtype)
    dataset = DatasetSpec(args.dataset, args.dataset, {"limit": args.limit} if args.limit else {})
    engine = Engine(EngineSettings(data_root=args.data or data_root(), ocr_engine=None if args.no_ocr else args.ocr,
                                   device_override=None if args.device == "auto" else args.device))
    run_id = args.run_id or f"search-{_new_run_id()}"
    settings = {"timing_repeats": args.timing_repeats}
    results, points = [], []
    try:
        results.append(search.check(thresholds, engine.evaluate(search.case_spec(model, dataset, "none", {}, settings))))
        for method in methods:
            point = search.search(engine.evaluate, thresholds, model, dataset, method, args.lo, args.hi, args.steps,
                                  settings, on_result=results.append)
            points.append(point)
            print(point.describe(), flush=True)
    except DatasetUnavailable as exc:
        print(f"evalsuite search: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.close()
    if "random-weights" in results[0].labels:
        print(f"note: {args.model} runs with random weights (label random-weights): these settings say nothing "
              "about the trained model")
    print(f"operating points: {search.write_points(args.out, points, run_id)}")
    run = RunInfo(run_id, datetime.now(timezone.utc).isoformat(timespec="seconds"), _git_commit(project_root()),
                  socket.gethostname(),
                  results[0].env.get("gpu_name", "none"), versions={**package_versions(), "search": "1"})
    print(f"probes (run {run_id}): {_sink(args).write(run, results)}")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    sink = _sink(args)
    try:
        names, rows = sink.select(args.sql)
    except Exception as exc:
        print(f"evalsuite query: {sink.explain(exc)}", file=sys.stderr)
        return 1
    print(format_table(names, rows, args.max_width))
    return 0


def cmd_baselines(args: argparse.Namespace) -> int:
    from evalsuite.baselines import compute_baselines, write_baselines
    from evalsuite.data.datasets import DatasetUnavailable
    from evalsuite.paths import data_root
    from evalsuite.registry import UnknownNameError

    root = args.data or data_root()  # an explicit --data wins over $EVALSUITE_DATA
    try:
        baselines = compute_baselines(args.model, args.dataset, root, image_size=args.image_size,
                                      limit=args.limit, ocr_engine=args.ocr)
    except (DatasetUnavailable, UnknownNameError) as exc:
        print(f"evalsuite baselines: {exc}", file=sys.stderr)
        return 1
    for path in write_baselines(args.out, args.model, args.dataset, baselines):
        print(path)
    failed = sum("error" in row for row in baselines.tokens + baselines.ocr)
    if failed:
        print(f"evalsuite baselines: {failed} row(s) carry an error (see the files)", file=sys.stderr)
    return 0


def format_table(names: list[str], rows: list[tuple], max_width: int = 60) -> str:
    """An aligned text table with a row count.

    >>> print(format_table(["a", "bb"], [(1, "x"), (22, None)]))
    a   bb
    --  ----
    1   x
    22  NULL
    (2 rows)
    """
    def cell(v: object) -> str:
        text = "NULL" if v is None else str(v)
        return text if len(text) <= max_width else text[: max_width - 3] + "..."

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    out = [line(names), line(["-" * w for w in widths])] + [line(r) for r in cells]
    return "\n".join(out + [f"({len(rows)} row{'s' * (len(rows) != 1)})"])


def build_parser() -> argparse.ArgumentParser:
    from evalsuite.report.poc import DEFAULT_MAX_WER_DRIFT, DEFAULT_MIN_REDUCTION_PCT, DEFAULT_OUT

    parser = argparse.ArgumentParser(prog="evalsuite", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument("--dsn", help="clickhouse://host:8123/db, https://..., chdb:///abs/dir "
                                     "(default: $EVALSUITE_CLICKHOUSE_DSN, else --chdb-dir)")
    store.add_argument("--chdb-dir", type=Path, help="embedded chDB directory (default: <project>/.evalsuite/chdb)")

    p = sub.add_parser("ingest", parents=[store], help="load spool files into ClickHouse")
    p.add_argument("spool", nargs="+", help="spool .jsonl files or directories of them")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("report", parents=[store], help="write the PoC report (markdown + Pareto PNG)")
    p.add_argument("--run-id", help="the run to report on (default: the latest)")
    p.add_argument("--tenant", help="only consider this tenant's runs when picking the latest")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT}")
    p.add_argument("--min-reduction", type=float, default=DEFAULT_MIN_REDUCTION_PCT,
                   help="token savings a candidate must keep, in %% (default: %(default)s)")
    p.add_argument("--max-wer-drift", type=float, default=DEFAULT_MAX_WER_DRIFT,
                   help="OCR WER drift ceiling, absolute (default: %(default)s)")
    p.add_argument("--drift-informational", action="append", default=[], metavar="DATASET",
                   help="a dataset whose OCR drift is not judged (thresholds: ocr_wer_drift = false); repeatable")
    p.add_argument("--operating-points", type=Path, default=Path("reports") / "operating_points.json",
                   help="evalsuite search's output, named and drawn when present (default: %(default)s)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", parents=[store], help="KPI deltas of run B against run A; exit 1 on a regression",
                       description="Per-case KPI deltas (B - A) of the cases both runs hold, with paired bootstrap "
                                   "intervals where the samples match. Exit 0: no regression, 1: a regression, "
                                   "2: an unknown run or bad arguments.")
    p.add_argument("run_a", metavar="RUN_A", help="the base run (e.g. main's)")
    p.add_argument("run_b", metavar="RUN_B", help="the run to judge (e.g. the pull request's)")
    p.add_argument("--margin", action="append", default=[], metavar="KPI=VALUE",
                   help="how far KPI may move the bad way: absolute (0.005) or relative to A (20%%); repeatable "
                        "(default: 20%% for timings, 1 point for percentages, 0.01 otherwise)")
    p.add_argument("--kpi", action="append", default=[], metavar="NAME",
                   help="compare these KPIs only; repeatable (default: the gated KPIs and timings)")
    p.add_argument("--markdown", type=Path, metavar="FILE", help="also write the comparison as markdown (a PR comment)")
    p.add_argument("--all", action="store_true", help="print every compared KPI, not only those that moved")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    p.set_defaults(func=cmd_compare)

    from evalsuite.search import DEFAULT_OUT as POINTS_OUT, DEFAULT_STEPS

    p = sub.add_parser("search", parents=[store], help="the strongest setting of each method that passes every threshold",
                       description="Bisects each method's main knob (tome merge_factor, v2drop/random/downscale keep, "
                                   "avit sparsity) on one model x dataset; the model, samples and reference pass are "
                                   "loaded once. Every probe is stored as one run; the operating points go to --out "
                                   "for the PoC report. A range with no passing setting is reported, exit 0.")
    p.add_argument("--model", required=True, help="model factory name, e.g. dinov2_s14")
    p.add_argument("--dataset", required=True, help="dataset name, e.g. samples, synthetic, sroie")
    p.add_argument("--method", action="append", default=[], help="repeatable (default: every searchable method)")
    p.add_argument("--lo", type=float, help="one end of the range, in the knob's units (default: per method)")
    p.add_argument("--hi", type=float, help="the other end (default: per method)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="bisection steps after both ends (default: %(default)s)")
    p.add_argument("--limit", type=int, help="only the first N samples")
    p.add_argument("--data", type=Path, help="external data store (default: $EVALSUITE_DATA)")
    p.add_argument("--image-size", type=int, default=224, help="encoder input size (default: %(default)s)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: %(default)s")
    p.add_argument("--dtype", default="float32", help="default: %(default)s")
    p.add_argument("--timing-repeats", type=int, default=10, help="timed forwards per probe (default: %(default)s)")
    p.add_argument("--thresholds", type=Path, default=Path("thresholds.toml"), help="default: %(default)s")
    p.add_argument("--ocr", default="rapidocr", help="OCR engine (default: %(default)s)")
    p.add_argument("--no-ocr", action="store_true", help="skip OCR KPIs (their limits are not checked)")
    p.add_argument("--run-id", help="run id of the stored probes (default: search-<time>)")
    p.add_argument("--out", type=Path, default=POINTS_OUT, help="operating points JSON (default: %(default)s)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("query", parents=[store], help="run SQL and print a table")
    p.add_argument("sql", help="e.g. \"SELECT method, avg(clip_score) FROM vision_compression_results GROUP BY method\"")
    p.add_argument("--max-width", type=int, default=60, help="truncate cells to this width")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("baselines", help="write Stage A baselines (uncompressed tokens, OCR) of a model x dataset",
                       description="See evalsuite/baselines.py for the rows of tokens_baseline.jsonl and "
                                   "ocr_baseline.jsonl.")
    p.add_argument("--model", required=True, help="model factory name, e.g. dinov2_s14")
    p.add_argument("--dataset", required=True, help="dataset name, e.g. samples, synthetic, sroie")
    p.add_argument("--data", type=Path, help="external data store (default: $EVALSUITE_DATA)")
    p.add_argument("--limit", type=int, help="only the first N samples")
    p.add_argument("--image-size", type=int, default=224, help="encoder input size (default: %(default)s)")
    p.add_argument("--ocr", default="rapidocr", help="OCR engine (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("baselines"),
                   help="writes <out>/<model>/<dataset>/*.jsonl (default: %(default)s)")
    p.set_defaults(func=cmd_baselines, dsn=None)  # no store involved
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dsn and has_password(args.dsn):
        parser.error("--dsn must not carry a password: set EVALSUITE_CLICKHOUSE_PASSWORD "
                     "(or put the whole DSN in EVALSUITE_CLICKHOUSE_DSN)")
    try:
        return args.func(args)
    except ValueError as exc:  # bad DSN scheme, unreadable spool line ...
        print(f"evalsuite {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
