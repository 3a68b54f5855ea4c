"""Benchmark: compression-step latency and encoder throughput per method.

Prints one table row per model x image size x batch x method: images/s,
speedup against the unpatched model, the ideal speedup implied by the
method's token schedule (FLOP model) and their ratio, the compression
step's own time per forward (p50/p95 from CUDA events around every hook,
read once per forward; ``sync p95`` the same with the device synchronised
around every hook, an upper bound: see ``StepTimer``), and on CUDA the speedup of
a CUDA-graph replay of the compressed forward (launch overhead
removed): ``g.ratio`` is its speedup over the graphed unpatched path divided
by the ideal speedup, ``g.extra`` the time per forward beyond a perfect
implementation of the token schedule (graphed unpatched time / ideal), an
upper bound on all compression work of one forward.
Figures from randomly initialised models are labelled ``random-weights``.
Forwards are timed without the token plans (``plans=False``): where each input
patch went is the evaluation's bookkeeping, not the method's work.

    python -m evalsuite.bench --models dinov2_s14 --sizes 224 --batches 1    # CPU
    python -m evalsuite.bench --device cuda --dtype float16 --batches 1,64   # GPU
    python -m evalsuite.bench --method tome:merge_factor=0.5,proportional_attention=false  # one method

Each row times ``--repeats`` forwards (100 by default; with fewer, p95 rests on one or two of them).
"""

from __future__ import annotations

import argparse
import json
import time
import tomllib

import torch

from ..methods import build, spec_of
from ..metrics.flops import ideal_speedup
from ..metrics.latency import synchronize, timed_calls
from ..metrics.similarity import percentile
from ..models import MODELS
from ..patch.runner import StepTimer

METHODS = [
    ("tome", {"r": 0}),
    ("tome", {"merge_factor": 0.5}),
    ("tome", {"merge_factor": 0.7}),
    ("tome", {"merge_factor": 0.5, "proportional_attention": False}),
    ("v2drop", {"keep": 0.7}),
    ("v2drop", {"keep": 0.5}),
    ("avit", {"sparsity": 0.3}),
    ("avit", {"sparsity": 0.5}),
    ("random", {"keep": 0.7}),
    ("downscale", {"keep": 0.7}),
]


WARM_SECONDS = 1.0  # unpatched forwards before the first timed row of a batch (GPU clocks, lazy inits)


def _warm(fn, pixels, seconds: float) -> None:
    """Call ``fn(pixels)`` for at least ``seconds``: a fixed count of warm-up calls at batch 1 ends
    before an idle GPU has reached its clocks, and the first timed row then reads slow."""
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(pixels)
    synchronize(pixels.device)


def _timed(fn, pixels, warmup: int, repeats: int) -> list[float]:
    return [seconds for seconds, _ in timed_calls(fn, pixels, warmup, repeats)]


def _step_times(adapter, comp, pixels, warmup: int, repeats: int, mode: str) -> list[float]:
    """Compression-step seconds of ``repeats`` compressed forwards, timed by a ``StepTimer`` in ``mode``."""
    times = []
    for i in range(warmup + repeats):
        timer = StepTimer(enabled=True, mode=mode)
        adapter.compressed(pixels, comp, timer, plans=False)
        if i >= warmup:
            times.append(timer.seconds)
    return times


def _graphed_time(adapter, comp, pixels, warmup, repeats) -> float | None:
    """Median time of a CUDA-graph replay of the compressed forward (None on CPU or if capture fails)."""
    if not pixels.is_cuda:
        return None
    try:
        forward = adapter.graphed(comp, pixels, plans=False)
    except Exception as exc:  # e.g. a method whose RNG cannot be captured
        print(f"  (no CUDA graph for {comp.id_part}: {type(exc).__name__}: {exc})")
        return None
    return percentile(_timed(forward, pixels, warmup, repeats), 50)


def _graphed_columns(base: float | None, graphed: float | None, ideal: float) -> dict:
    """Graph replay vs graph replay of the unpatched path: speedup / ideal, and the time
    spent beyond a perfect implementation of the token schedule (an upper bound on the
    compression work of one forward)."""
    if not (base and graphed):
        return {"graphed_ratio": None, "graphed_overhead_ms": None}
    return {"graphed_ratio": (base / graphed) / ideal, "graphed_overhead_ms": (graphed - base / ideal) * 1e3}


