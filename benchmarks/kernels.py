"""Kernel-level diagnoses behind the latency figures in docs/performance.md.

``merge-step``
    One ToMe step (:func:`evalsuite.methods.tome.merge.merge_step`, ``r`` as ToMe f0.5
    on 12 blocks) per input shape, eager and replayed from a CUDA graph by
    :func:`evalsuite.methods.graphs.replay_or_run`. Eager steps cost a roughly
    constant time in kernel launches; a replay costs the copies into the graph's
    buffers, which grow with the input. Reproduces the crossover behind
    ``GRAPH_MAX_ELEMENTS`` (steps with inputs up to that size are replayed from a
    CUDA graph) and the reasoning in its comment.
    The same for the fused step (:mod:`evalsuite.methods.tome.kernels`), and both
    steps' device time without launches. ``--profile SHAPE [--fused]`` lists a
    step's kernels.
``block-scaling``
    One encoder block of a registered model, its attention (SDPA at the model's
    head size, and with heads padded by ``HEAD_PAD`` as proportional attention
    runs them) and its GEMMs, at falling token counts. Does the block's time
    follow its FLOPs (:func:`evalsuite.metrics.flops.block_flops`)? ``% ideal`` is
    the FLOP fraction over the time fraction, both against the first count: below
    100 a block saves less time than FLOPs. Behind the batch-64 ratios to the FLOP
    ideal in docs/performance.md ("Benchmark tables").
``attention``
    Ways to carry the proportional-attention size bias, with DINOv2-S heads
    (6 x 64) at batch 64: the bias kernel (:mod:`evalsuite.patch.attention_kernels`,
    what the patched forwards run where it runs), plain SDPA (no bias), heads
    padded by ``HEAD_PAD`` channels (the fallback; also on the flash and on the
    cuDNN kernel alone), an additive mask with the default
    kernel choice, cuDNN and the efficient kernel with that mask, and the
    efficient kernel with only the values padded. Behind the choice of the bias
    kernel over padded heads (docs/performance.md, "Attention with the size bias").

``in-place``
    Batch-1 compression-step time of whole compressed forwards (the bench's
    ``comp p50/p95``), with the ToMe steps' graphs reading their inputs in place
    (``MAX_IN_PLACE`` per shape) against copying them into the graph's buffers
    (0), alternating in one process so that both see the same host. Behind
    ``MAX_IN_PLACE`` (:mod:`evalsuite.methods.graphs`).

``merge-step`` times back-to-back calls with the wall clock between two device
synchronisations: launches are what it measures. The others time kernels: a
CUDA-graph replay timed with CUDA events on CUDA (launches excluded), back-to-back
calls with the wall clock on CPU. An option the device cannot run is shown as
``-`` with its exception's name. Every subcommand prints its table; the
``*_rows`` functions return the rows as dicts.

    python -m benchmarks.kernels merge-step --device cuda --dtype float16
    python -m benchmarks.kernels block-scaling --device cuda --dtype float16 --batch 64
    python -m benchmarks.kernels attention --device cuda --dtype float16 --batch 64
    python -m benchmarks.kernels in-place --device cuda --dtype float16
    python -m benchmarks.kernels block-scaling --model vit_b16_random --size 64 --batch 2   # CPU smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from evalsuite.methods import graphs
from evalsuite.methods.tome import kernels as tome_kernels
from evalsuite.methods.tome.merge import merge_step
from evalsuite.metrics.flops import block_flops
from evalsuite.metrics.latency import synchronize
from evalsuite.metrics.similarity import percentile
from evalsuite.models import MODELS
from evalsuite.patch import attention_kernels
from evalsuite.patch.runner import HEAD_PAD
from evalsuite.bench import _opt, _step_times

# -- timing ----------------------------------------------------------------------------


def wall_ms(fn: Callable[[], Any], device: torch.device, repeats: int = 50, warmup: int = 5) -> float:
    """Milliseconds per call over ``repeats`` back-to-back calls of ``fn()`` after ``warmup`` untimed ones,
    wall clock between two device synchronisations (kernel launches included)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats * 1e3


