"""The gate on one worker against N: wall times, the speed-up, and where the difference goes.

    python -m benchmarks.scaling [--workers N] [--no-warmup] [--dir DIR] [-- PYTEST ARGS]

Runs the gate (``pytest cases -m gpu`` unless PYTEST ARGS are given) as
``pytest -n K --dist worksteal`` three times: a warm-up on N workers, not counted
(it compiles Triton's kernels, and fills the file cache and, where Python keeps
it, the bytecode cache, so a first run on a fresh machine is slower than the
next: see docs/performance.md), then on one worker, then on N. Each run gets a
fresh OCR cache, so every image is read, while the converted model weights are shared. All runs
share one pytest cache, so the N-worker run plans with the one-worker run's
measured costs (:mod:`evalsuite.scheduling`). Results are spooled under DIR.

Printed per run: the wall time, split into before the first case, cases and
after the last case (the summary line of the run), the stage seconds summed
over the cases, and the busiest worker's. Then the speed-up, and what a perfect
split would take: the one-worker run's cases divided among N workers, except
what every worker pays once (CUDA start, model loads), which each pays in full;
and the stage seconds of both runs side by side, where a second worker adds work.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from evalsuite.paths import cache_dir
from evalsuite.report.terminal import RUN_PHASES
from evalsuite.sinks import spool

ONCE_PER_WORKER = ("device_init", "model_load")  # stages a worker pays before its first case of a model


@dataclass
class Run:
    """One pytest run: its wall time, the summary line's split, and per-case stage seconds by worker."""

    name: str
    workers: int
    wall: float
    returncode: int
    split: tuple[float, float, float] | None  # before the first case, cases, after the last case
    stages: list[tuple[str, dict[str, float]]] = field(default_factory=list)  # (worker, stage seconds)

    def stage_totals(self) -> Counter:
        totals = Counter()
        for _, stages in self.stages:
            totals.update(stages)
        return totals

    def busiest(self) -> float:
        """Seconds of stages on the worker that had the most."""
        per_worker = Counter()
        for worker, stages in self.stages:
            per_worker[worker] += sum(stages.values())
        return max(per_worker.values(), default=0.0)


def perfect_split(one: Run, workers: int) -> float | None:
    """Seconds the one-worker run would take on ``workers``: its time around the cases as it was,
    the cases' stage seconds divided among the workers except :data:`ONCE_PER_WORKER`, paid by each.

    >>> run = Run("one", 1, 110.0, 1, (3.0, 105.0, 2.0), [("gw0", {"model_load": 4.0, "ocr": 60.0}),
    ...                                                    ("gw0", {"ocr": 40.0, "device_init": 1.0})])
    >>> perfect_split(run, 2)  # 3 + 2 around the cases, 5 paid by each, 100 split in two
    60.0
    """
    if one.split is None:
        return None
    totals = one.stage_totals()
    once = sum(totals.get(stage, 0.0) for stage in ONCE_PER_WORKER)
    return one.split[0] + one.split[2] + once + (sum(totals.values()) - once) / workers


def run_gate(name: str, workers: int, pytest_args: list[str], work: Path, models: Path) -> Run:
    """``pytest -n workers`` with a fresh OCR cache (the model cache linked in), spooled results."""
    root = work / f"cache_{name}"
    root.mkdir(parents=True)
    (root / "models").symlink_to(models, target_is_directory=True)
    spool_dir = work / f"spool_{name}"
    command = [sys.executable, "-m", "pytest", *pytest_args, "-n", str(workers), "--dist", "worksteal",
               "-o", f"cache_dir={work / 'pytest_cache'}", "--evalsuite-dsn", f"spool://{spool_dir}"]
    log = work / f"{name}.log"
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "EVALSUITE_CACHE": str(root)})
    wall = time.perf_counter() - start
    found = RUN_PHASES.search(log.read_text(encoding="utf-8", errors="replace"))
    run = Run(name, workers, wall, done.returncode, tuple(float(v) for v in found.groups()[1:]) if found else None)
    for path in sorted(spool_dir.glob("*.jsonl")):
        for _, results in spool.load(path):
            run.stages.extend((result.env.get("worker", "?"), result.stage_seconds) for result in results)
    return run


def report(runs: list[Run], workers: int) -> str:
    lines = [f"{'run':<8} {'workers':>7} {'wall s':>7} {'before':>7} {'cases':>7} {'after':>6} "
             f"{'stages s':>9} {'busiest':>8}  exit"]
    for run in runs:
        split = [f"{v:.1f}" for v in run.split] if run.split else ["-"] * 3
        lines.append(f"{run.name:<8} {run.workers:>7} {run.wall:>7.1f} {split[0]:>7} {split[1]:>7} {split[2]:>6} "
                     f"{sum(run.stage_totals().values()):>9.1f} {run.busiest():>8.1f}  {run.returncode}")
    one, many = next(r for r in runs if r.name == "one"), next(r for r in runs if r.name == "many")
    ideal = perfect_split(one, workers)
    lines.append(f"speed-up on {workers} workers: {one.wall / many.wall:.2f}x"
                 + (f"; a perfect split would take {ideal:.1f} s ({one.wall / ideal:.2f}x), each worker "
                    f"paying {', '.join(ONCE_PER_WORKER)} in full" if ideal else ""))
    lines.append(f"{'stage':<20} {'1 worker':>9} {f'{workers} workers':>10} {'more':>7}")
    a, b = one.stage_totals(), many.stage_totals()
    for stage in sorted(set(a) | set(b), key=lambda s: -b.get(s, 0.0)):
        lines.append(f"{stage:<20} {a.get(stage, 0.0):>9.1f} {b.get(stage, 0.0):>10.1f} "
                     f"{b.get(stage, 0.0) - a.get(stage, 0.0):>+7.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, pytest_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="workers of the second run (default: %(default)s)")
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up run")
    parser.add_argument("--dir", type=Path, help="where logs, caches and spooled results go (default: a new temporary folder)")
    args = parser.parse_args(own)
    if args.workers < 2:
        parser.error("--workers: at least 2")
    work = args.dir or Path(tempfile.mkdtemp(prefix="evalsuite-scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    models = cache_dir("models")  # the converted weights, shared by every run
    plan = ([] if args.no_warmup else [("warm-up", args.workers)]) + [("one", 1), ("many", args.workers)]
    runs = []
    for name, workers in plan:
        print(f"{name}: pytest -n {workers} ...", file=sys.stderr, flush=True)
        runs.append(run_gate(name, workers, pytest_args or ["cases", "-m", "gpu"], work, models))
    print(report(runs, args.workers))
    notes = {line for run in runs for line in (work / f"{run.name}.log").read_text(errors="replace").splitlines()
             if "has no compiled bytecode" in line}  # evalsuite.report.terminal.uncompiled_imports
    for line in sorted(notes):
        print(line)
    print(f"logs, caches and spooled results: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
