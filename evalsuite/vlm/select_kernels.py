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
    on small inputs, with ties (duplicate tokens) and a block's last slot in use, and each of its
    variants (:data:`AHEADS`) must choose the reference's tokens in the reference's order; else
    DivPrune uses the torch loop."""

    def check() -> str | None:
        from .select import divprune_distances, max_min_greedy as reference

        g = torch.Generator(device=device).manual_seed(0)
        for n, k in ((64, 40), (100, 99), (37, 1)):
            half = torch.randn((n + 1) // 2, 24, device=device, generator=g)
            tokens = torch.cat([half, half])[:n]  # duplicates: equal distances, ties to break alike
            distance, start = divprune_distances(tokens)
            want = reference(distance, start, k)
            for ahead in AHEADS:
                if not torch.equal(max_min_greedy(distance, start, k, ahead), want):
                    return f"its choice (AHEAD={ahead}) disagreed with the torch loop"
        return None

    return triton_probe.decided(_WORKS, device, torch.float32, check, "the DivPrune kernel", "the torch loop")


def num_warps(block: int) -> int:
    """Warps of the one program under the interpreter: enough that a thread holds at most 32 of
    ``block`` tokens. On CUDA the count is timed once per block size among :data:`WARPS`: a step's
    time is set by the tokens each thread walks on one side and the argmax's exchange between warps
    on the other, and where they balance depends on the device (docs/performance.md)."""
    return 4 if block <= 1024 else 8 if block <= 4096 else 16


WARPS = (4, 8, 16)
AHEADS = (1, 2, 4)  # candidates ranked per step (the kernel's AHEAD): all choose alike, the fastest is kept


def max_min_greedy(distance: torch.Tensor, start: torch.Tensor, k: int, ahead: int | None = None) -> torch.Tensor:
    """The ``k`` tokens chosen greedily from ``start`` (0-d int tensor), in the order chosen: [k]
    int64. ``distance`` [N, N] float32, unit stride along its rows; ``1 <= k < N``. ``ahead``: the
    kernel's ``AHEAD`` (one of :data:`AHEADS`); None: on CUDA timed together with the warps, else 4."""
    n = distance.shape[0]
    if distance.stride(1) != 1:
        raise ValueError("select_kernels.max_min_greedy: distance needs unit stride along its rows")
    chosen = torch.empty(k, dtype=torch.int64, device=distance.device)
    finite = torch.isfinite(distance).all().reshape(1)  # on the device: nothing waits for the host
    block = triton.next_power_of_2(n)
    if ahead is not None or _INTERPRET or _tuned is None:
        _max_min_kernel[(1,)](distance, start.reshape(1), chosen, finite, n, k, distance.stride(0), BLOCK=block,
                              AHEAD=ahead or 4, num_warps=num_warps(block))
    else:
        _tuned[(1,)](distance, start.reshape(1), chosen, finite, n, k, distance.stride(0), BLOCK=block)
    return chosen


_tuned = None  # the kernel with its warps timed per block size (CUDA), set below


