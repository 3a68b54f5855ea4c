"""Family-agnostic part of a compressed forward pass.

A family patch (``timm_vit.py``, ``hf_dinov2.py``) walks its model's own
modules and calls a :class:`CompressedForward` at fixed points; this class
holds the token state, runs the method's hooks, computes attention (fused
SDPA; proportional attention as an additive bias on CPU, on CUDA in
:mod:`evalsuite.patch.attention_kernels` or else as an extra channel per head:
:func:`padded_projection`), times the compression work and
turns the final state into per-image token plans. The model's weights and
classes are never modified (padded projections are cached copies).
"""

from __future__ import annotations

import time
import weakref
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from ..methods.base import Compressor
from ..methods.state import TokenState
from ..metrics.latency import synchronize
from ..plan import TokenPlan
from . import attention_kernels

RECEIVED_ATTENTION_CHUNK = 256  # queries per chunk when a model has no class token
HEAD_PAD = 8  # channels added to every head to carry the proportional-attention bias (keeps heads a multiple of 8)


class StepTimer:
    """Accumulates the time the compression work adds to a forward (``seconds``).

    Disabled (the default) it costs nothing and adds no synchronisation, so
    throughput runs are not perturbed; latency runs enable it.

    On CUDA (``mode="events"``, the default) CUDA events are recorded on the
    stream before and after every timed region and read once, after the forward
    (one synchronisation per forward). An event pair spans what the region adds
    to the stream: its kernels, plus any wait for the host to launch them when
    the GPU is idle (batch 1); host work hidden behind queued GPU work is not
    counted, because it adds no latency. ``mode="sync"`` instead synchronises
    the device around every region and takes wall time: an upper bound that
    also charges each region a synchronisation and an empty queue. On CPU both
    modes take wall time.
    """

    MODES = ("events", "sync")

    def __init__(self, enabled: bool = False, mode: str = "events"):
        if mode not in self.MODES:
            raise ValueError(f"StepTimer: mode must be one of {self.MODES}, got {mode!r}")
        self.enabled, self.mode = enabled, mode
        self._seconds = 0.0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    @contextmanager
    def __call__(self, device: torch.device):
        if not self.enabled:
            yield
            return
        if device.type == "cuda" and self.mode == "events":
            stream = torch.cuda.current_stream(device)
            start, end = pair = _event_pair(device)
            start.record(stream)
            yield
            end.record(stream)
            self._events.append(pair)
            return
        synchronize(device)
        start_s = time.perf_counter()
        yield
        synchronize(device)
        self._seconds += time.perf_counter() - start_s

    @property
    def seconds(self) -> float:
        """Total timed so far; waits for the last recorded event."""
        if self._events:
            self._events[-1][1].synchronize()
            self._seconds += sum(start.elapsed_time(end) for start, end in self._events) / 1e3
            _EVENT_PAIRS.setdefault(self._events[0][0].device.index, []).extend(self._events)  # read: reusable
            self._events.clear()
        return self._seconds


_EVENT_PAIRS: dict[int, list[tuple[torch.cuda.Event, torch.cuda.Event]]] = {}  # read pairs, per GPU index


def _event_pair(device: torch.device) -> tuple[torch.cuda.Event, torch.cuda.Event]:
    """Timing events for one region, reused once read: the driver creates an event at its first
    ``record``, which for the end event would fall inside the timed region (batch 1 is host-bound)."""
    index = torch.cuda.current_device() if device.index is None else device.index
    free = _EVENT_PAIRS.get(index)
    if free:
        return free.pop()
    pair = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.cuda.device(index):
        for event in pair:
            event.record()  # created now, outside the region
    return pair


def _overrides(compressor: Compressor, hook: str) -> bool:
    """Whether ``compressor``'s ``hook`` is its own (its class's or its instance's), not Compressor's."""
    return getattr(getattr(compressor, hook), "__func__", None) is not getattr(Compressor, hook)