def graph_ms(fn: Callable[[], Any], device: torch.device, repeats: int = 20, warmup: int = 3) -> float:
    """Milliseconds per replay of a CUDA graph of ``fn()``, from CUDA events (kernel launches excluded)."""
    with torch.cuda.device(device):
        graph = graphs._capture(lambda: (fn(),), (), {}).graph  # the project's capture: warm-up on a side stream
        for _ in range(warmup):
            graph.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            graph.replay()
        end.record()
        end.synchronize()
    return start.elapsed_time(end) / repeats


def kernel_ms(fn: Callable[[], Any], device: torch.device, repeats: int = 20) -> float:
    """Device time of ``fn()`` in ms: :func:`graph_ms` on CUDA, :func:`wall_ms` on CPU."""
    return graph_ms(fn, device, repeats) if device.type == "cuda" else wall_ms(fn, device, repeats)


def _resolve(device: str | torch.device, dtype: str | None) -> tuple[torch.device, torch.dtype]:
    """Device and dtype from their names; no dtype means float16 on CUDA, float32 elsewhere."""
    device = torch.device(device)
    return device, getattr(torch, dtype or ("float16" if device.type == "cuda" else "float32"))


# -- merge-step --------------------------------------------------------------------------

# name: (batch, heads, tokens, head_dim, channels) of the input one block hands to merge_step
MERGE_SHAPES = {
    "S/14 518 b1": (1, 6, 1370, 64, 384),
    "S/14 518 b8": (8, 6, 1370, 64, 384),
    "S/14 518 b64": (64, 6, 1370, 64, 384),
    "S/14 224 b64": (64, 6, 257, 64, 384),
    "B/16 224 b8": (8, 12, 197, 64, 768),
    "B/16 224 b64": (64, 12, 197, 64, 768),
    "B/16 384 b64": (64, 12, 577, 64, 768),
}


