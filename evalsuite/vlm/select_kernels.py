"""DivPrune's greedy max-min loop in one Triton kernel, for CUDA.

:func:`evalsuite.vlm.select.max_min_greedy` is the reference: one step per kept token,
each a handful of torch kernels (argmax, minimum, a scalar write), so at ``k`` in the
thousands the launches, not the arithmetic, set the time. :func:`max_min_greedy` here
runs the whole loop in one launch: a single program keeps ``nearest`` (every token's
distance to the selected set, [N] float32) in registers, and each step reads one row
of the distance matrix, takes the elementwise minimum, marks the chosen token -1 and
picks the next by ``tl.argmax`` (first index among equal maxima, as ``torch.argmax``).
The distances themselves and the start token stay in torch, so both paths walk the
same float32 numbers and choose the same tokens; the start index is read on the
device, so nothing waits for the host.

It runs on CUDA tensors of up to :data:`MAX_TOKENS` tokens once :func:`_works_on` has
accepted the device, and under ``TRITON_INTERPRET=1`` on CPU tensors, which is how the
CPU tests compare it with the reference. ``EVALSUITE_TRITON=0`` turns it off.
"""

from __future__ import annotations

import torch

from .. import triton_probe

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - PyTorch's CUDA wheels ship Triton
    triton = None

ENABLED = triton_probe.ENABLED  # per module, so that one kernel can be turned off alone
# Tokens one program holds in registers: at 16 warps, 32 distances and 32 indices a thread.
MAX_TOKENS = 16384
_INTERPRET = triton_probe.INTERPRET


def supports(distance: torch.Tensor) -> bool:
    """Whether :func:`max_min_greedy` runs on ``distance`` [N, N] float32 (else use the torch loop)."""
    if triton is None or not ENABLED or distance.dtype != torch.float32 or distance.shape[0] > MAX_TOKENS:
        return False
    if distance.is_cuda:
        return _works_on(distance.device)
    return _INTERPRET and distance.device.type == "cpu"


_WORKS: dict[tuple, bool] = {}


def _works_on(device: torch.device) -> bool:
    """Decided once per device (:func:`evalsuite.triton_probe.decided`): the kernel is built and run
    on small inputs, with ties (duplicate tokens) and a block's last slot in use, and must choose
    the reference's tokens in the reference's order; else DivPrune uses the torch loop."""

    def check() -> str | None:
        from .select import divprune_distances, max_min_greedy as reference

        g = torch.Generator(device=device).manual_seed(0)
        for n, k in ((64, 40), (100, 99), (37, 1)):
            half = torch.randn((n + 1) // 2, 24, device=device, generator=g)
            tokens = torch.cat([half, half])[:n]  # duplicates: equal distances, ties to break alike
            distance, start = divprune_distances(tokens)
            if not torch.equal(max_min_greedy(distance, start, k), reference(distance, start, k)):
                return "its choice disagreed with the torch loop"
        return None

    return triton_probe.decided(_WORKS, device, torch.float32, check, "the DivPrune kernel", "the torch loop")


def num_warps(block: int) -> int:
    """Warps of the one program under the interpreter: enough that a thread holds at most 32 of
    ``block`` tokens. On CUDA the count is timed once per block size among :data:`WARPS`: a step's
    time is set by the tokens each thread walks on one side and the argmax's exchange between warps
    on the other, and where they balance depends on the device (docs/performance.md)."""
    return 4 if block <= 1024 else 8 if block <= 4096 else 16


WARPS = (4, 8, 16)


def max_min_greedy(distance: torch.Tensor, start: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` tokens chosen greedily from ``start`` (0-d int tensor), in the order chosen: [k]
    int64. ``distance`` [N, N] float32, unit stride along its rows; ``1 <= k < N``."""
    n = distance.shape[0]
    if distance.stride(1) != 1:
        raise ValueError("select_kernels.max_min_greedy: distance needs unit stride along its rows")
    chosen = torch.empty(k, dtype=torch.int64, device=distance.device)
    block = triton.next_power_of_2(n)
    if _INTERPRET or _tuned is None:
        _max_min_kernel[(1,)](distance, start.reshape(1), chosen, n, k, distance.stride(0), BLOCK=block,
                              num_warps=num_warps(block))
    else:
        _tuned[(1,)](distance, start.reshape(1), chosen, n, k, distance.stride(0), BLOCK=block)
    return chosen


_tuned = None  # the kernel with its warps timed per block size (CUDA), set below


if triton is not None:

    @triton.jit(do_not_specialize=["k"])  # k changes with every keep ratio; n and the stride, with the page
    def _max_min_kernel(distance, start, chosen, n, k, stride_row, BLOCK: tl.constexpr):
        """The greedy loop of one image: ``nearest`` [BLOCK] in registers, one distance row read per
        step. Slots past ``n`` hold -inf, below every real distance and below the -1 of chosen
        tokens, so they are never picked. NaN distances (from a token with NaN or inf values) behave
        as in torch: ``minimum`` keeps them and ``argmax`` takes them as the largest."""
        cols = tl.arange(0, BLOCK)
        valid = cols < n
        pick = tl.load(start).to(tl.int64)
        tl.store(chosen, pick)
        nearest = tl.load(distance + pick * stride_row + cols, mask=valid, other=float("-inf"))
        nearest = tl.where(cols == pick, -1.0, nearest)
        for step in range(1, k):
            ranked = tl.where(nearest != nearest, float("inf"), nearest)  # NaN first, as torch.argmax
            pick = tl.argmax(ranked, axis=0, tie_break_left=True).to(tl.int64)  # the first of equal maxima
            tl.store(chosen + step, pick)
            row = tl.load(distance + pick * stride_row + cols, mask=valid, other=float("-inf"))
            nearest = tl.where(cols == pick, -1.0, tl.minimum(nearest, row, propagate_nan=tl.PropagateNan.ALL))

    if not _INTERPRET:  # rerunning the kernel while timing it only rewrites the same choices
        _tuned = triton.autotune([triton.Config({}, num_warps=w) for w in WARPS], key=["BLOCK"])(_max_min_kernel)