class CompressedForward:
    """One forward pass of one batch through a patched encoder."""

    def __init__(self, compressor: Compressor, patch_size: int, timer: StepTimer | None = None):
        self.compressor = compressor
        self.patch_size = patch_size
        self.timer = timer or StepTimer()
        self.state: TokenState | None = None
        self.full_grid: tuple[int, int] | None = None
        # a hook the method leaves as Compressor's (it returns x) is neither called nor timed: at
        # batch 1 the timer's own host time per block would be counted as the method's work
        self._acts_after_attention = _overrides(compressor, "after_attention")
        self._acts_after_block = _overrides(compressor, "after_block")

    # -- input ----------------------------------------------------------------
    def prepare(self, pixels: torch.Tensor) -> torch.Tensor:
        """Apply the method's input transform (``downscale``) to pixels [B, 3, H, W]."""
        self.full_grid = (pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size)
        scale = self.compressor.input_scale
        if scale >= 1.0:
            return pixels
        with self.timer(pixels.device):
            rows, cols = self.compressor.grid_for(self.full_grid)
            size = (rows * self.patch_size, cols * self.patch_size)
            return F.interpolate(pixels, size=size, mode="bilinear", antialias=True, align_corners=False)

    def begin(self, x: torch.Tensor, num_prefix: int, grid: tuple[int, int]) -> None:
        """Start tracking tokens ``x`` [B, num_prefix + rows*cols, C] on patch ``grid``."""
        self.state = TokenState.start(x, num_prefix, grid)
        self.compressor.begin(self.state)
        # asked once per forward, not once per block: the per-block Python cost is launch latency at batch 1
        self._requests = [self.compressor.attention_request(i) for i in range(self.compressor.num_layers)]

    # -- per block --------------------------------------------------------------
    fold_bias_devices = ("cuda",)  # where the size bias cannot be an attn_mask (it would leave the fused kernels)

    @property
    def size_biased(self) -> bool:
        """True once merged tokens need the size bias and the fused SDPA kernels cannot take it as a mask.

        The family patch then calls :meth:`size_biased_attention` instead of :meth:`attend`,
        handing over its projections rather than q, k and v.
        """
        state = self.state
        return state.merged and state.proportional_attention and state.size.device.type in self.fold_bias_devices

    def size_biased_attention(self, layer: int, x: torch.Tensor, qkv: tuple[torch.nn.Linear, ...],
                              out_proj: torch.nn.Linear, head_dim: int, scale: float) -> torch.Tensor:
        """Block ``layer``'s attention on x [B, N, C] with the size bias, from the block's input
        projections ``qkv`` (timm's fused qkv, or transformers' q, k and v) and its ``out_proj``.

        Where :mod:`evalsuite.patch.attention_kernels` runs, its kernel adds the bias to the
        scores of heads of their own width, reading q, k and v from one projection GEMM and
        writing what ``out_proj`` reads. Elsewhere the bias rides in padded heads
        (:meth:`padded_attention`). Returns [B, N, C].
        """
        batch, tokens, _ = x.shape
        if not attention_kernels.supports(x, head_dim):
            return self.padded_attention(layer, x, qkv, out_proj, head_dim, scale)
        projected = F.linear(x, *fused_projection(qkv))
        q, k, v = projected.view(batch, tokens, 3, -1, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.state.attention_bias(q.dtype)  # the values the mask and the padded heads get
        out = attention_kernels.attention(q, k, v, bias[:, 0, 0], scale)  # [B, N, H, D]
        self._observe(layer, q, k, scale, bias)
        return out_proj(out.view(batch, tokens, -1))

    def padded_attention(self, layer: int, x: torch.Tensor, qkv: tuple[torch.nn.Linear, ...],
                         out_proj: torch.nn.Linear, head_dim: int, scale: float) -> torch.Tensor:
        """:meth:`size_biased_attention` on SDPA's flash kernel: the bias carried in padded heads.

        :func:`padded_projection` makes ``qkv`` one GEMM whose heads are ``HEAD_PAD`` channels
        wider and whose query pad channel is 1; key channel D is set here to ``log(size) / scale``,
        so ``scale * q.k`` gains exactly the size bias. ``out_proj`` reads the heads through
        :func:`padded_output`, which ignores the pad. Returns [B, N, C].
        """
        batch, tokens, _ = x.shape
        projected = F.linear(x, *padded_projection(qkv, head_dim, (1.0, 0.0, 0.0)))
        q, k, v = projected.view(batch, tokens, 3, -1, head_dim + HEAD_PAD).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.state.attention_bias(q.dtype)
        k[..., head_dim] = bias[:, :, 0] / scale  # [B, 1, N] broadcast over heads
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        self._observe(layer, q[..., :head_dim], k[..., :head_dim], scale, bias)
        return F.linear(out.transpose(1, 2).reshape(batch, tokens, -1), *padded_output(out_proj, head_dim))

    def linear_attention(self, layer: int, x: torch.Tensor, q_proj: torch.nn.Linear, k_proj: torch.nn.Linear,
                         v_proj: torch.nn.Linear, out_proj: torch.nn.Linear, head_dim: int,
                         scale: float) -> torch.Tensor:
        """Block ``layer``'s attention on x [B, N, C] for transformers' layout (separate q, k, v and
        output projections, as in ``Dinov2Attention`` and ``CLIPAttention``): :meth:`size_biased_attention`
        once proportional attention needs it, else the model's own computation around :meth:`attend`."""
        if self.size_biased:
            return self.size_biased_attention(layer, x, (q_proj, k_proj, v_proj), out_proj, head_dim, scale)
        shape = (*x.shape[:-1], -1, head_dim)
        q, k, v = (proj(x).view(shape).transpose(1, 2) for proj in (q_proj, k_proj, v_proj))
        out = self.attend(layer, q, k, v, scale)
        return out_proj(out.transpose(1, 2).reshape(*x.shape[:-1], -1))

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """Fused attention over q, k, v [B, H, N, D] -> [B, H, N, D], plus what the method asked for."""
        bias = self.state.attention_bias(q.dtype)
        if bias is None or q.device.type not in self.fold_bias_devices:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
        elif attention_kernels.supports(q, q.shape[-1]):
            out = attention_kernels.attention(q, k, v, bias[:, 0, 0], scale).transpose(1, 2)
        else:
            out = folded_bias_attention(q, k, v, bias, scale)
        self._observe(layer, q, k, scale, bias)
        return out

    def _observe(self, layer, q, k, scale, bias) -> None:
        """Hand the method what it asked for at ``layer``, if anything. Keys are handed over as they
        are (any reduction is the method's own, timed in its step); received attention is computed
        here, and timed."""
        request = self._requests[layer]
        if request is None:
            return
        importance = (self._timed(q.device, self._received_attention, q, k, scale, bias)
                      if request.importance else None)
        self.compressor.observe_attention(layer, k if request.keys else None, importance)

    def _timed(self, device, fn, *args):
        if not self.timer.enabled:  # the throughput path: no context manager, no synchronisation
            return fn(*args)
        with self.timer(device):
            return fn(*args)

    def _received_attention(self, q, k, scale, bias) -> torch.Tensor:
        """[B, N]: class-token attention, or mean attention received, averaged over heads."""
        if self.state.num_prefix > 0:
            logits = (q[:, :, :1] @ k.transpose(-1, -2)) * scale  # [B, H, 1, N]
            if bias is not None:
                logits = logits + bias
            return logits.float().softmax(dim=-1).mean(dim=(1, 2))
        received = torch.zeros(q.shape[0], k.shape[2], device=q.device, dtype=torch.float32)
        for start in range(0, q.shape[2], RECEIVED_ATTENTION_CHUNK):
            logits = (q[:, :, start:start + RECEIVED_ATTENTION_CHUNK] @ k.transpose(-1, -2)) * scale
            if bias is not None:
                logits = logits + bias
            received += logits.float().softmax(dim=-1).sum(dim=2).mean(dim=1)
        return received / q.shape[2]

    def after_attention(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        if not self._acts_after_attention:
            return x
        return self._timed(x.device, self.compressor.after_attention, layer, x, self.state)

    def after_block(self, layer: int, x: torch.Tensor, x_in: torch.Tensor) -> torch.Tensor:
        if not self._acts_after_block:
            return x
        return self._timed(x.device, self.compressor.after_block, layer, x, x_in, self.state)

    # -- output -----------------------------------------------------------------
    def token_sizes(self) -> torch.Tensor:
        """[B, N_out] patches per output token (prefix tokens count 1); a copy, since the state's
        tensor may be a CUDA graph's buffer (:mod:`evalsuite.methods.graphs`)."""
        return self.state.size[..., 0].clone()

    def plans(self, source: torch.Tensor | None = None) -> list[TokenPlan]:
        """Per-image token plans on the full (pre-downscale) patch grid."""
        source = (self.state.source if source is None else source).cpu().numpy().astype(np.int32)
        tokens = self.state.num_patch_tokens
        if self.full_grid != self.state.grid:  # downscaled input: map full-grid patches to the small grid
            source = source[:, _nearest_cells(self.full_grid, self.state.grid)]
        return [
            TokenPlan(self.full_grid, row, tokens, input_scale=self.compressor.input_scale)
            for row in source
        ]


def folded_bias_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                          scale: float) -> torch.Tensor:
    """``softmax(scale * q k^T + bias) v`` with a per-key bias [B, 1, 1, N], on the flash kernel.

    A float ``attn_mask`` pushes SDPA off the flash kernel onto slower ones, which
    at high resolution can cost more than ToMe saves. Instead the bias is
    folded into one extra channel: each query gets a 1, key j gets
    ``bias_j / scale``, so ``scale * q'.k'_j = scale * q.k_j + bias_j`` exactly.
    Channels are padded by ``HEAD_PAD`` to keep the head size a multiple of 8.
    q, k, v [B, H, N, D] -> [B, H, N, D].
    """
    d = q.shape[-1]
    q2 = F.pad(q, (0, HEAD_PAD))
    q2[..., d] = 1.0
    k2 = F.pad(k, (0, HEAD_PAD))
    k2[..., d] = bias[:, :, 0] / scale  # [B, 1, N] broadcast over heads
    out = F.scaled_dot_product_attention(q2, k2, F.pad(v, (0, HEAD_PAD)), scale=scale)
    return out[..., :d]


_PADDED: weakref.WeakKeyDictionary[torch.nn.Linear, tuple] = weakref.WeakKeyDictionary()


def _cached(linears: tuple[torch.nn.Linear, ...], kind: str, build) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded copies of the parameters of ``linears``, rebuilt when they move, change dtype or are written."""
    key = (kind, *[weights_state(m.weight) for m in linears])
    entry = _PADDED.get(linears[0])
    if entry is None or entry[0] != key:
        with torch.no_grad():
            entry = _PADDED[linears[0]] = (key, build())
    return entry[1]


def weights_state(t: torch.Tensor) -> tuple:
    """What identifies the values of a weight tensor: storage, in-place write count, dtype, device.
    Inference tensors (parameters created under ``torch.inference_mode``) keep no write count."""
    return t.data_ptr(), 0 if t.is_inference() else t._version, t.dtype, t.device


def fused_projection(linears: tuple[torch.nn.Linear, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """One projection doing the work of ``linears`` (their outputs side by side); a single layer's
    own weight and bias. Returns (weight, bias) for ``F.linear``."""
    if len(linears) == 1:
        return linears[0].weight, linears[0].bias
    return _cached(tuple(linears), "fused", lambda: _joined(linears))


def _joined(linears: tuple[torch.nn.Linear, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights and biases (zeros where a layer has none) of ``linears``, concatenated."""
    weight = torch.cat([m.weight for m in linears])
    return weight, torch.cat([m.bias if m.bias is not None else weight.new_zeros(m.out_features) for m in linears])


def padded_projection(linears: tuple[torch.nn.Linear, ...], head_dim: int,
                      first_pad: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """One projection doing the work of ``linears`` (their outputs side by side: ``len(first_pad)``
    groups of heads of ``head_dim``, e.g. timm's fused qkv, or transformers' q, k and v), with
    ``HEAD_PAD`` zero channels after every head; the first pad channel of the heads of group ``g``
    is the constant ``first_pad[g]`` (1.0 for queries). Returns (weight, bias) for ``F.linear``.
    The model's own parameters are read, never changed."""

    def build():
        weight, bias = _joined(linears)
        groups, (out_features, in_features) = len(first_pad), weight.shape
        heads = out_features // (groups * head_dim)
        w = weight.new_zeros(groups, heads, head_dim + HEAD_PAD, in_features)
        w[:, :, :head_dim] = weight.view(groups, heads, head_dim, in_features)
        b = weight.new_zeros(groups, heads, head_dim + HEAD_PAD)
        b[:, :, :head_dim] = bias.view(groups, heads, head_dim)
        b[:, :, head_dim] = torch.tensor(first_pad, dtype=b.dtype, device=b.device)[:, None]
        return w.view(-1, in_features), b.view(-1)

    return _cached(tuple(linears), f"in{first_pad}{head_dim}", build)


def padded_output(linear: torch.nn.Linear, head_dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The attention output projection ``linear`` reading heads of ``head_dim + HEAD_PAD``
    channels: zero weights for the pad channels. Returns (weight, bias) for ``F.linear``."""

    def build():
        out_features, in_features = linear.weight.shape
        w = linear.weight.new_zeros(out_features, in_features // head_dim, head_dim + HEAD_PAD)
        w[:, :, :head_dim] = linear.weight.view(out_features, -1, head_dim)
        return w.view(out_features, -1), linear.bias

    return _cached((linear,), f"out{head_dim}", build)


def _nearest_cells(full: tuple[int, int], small: tuple[int, int]) -> np.ndarray:
    """[full rows*cols] index of the small-grid cell covering each full-grid patch centre."""
    rows = ((np.arange(full[0]) + 0.5) * small[0] / full[0]).astype(int)
    cols = ((np.arange(full[1]) + 0.5) * small[1] / full[1]).astype(int)
    return (rows[:, None] * small[1] + cols[None, :]).reshape(-1)