def merge_inputs(shape: tuple[int, int, int, int, int], device: torch.device,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(keys [B, H, N, D], x [B, N, C], size [B, N, 1])`` for ``shape = (B, H, N, D, C)``; the keys
    are a strided view of a qkv output, as the model hands them over."""
    batch, heads, tokens, head_dim, channels = shape
    keys = torch.randn(batch, tokens, 3, heads, head_dim, device=device, dtype=dtype)[:, :, 1].transpose(1, 2)
    x = torch.randn(batch, tokens, channels, device=device, dtype=dtype)
    return keys, x, torch.ones(batch, tokens, 1, device=device, dtype=dtype)


@contextlib.contextmanager
def graph_max_elements(limit: int) -> Iterator[None]:
    """Set :data:`evalsuite.methods.graphs.GRAPH_MAX_ELEMENTS` to ``limit`` inside the block, restore it after."""
    saved = graphs.GRAPH_MAX_ELEMENTS
    graphs.GRAPH_MAX_ELEMENTS = limit
    try:
        yield
    finally:
        graphs.GRAPH_MAX_ELEMENTS = saved


MERGE_STEP_COLUMNS = ("eager_ms", "replayed_ms", "kernel_ms", "fused_ms", "fused_replayed_ms", "fused_kernel_ms")


@torch.inference_mode()
def merge_step_rows(shapes: dict[str, tuple] = MERGE_SHAPES, device: str | torch.device = "cpu",
                    dtype: str | None = None, repeats: int = 50) -> list[dict]:
    """One row per shape: ``shape``, ``elements`` (largest input); the reference step
    (:func:`evalsuite.methods.tome.merge.merge_step`) eager, ``eager_ms``, and replayed from a graph,
    ``replayed_ms`` (every input replayed, whatever its size; None off CUDA); the fused step
    (:func:`evalsuite.methods.tome.kernels.merge_step`) the same, ``fused_ms`` and
    ``fused_replayed_ms`` (None where it does not run), and its device time, ``fused_kernel_ms``,
    against the reference's, ``kernel_ms`` (launches excluded; None off CUDA)."""
    device, torch_dtype = _resolve(device, dtype)
    print(f"{'shape':<16}{'elements':>10}{'eager ms':>10}{'replayed':>10}{'kernels':>9}"
          f"{'fused':>10}{'f.replayed':>12}{'f.kernels':>11}")
    rows = []
    for name, shape in shapes.items():
        tensors = merge_inputs(shape, device, torch_dtype)
        r = (shape[2] - 1) // 24
        row = dict(shape=name, elements=max(t.numel() for t in tensors), **dict.fromkeys(MERGE_STEP_COLUMNS))
        steps = [(merge_step, "eager_ms", "replayed_ms", "kernel_ms")]
        if tome_kernels.supports(tensors[0], tensors[1]):
            steps.append((tome_kernels.merge_step, "fused_ms", "fused_replayed_ms", "fused_kernel_ms"))
        for step, eager, replayed, kernel in steps:
            run = functools.partial(step, *tensors, num_prefix=1, r=r)
            row[eager] = wall_ms(run, device, repeats)
            if device.type == "cuda":
                with graph_max_elements(1 << 62):
                    row[replayed] = wall_ms(functools.partial(graphs.replay_or_run, step, tensors, num_prefix=1, r=r),
                                            device, repeats)
                row[kernel] = graph_ms(run, device, repeats)
        rows.append(row)
        print(f"{name:<16}{row['elements']:>10}{row['eager_ms']:>10.3f}{_opt(row['replayed_ms'], '.3f'):>10}"
              f"{_opt(row['kernel_ms'], '.3f'):>9}{_opt(row['fused_ms'], '.3f'):>10}"
              f"{_opt(row['fused_replayed_ms'], '.3f'):>12}{_opt(row['fused_kernel_ms'], '.3f'):>11}", flush=True)
    return rows


@torch.inference_mode()
def profile_merge_step(shape: tuple[int, int, int, int, int], device: str | torch.device = "cuda",
                       dtype: str | None = None, row_limit: int = 14, fused: bool = False) -> None:
    """Print the top kernels of ten eager merge steps at ``shape``, reference or ``fused`` (diagnosis aid)."""
    from torch.profiler import ProfilerActivity, profile

    device, torch_dtype = _resolve(device, dtype)
    tensors = merge_inputs(shape, device, torch_dtype)
    r = (shape[2] - 1) // 24
    step = tome_kernels.merge_step if fused else merge_step
    for _ in range(3):
        step(*tensors, num_prefix=1, r=r)
    activity = ProfilerActivity.CUDA if device.type == "cuda" else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        for _ in range(10):
            step(*tensors, num_prefix=1, r=r)
        synchronize(device)
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=row_limit, max_name_column_width=60))


# -- block-scaling -----------------------------------------------------------------------

# Token counts measured on DINOv2-S at 518 px (1370 = 37 x 37 patches + CLS), as fractions of
# the full count: other models and sizes are measured at the same fractions.
TOKEN_FRACTIONS = tuple(n / 1370 for n in (1370, 1200, 962, 800, 686, 500))


