"""Research benchmarks of evalsuite's own machinery, kept outside the installed package.

Run from a checkout of the repository (the repository root on ``sys.path``)::

    python -m benchmarks.kernels merge-step --device cuda --dtype float16   # kernel-level diagnoses
    python -m benchmarks.scaling --workers 2                                # the gate on 1 worker vs N
    python -m benchmarks.divprune                                           # DivPrune's kernel per warp count

What users run stays in the package: ``python -m evalsuite.bench`` (latency and
throughput of every method). Figures belong in docs/performance.md.
"""