def profile(model, size, batch, device, dtype, method, params) -> None:
    """Top CUDA kernels of one compressed forward (diagnosis aid)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    adapter = MODELS.get(model)(model, image_size=size).to(device, getattr(torch, dtype))
    comp = build(method, params, adapter.num_layers)
    pixels = torch.randn(batch, 3, size, size, device=device, dtype=getattr(torch, dtype))
    for _ in range(3):
        adapter.compressed(pixels, comp)
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        adapter.compressed(pixels, comp)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))


def run(models, sizes, batches, device, dtype, warmup, repeats, methods=METHODS) -> list[dict]:
    rows = []
    for model_name in models:
        for size in sizes:
            adapter = MODELS.get(model_name)(model_name, image_size=size).to(device, getattr(torch, dtype))
            label = ",".join(adapter.labels)
            for batch in batches:
                torch.manual_seed(0)
                pixels = torch.randn(batch, 3, size, size, device=device, dtype=getattr(torch, dtype))
                _warm(adapter.reference, pixels, WARM_SECONDS)
                base = percentile(_timed(adapter.reference, pixels, warmup, repeats), 50)
                graphed_base = _graphed_time(adapter, build("none", {}, adapter.num_layers), pixels, warmup, repeats)
                rows.append(dict(model=model_name, size=size, batch=batch, dtype=dtype, method="unpatched",
                                 images_per_s=batch / base, speedup=1.0, ideal=1.0, ratio=1.0,
                                 comp_p50_ms=0.0, comp_p95_ms=0.0, sync_p95_ms=0.0, labels=label, graphed_ratio=1.0,
                                 graphed_overhead_ms=0.0))
                for name, params in methods:
                    comp = build(name, params, adapter.num_layers)
                    t = percentile(_timed(lambda px: adapter.compressed(px, comp, plans=False), pixels, warmup, repeats), 50)
                    comp_s, sync_s = (_step_times(adapter, comp, pixels, warmup, repeats, mode)
                                      for mode in ("events", "sync"))
                    ideal = ideal_speedup(comp.schedule(adapter.num_patches, adapter.num_prefix),
                                          adapter.num_patches, adapter.num_prefix, adapter.embed_dim)
                    graphed = _graphed_time(adapter, comp, pixels, warmup, repeats)
                    rows.append(dict(model=model_name, size=size, batch=batch, dtype=dtype, method=comp.id_part,
                                     images_per_s=batch / t, speedup=base / t, ideal=ideal,
                                     ratio=(base / t) / ideal,
                                     comp_p50_ms=percentile(comp_s, 50) * 1e3,
                                     comp_p95_ms=percentile(comp_s, 95) * 1e3,
                                     sync_p95_ms=percentile(sync_s, 95) * 1e3, labels=label,
                                     **_graphed_columns(graphed_base, graphed, ideal)))
                    print(_format(rows[-1]), flush=True)
            adapter = None  # free GPU memory before the next size
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    return rows


HEADER = (f"{'model':<16}{'size':>5}{'batch':>6}{'dtype':>9}  {'method':<15}{'img/s':>9}{'speedup':>9}"
          f"{'ideal':>7}{'ratio':>7}{'comp p50':>10}{'comp p95':>10}{'sync p95':>10}{'g.ratio':>9}{'g.extra':>10}  labels")


def _format(r: dict) -> str:
    return (f"{r['model']:<16}{r['size']:>5}{r['batch']:>6}{r['dtype']:>9}  {r['method']:<15}"
            f"{r['images_per_s']:>9.1f}{r['speedup']:>9.2f}{r['ideal']:>7.2f}{r['ratio']:>7.2f}"
            f"{r['comp_p50_ms']:>8.2f}ms{r['comp_p95_ms']:>8.2f}ms{r['sync_p95_ms']:>8.2f}ms"
            f"{_opt(r['graphed_ratio'], '.2f'):>9}{_opt(r['graphed_overhead_ms'], '.2f', 'ms'):>10}  {r['labels']}")


def _opt(value, spec: str, unit: str = "") -> str:
    return "-" if value is None else format(value, spec) + unit


def parse_method(spec: str) -> tuple[str, dict]:
    """``NAME[:KEY=VALUE,...]`` (values as in a matrix file: 0.5, 8, true) -> ``(name, params)``."""
    name, _, rest = spec.partition(":")
    name, params = name.strip(), {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            params[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            raise argparse.ArgumentTypeError(
                f"--method {spec}: {item!r} is not KEY=VALUE with a number or true/false") from None
    try:  # an unknown method or parameter fails here, before any model loads
        spec_of(name, params)
    except (KeyError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"--method {spec}: {exc.args[0] if exc.args else exc}") from None
    return name, params


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m evalsuite.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="dinov2_s14")
    parser.add_argument("--sizes", default="224")
    parser.add_argument("--batches", default="1")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--method", action="append", type=parse_method, metavar="NAME[:KEY=VALUE,...]",
                        help="a method to bench (repeatable; default: every method with usual parameters)")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--profile", metavar="METHOD:KEY=VALUE", help="print the top kernels of one method instead")
    args = parser.parse_args(argv)
    if args.profile:
        name, _, param = args.profile.partition(":")
        params = {k: float(v) for k, v in [param.split("=")]} if param else {}
        profile(args.models.split(",")[0], int(args.sizes.split(",")[0]), int(args.batches.split(",")[0]),
                args.device, args.dtype, name, params)
        return
    print(HEADER)
    rows = run(args.models.split(","), [int(s) for s in args.sizes.split(",")],
               [int(b) for b in args.batches.split(",")], args.device, args.dtype, args.warmup, args.repeats,
               args.method or METHODS)
    print("\n" + HEADER)
    for r in rows:
        print(_format(r))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