if triton is not None:

    @triton.jit
    def _ahead(x, i, y, j):
        """Whether (x, i) ranks before (y, j): the larger distance, then the lower index (torch.argmax)."""
        return (x > y) | ((x == y) & (i < j))

    @triton.jit
    def _first(x, i, y, j):
        ahead = _ahead(x, i, y, j)
        return tl.where(ahead, x, y), tl.where(ahead, i, j)

    @triton.jit
    def _order(x, i, y, j):
        ahead = _ahead(x, i, y, j)
        return tl.where(ahead, x, y), tl.where(ahead, i, j), tl.where(ahead, y, x), tl.where(ahead, j, i)

    @triton.jit
    def _top2(a1, i1, a2, i2, b1, j1, b2, j2):
        """The first two of two ranked pairs (a bitonic merge: the pairwise firsts, then one exchange)."""
        m1, n1 = _first(a1, i1, b2, j2)
        m2, n2 = _first(a2, i2, b1, j1)
        return _order(m1, n1, m2, n2)

    @triton.jit
    def _top4(a1, i1, a2, i2, a3, i3, a4, i4, b1, j1, b2, j2, b3, j3, b4, j4):
        """The first four of two ranked quadruples (a bitonic merge, as :func:`_top2`)."""
        m1, n1 = _first(a1, i1, b4, j4)
        m2, n2 = _first(a2, i2, b3, j3)
        m3, n3 = _first(a3, i3, b2, j2)
        m4, n4 = _first(a4, i4, b1, j1)
        m1, n1, m3, n3 = _order(m1, n1, m3, n3)
        m2, n2, m4, n4 = _order(m2, n2, m4, n4)
        m1, n1, m2, n2 = _order(m1, n1, m2, n2)
        m3, n3, m4, n4 = _order(m3, n3, m4, n4)
        return m1, n1, m2, n2, m3, n3, m4, n4

    @triton.jit
    def _taken(nearest, cols, take, pick, row):
        """``nearest`` after choosing ``pick`` (its distance ``row``) where ``take``, else unchanged."""
        return tl.where(take, tl.where(cols == pick, -1.0, tl.minimum(nearest, row, propagate_nan=tl.PropagateNan.ALL)),
                        nearest)

    @triton.jit(do_not_specialize=["k"])  # k changes with every keep ratio; n and the stride, with the page
    def _max_min_kernel(distance, start, chosen, finite, n, k, stride_row, BLOCK: tl.constexpr,
                        AHEAD: tl.constexpr = 1):
        """The greedy loop of one image: ``nearest`` [BLOCK] in registers, one distance row read per
        step. Slots past ``n`` hold -inf, below every real distance and below the -1 of chosen
        tokens, so they are never picked. NaN distances (from a token with NaN or inf values) behave
        as in torch: ``minimum`` keeps them and ``argmax`` takes them as the largest.

        ``AHEAD`` (2 or 4) > 1: one reduction ranks the first ``AHEAD`` candidates c1, c2, ... and
        their rows are read together. c1 is the step's choice. c2 is the next one exactly when its
        distance to c1 is not below its own nearest distance v2: every other token's nearest
        distance can only fall and was at most v2 (ties: at a higher index), so after c1, c2 still
        ranks first. Likewise c3 after c1 and c2, and so on. Up to ``AHEAD`` choices then cost one
        reduction and one row latency, the two things a step waits on; the choices are the loop's
        own. Only with finite distances (``finite`` != 0): a NaN in c1's row would rank first."""
        cols = tl.arange(0, BLOCK)
        valid = cols < n
        pick = tl.load(start).to(tl.int64)
        tl.store(chosen, pick)
        nearest = tl.load(distance + pick * stride_row + cols, mask=valid, other=float("-inf"))
        nearest = tl.where(cols == pick, -1.0, nearest)
        if AHEAD == 1:
            for step in range(1, k):
                ranked = tl.where(nearest != nearest, float("inf"), nearest)  # NaN first, as torch.argmax
                pick = tl.argmax(ranked, axis=0, tie_break_left=True).to(tl.int64)  # the first of equal maxima
                tl.store(chosen + step, pick)
                row = tl.load(distance + pick * stride_row + cols, mask=valid, other=float("-inf"))
                nearest = tl.where(cols == pick, -1.0, tl.minimum(nearest, row, propagate_nan=tl.PropagateNan.ALL))
        else:
            guess = tl.load(finite) != 0
            spare_v = tl.full([BLOCK], float("-inf"), tl.float32)
            spare_i = tl.full([BLOCK], BLOCK, tl.int32)
            step = tl.program_id(0) * 0 + 1
            while step < k:
                ranked = tl.where(nearest != nearest, float("inf"), nearest)
                if AHEAD == 2:
                    v1, c1, v2, c2 = tl.reduce((ranked, cols, spare_v, spare_i), 0, _top2)
                else:
                    v1, c1, v2, c2, v3, c3, v4, c4 = tl.reduce(
                        (ranked, cols, spare_v, spare_i, spare_v, spare_i, spare_v, spare_i), 0, _top4)
                r1 = distance + c1.to(tl.int64) * stride_row
                row1 = tl.load(r1 + cols, mask=valid, other=float("-inf"))
                ok2 = guess & (v2 > -1.0) & (step + 1 < k)  # an unchosen token, a choice still to make
                r2 = distance + c2.to(tl.int64) * stride_row
                row2 = tl.load(r2 + cols, mask=valid & ok2, other=float("-inf"))
                take2 = ok2 & (tl.load(r1 + c2, mask=ok2, other=float("-inf")) >= v2)
                if AHEAD == 4:
                    ok3 = ok2 & (v3 > -1.0) & (step + 2 < k)
                    r3 = distance + c3.to(tl.int64) * stride_row
                    row3 = tl.load(r3 + cols, mask=valid & ok3, other=float("-inf"))
                    near3 = tl.minimum(tl.load(r1 + c3, mask=ok3, other=float("-inf")),
                                       tl.load(r2 + c3, mask=ok3, other=float("-inf")))
                    ok4 = ok3 & (v4 > -1.0) & (step + 3 < k)
                    row4 = tl.load(distance + c4.to(tl.int64) * stride_row + cols, mask=valid & ok4,
                                   other=float("-inf"))
                    near4 = tl.minimum(tl.minimum(tl.load(r1 + c4, mask=ok4, other=float("-inf")),
                                                  tl.load(r2 + c4, mask=ok4, other=float("-inf"))),
                                       tl.load(r3 + c4, mask=ok4, other=float("-inf")))
                tl.store(chosen + step, c1.to(tl.int64))
                nearest = tl.where(cols == c1, -1.0, tl.minimum(nearest, row1, propagate_nan=tl.PropagateNan.ALL))
                nearest = _taken(nearest, cols, take2, c2, row2)
                tl.store(chosen + step + 1, c2.to(tl.int64), mask=take2)
                step += 1 + take2.to(tl.int32)
                if AHEAD == 4:
                    take3 = take2 & ok3 & (near3 >= v3)
                    nearest = _taken(nearest, cols, take3, c3, row3)
                    tl.store(chosen + step, c3.to(tl.int64), mask=take3)
                    take4 = take3 & ok4 & (near4 >= v4)
                    nearest = _taken(nearest, cols, take4, c4, row4)
                    tl.store(chosen + step + take3.to(tl.int32), c4.to(tl.int64), mask=take4)
                    step += take3.to(tl.int32) + take4.to(tl.int32)

    if not _INTERPRET:  # rerunning the kernel while timing it only rewrites the same choices
        _tuned = triton.autotune([triton.Config({"AHEAD": a}, num_warps=w) for w in WARPS for a in AHEADS],
                                 key=["BLOCK"])(_max_min_kernel)