@dataclass
class BlockParts:
    """One pre-norm encoder block's modules, whichever family they come from.

    ``forward`` is x [B, N, C] -> norm1 -> q, k, v [B, H, N, D] -> SDPA -> proj -> ls1 -> + x
    -> norm2 -> mlp -> ls2 -> + (the timm and transformers DINOv2 blocks without drop path).
    ``qkv`` is one fused projection (timm) or three (transformers).
    """

    norm1: nn.Module
    qkv: tuple[nn.Linear, ...]
    proj: nn.Linear
    ls1: nn.Module
    norm2: nn.Module
    mlp: nn.Module
    ls2: nn.Module
    heads: int
    head_dim: int

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def mlp_ratio(self) -> float:
        return self.mlp.fc1.out_features / self.dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        h = self.norm1(x)
        if len(self.qkv) == 1:
            q, k, v = self.qkv[0](h).view(batch, tokens, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        else:
            q, k, v = (p(h).view(batch, tokens, self.heads, self.head_dim).transpose(1, 2) for p in self.qkv)
        o = F.scaled_dot_product_attention(q, k, v)
        y = x + self.ls1(self.proj(o.transpose(1, 2).reshape(batch, tokens, self.dim)))
        return y + self.ls2(self.mlp(self.norm2(y)))

    def gemms(self, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The block's matrix multiplies on h [B, N, C] alone: projections and both MLP layers."""
        return (*(p(h) for p in self.qkv), self.proj(h), self.mlp.fc2(self.mlp.fc1(h)))


def block_parts(adapter, index: int = 0) -> BlockParts:
    """Block ``index`` of an ``hf_dinov2`` or ``timm_vit`` adapter's model (ValueError for other families,
    or blocks whose attention or MLP the plain forward above would compute differently)."""
    model = adapter.model
    if adapter.family == "hf_dinov2":
        lyr = model.encoder.layer[index]
        attn = lyr.attention
        if hasattr(attn, "q_proj"):  # transformers 5.23 layout
            qkv, proj = (attn.q_proj, attn.k_proj, attn.v_proj), attn.o_proj
        else:  # transformers 4.x-5.17 layout
            qkv, proj = (attn.attention.query, attn.attention.key, attn.attention.value), attn.output.dense
        heads = model.config.num_attention_heads
        parts = BlockParts(lyr.norm1, qkv, proj, lyr.layer_scale1, lyr.norm2, lyr.mlp, lyr.layer_scale2,
                           heads, model.config.hidden_size // heads)
    elif adapter.family == "timm_vit":
        from evalsuite.patch.timm_vit import _plain_heads

        blk = model.blocks[index]
        if not _plain_heads(blk.attn):
            raise ValueError(f"model {adapter.name}: block-scaling times plain attention only "
                             "(no q/k-norm, output norm or gate)")
        parts = BlockParts(blk.norm1, (blk.attn.qkv,), blk.attn.proj, blk.ls1, blk.norm2, blk.mlp, blk.ls2,
                           blk.attn.num_heads, blk.attn.head_dim)
    else:
        raise ValueError(f"model {adapter.name}: block-scaling supports the hf_dinov2 and timm_vit families, "
                         f"not {adapter.family}")
    if not (hasattr(parts.mlp, "fc1") and hasattr(parts.mlp, "fc2")):
        raise ValueError(f"model {adapter.name}: block-scaling needs an fc1/fc2 MLP, got {type(parts.mlp).__name__}")
    return parts


@torch.inference_mode()
def block_scaling_rows(model: str = "dinov2_s14", size: int = 518, batch: int = 64,
                       tokens: Sequence[int] | None = None, device: str | torch.device = "cpu",
                       dtype: str | None = None, repeats: int = 20, model_params: dict | None = None) -> list[dict]:
    """One row per token count (default: :data:`TOKEN_FRACTIONS` of the model's full count at ``size``).

    Times in ms: ``block_ms``, ``sdpa_ms`` (q = k = v [B, H, N, D]), ``padded_sdpa_ms`` (heads
    ``D + HEAD_PAD``), ``gemm_ms``; ``flops`` from :func:`block_flops`; ``time_fraction``,
    ``flop_fraction``, ``sdpa_fraction``, ``gemm_fraction`` against the first row; ``ideal_pct`` =
    100 * flop_fraction / time_fraction.
    """
    device, torch_dtype = _resolve(device, dtype)
    adapter = MODELS.get(model)(model, image_size=size, **(model_params or {})).to(device, torch_dtype)
    parts = block_parts(adapter)
    full = adapter.num_patches + adapter.num_prefix
    tokens = tokens or [round(full * f) for f in TOKEN_FRACTIONS]
    print(f"{model} {size} px, batch {batch}, {torch_dtype}, heads {parts.heads} x {parts.head_dim}")
    print(f"{'N':>6}{'block ms':>10}{'t/t0':>7}{'flop/f0':>9}{'% ideal':>9}{'sdpa':>8}{'t/t0':>7}"
          f"{f'sdpa{parts.head_dim + HEAD_PAD}':>8}{'gemm ms':>9}{'t/t0':>7}")

    def randn(*shape):
        return torch.randn(batch, *shape, device=device, dtype=torch_dtype)

    rows = []
    for n in tokens:
        x, h = randn(n, parts.dim), randn(n, parts.dim)
        q, q_padded = randn(parts.heads, n, parts.head_dim), randn(parts.heads, n, parts.head_dim + HEAD_PAD)
        row = dict(tokens=n, block_ms=kernel_ms(lambda: parts.forward(x), device, repeats),
                   sdpa_ms=kernel_ms(lambda: F.scaled_dot_product_attention(q, q, q), device, repeats),
                   padded_sdpa_ms=kernel_ms(lambda: F.scaled_dot_product_attention(q_padded, q_padded, q_padded),
                                            device, repeats),
                   gemm_ms=kernel_ms(lambda: parts.gemms(h), device, repeats),
                   flops=block_flops(n, n, parts.dim, parts.mlp_ratio))
        first = rows[0] if rows else row
        row.update(time_fraction=row["block_ms"] / first["block_ms"], flop_fraction=row["flops"] / first["flops"],
                   sdpa_fraction=row["sdpa_ms"] / first["sdpa_ms"], gemm_fraction=row["gemm_ms"] / first["gemm_ms"])
        row["ideal_pct"] = 100 * row["flop_fraction"] / row["time_fraction"]
        rows.append(row)
        print(f"{n:>6}{row['block_ms']:>10.3f}{row['time_fraction']:>7.3f}{row['flop_fraction']:>9.3f}"
              f"{row['ideal_pct']:>9.1f}{row['sdpa_ms']:>8.3f}{row['sdpa_fraction']:>7.3f}"
              f"{row['padded_sdpa_ms']:>8.3f}{row['gemm_ms']:>9.3f}{row['gemm_fraction']:>7.3f}", flush=True)
    return rows


# -- attention ---------------------------------------------------------------------------


def _with_backend(backend, fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """``fn`` run with SDPA restricted to ``backend``."""
    from torch.nn.attention import sdpa_kernel

    def run():
        with sdpa_kernel(backend):
            return fn()

    return run


def attention_options(batch: int, heads: int, tokens: int, head_dim: int, device: torch.device,
                      dtype: torch.dtype) -> dict[str, Callable[[], torch.Tensor]]:
    """The ways to run one attention over q, k, v [B, H, N, D] with a per-key size bias, by name.

    The bias is ``log(size)`` per key [B, 1, 1, N], as a mask expanded to [B, H, N, N]; padded heads
    carry it in ``HEAD_PAD`` extra channels instead (their time does not depend on the values).
    """
    from torch.nn.attention import SDPBackend

    def randn(width):
        return torch.randn(batch, heads, tokens, width, device=device, dtype=dtype)

    q, k, v = randn(head_dim), randn(head_dim), randn(head_dim)
    padded, v_padded = randn(head_dim + HEAD_PAD), randn(head_dim + HEAD_PAD)
    bias = torch.rand(batch, 1, 1, tokens, device=device, dtype=dtype).log().expand(batch, heads, tokens, tokens)
    qkv = torch.randn(batch, tokens, 3, heads, head_dim, device=device, dtype=dtype).permute(2, 0, 3, 1, 4)
    sdpa = F.scaled_dot_product_attention

    def bias_kernel():  # what the patched forwards run: q, k, v as views of the projection's output
        if not attention_kernels.supports(qkv, head_dim):
            raise NotImplementedError(f"attention_kernels on {device} {dtype}")
        return attention_kernels.attention(*qkv.unbind(0), bias[:, 0, 0], head_dim ** -0.5)

    return {
        "bias kernel": bias_kernel,
        "plain": lambda: sdpa(q, k, v),
        "padded": lambda: sdpa(padded, padded, padded),
        "flash padded": _with_backend(SDPBackend.FLASH_ATTENTION, lambda: sdpa(padded, padded, padded)),
        "cudnn padded": _with_backend(SDPBackend.CUDNN_ATTENTION, lambda: sdpa(padded, padded, padded)),
        "mask": lambda: sdpa(q, k, v, attn_mask=bias),
        "cudnn+mask": _with_backend(SDPBackend.CUDNN_ATTENTION, lambda: sdpa(q, k, v, attn_mask=bias)),
        "efficient+mask": _with_backend(SDPBackend.EFFICIENT_ATTENTION, lambda: sdpa(q, k, v, attn_mask=bias)),
        "efficient v-pad": _with_backend(SDPBackend.EFFICIENT_ATTENTION, lambda: sdpa(q, k, v_padded)),
    }


@torch.inference_mode()
def attention_rows(tokens: Sequence[int] = (1370, 1000, 700), batch: int = 64, heads: int = 6,
                   head_dim: int = 64, device: str | torch.device = "cpu", dtype: str | None = None,
                   repeats: int = 20) -> list[dict]:
    """One row per token count: ``tokens``, ms per option of :func:`attention_options` (None where the
    device cannot run it) and ``errors`` {option: exception name}."""
    device, torch_dtype = _resolve(device, dtype)
    print(f"batch {batch}, heads {heads} x {head_dim} (padded: {head_dim + HEAD_PAD}), {torch_dtype}")
    rows = []
    for n in tokens:
        row, errors = {"tokens": n}, {}
        for name, fn in attention_options(batch, heads, n, head_dim, device, torch_dtype).items():
            try:
                row[name] = kernel_ms(fn, device, repeats)
            except Exception as exc:  # a backend this device or shape does not have
                row[name], errors[name] = None, type(exc).__name__
        row["errors"] = errors
        if not rows:
            print(f"{'N':>6}" + "".join(f"{name:>17}" for name in row if name not in ("tokens", "errors")))
        cells = [f"- ({errors[name]})" if name in errors else format(row[name], ".3f")
                 for name in row if name not in ("tokens", "errors")]
        print(f"{n:>6}" + "".join(f"{cell:>17}" for cell in cells), flush=True)
        rows.append(row)
    return rows


# -- command line ------------------------------------------------------------------------


# -- in-place ------------------------------------------------------------------------------


@contextlib.contextmanager
def in_place_graphs(limit: int) -> Iterator[None]:
    """Fresh graph cache with at most ``limit`` in-place graphs per shape; both restored after."""
    saved_limit, saved_graphs = graphs.MAX_IN_PLACE, graphs._GRAPHS
    graphs.MAX_IN_PLACE, graphs._GRAPHS = limit, type(saved_graphs)()
    try:
        yield
    finally:
        graphs.MAX_IN_PLACE, graphs._GRAPHS = saved_limit, saved_graphs


def in_place_rows(model: str = "dinov2_s14", sizes: Sequence[int] = (518, 224),
                  methods: Sequence[tuple[str, dict]] = (("tome", {"merge_factor": 0.5}),
                                                         ("tome", {"merge_factor": 0.7})),
                  device: str | torch.device = "cpu", dtype: str | None = None, repeats: int = 50,
                  warmup: int = 10, rounds: int = 2) -> list[dict]:
    """Step p50/p95 (ms) of ``repeats`` batch-1 forwards per size x method x round, without and with
    in-place graphs; ``in_place_graphs`` counts those captured."""
    from evalsuite.methods import build

    device, torch_dtype = _resolve(device, dtype)
    adapter = MODELS.get(model)(model, image_size=max(sizes)).to(device, torch_dtype)
    rows = []
    print(f"{model}, batch 1, {torch_dtype}: compression step per forward, graphs copying inputs (0) "
          f"or reading them in place")
    print(f"{'size':>5}  {'method':<12}{'round':>6}{'in place':>9}{'p50 ms':>9}{'p95 ms':>9}{'graphs':>8}")
    for size in sizes:
        pixels = torch.randn(1, 3, size, size, device=device, dtype=torch_dtype)
        for name, params in methods:
            comp = build(name, params, adapter.num_layers)
            for round_ in range(rounds):
                for limit in (0, graphs.MAX_IN_PLACE):
                    with in_place_graphs(limit):
                        steps = [s * 1e3 for s in _step_times(adapter, comp, pixels, warmup, repeats, "events")]
                        captured = sum(len(entry.in_place) for entry in graphs._GRAPHS.values())
                    row = dict(size=size, method=comp.id_part, round=round_, in_place=limit,
                               p50_ms=percentile(steps, 50), p95_ms=percentile(steps, 95),
                               in_place_graphs=captured)
                    rows.append(row)
                    print(f"{size:>5}  {row['method']:<12}{round_:>6}{limit:>9}{row['p50_ms']:>9.3f}"
                          f"{row['p95_ms']:>9.3f}{captured:>8}", flush=True)
    return rows


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def _shape_names(text: str) -> list[str]:
    names = text.split(",")
    unknown = [name for name in names if name not in MERGE_SHAPES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown shape(s) {unknown}; known: {', '.join(MERGE_SHAPES)}")
    return names


def _param(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (key, value), the value read as JSON where it is JSON (numbers, booleans, objects)."""
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    common.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                        help="default: float16 on CUDA, float32 on CPU")
    common.add_argument("--repeats", type=int, default=20)
    common.add_argument("--json", help="also write the rows here")
    commands = parser.add_subparsers(dest="command", required=True)

    step = commands.add_parser("merge-step", parents=[common], help="ToMe step: eager vs replayed from a graph")
    step.add_argument("--shapes", type=_shape_names, default=list(MERGE_SHAPES),
                      help=f"comma-separated names from: {', '.join(MERGE_SHAPES)}")
    step.add_argument("--profile", choices=list(MERGE_SHAPES), metavar="SHAPE",
                      help="print the top kernels of one shape's step instead")
    step.add_argument("--fused", action="store_true", help="with --profile: the fused step's kernels")
    step.set_defaults(repeats=50)

    scaling = commands.add_parser("block-scaling", parents=[common], help="block time against block FLOPs")
    scaling.add_argument("--model", default="dinov2_s14")
    scaling.add_argument("--size", type=int, default=518)
    scaling.add_argument("--batch", type=int, default=64)
    scaling.add_argument("--tokens", type=_ints, help="comma-separated token counts (default: fractions of full)")
    scaling.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                         help="model factory parameter, e.g. arch=vit_small_patch16_224 for timm_vit (repeatable)")

    attention = commands.add_parser("attention", parents=[common], help="proportional-attention options")
    attention.add_argument("--batch", type=int, default=64)
    attention.add_argument("--heads", type=int, default=6)
    attention.add_argument("--head-dim", type=int, default=64)
    attention.add_argument("--tokens", type=_ints, default=[1370, 1000, 700])

    in_place = commands.add_parser("in-place", parents=[common], help="batch-1 step with in-place graphs or not")
    in_place.add_argument("--model", default="dinov2_s14")
    in_place.add_argument("--sizes", type=_ints, default=[518, 224])
    in_place.set_defaults(repeats=50)

    args = parser.parse_args(argv)
    options = dict(device=args.device, dtype=args.dtype, repeats=args.repeats)
    if args.command == "merge-step":
        if args.profile:
            profile_merge_step(MERGE_SHAPES[args.profile], args.device, args.dtype, fused=args.fused)
            return []
        rows = merge_step_rows({name: MERGE_SHAPES[name] for name in args.shapes}, **options)
    elif args.command == "block-scaling":
        params = dict(_param(text) for text in args.param)
        rows = block_scaling_rows(args.model, args.size, args.batch, args.tokens, model_params=params, **options)
    elif args.command == "in-place":
        rows = in_place_rows(args.model, args.sizes, **options)
    else:
        rows = attention_rows(args.tokens, args.batch, args.heads, args.head_dim, **options)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()
