"""Feature similarity between compressed and uncompressed encoder outputs."""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch


def pooled_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine per image of pooled embeddings [B, C], [B, C] -> [B]."""
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


def token_emd(
    ref: torch.Tensor, out: torch.Tensor, out_sizes: torch.Tensor,
    epsilon: float = 0.02, iterations: int = 100, ref_self: torch.Tensor | None = None,
) -> torch.Tensor:
    """Earth mover's distance between the token sets of a batch of images -> [B].

    ``ref`` [B, N, C] uncompressed tokens (mass 1/N each), ``out`` [B, M, C]
    compressed tokens with mass proportional to ``out_sizes`` [B, M] (patches
    per token). Cost is ``1 - cosine``, so values lie in [0, 2]. Computed as
    the debiased Sinkhorn divergence ``OT(a, b) - (OT(a, a) + OT(b, b)) / 2``
    with entropic regularisation ``epsilon``: exactly 0 for identical sets and
    close to the exact EMD for small ``epsilon``. Batched, because the
    iterations are hundreds of small kernels: one call per batch, not per image.
    ``ref_self`` is ``OT(a, a)`` from :func:`self_transport` when the caller
    keeps it (it is the same for every method compared with ``ref``).
    """
    with one_thread_on_cpu(ref.device):
        ref = torch.nn.functional.normalize(ref.float(), dim=-1)
        out = torch.nn.functional.normalize(out.float(), dim=-1)
        log_a = _uniform_log_mass(ref)
        w = out_sizes.float().clamp(min=0)
        log_b = (w / w.sum(dim=1, keepdim=True)).log()
        cross = _sinkhorn(ref, out, log_a, log_b, epsilon, iterations)
        self_a = (_sinkhorn(ref, ref, log_a, log_a, epsilon, iterations) if ref_self is None
                  else ref_self.to(cross.device))
        self_b = _sinkhorn(out, out, log_b, log_b, epsilon, iterations)
        return (cross - 0.5 * (self_a + self_b)).clamp(min=0)


def self_transport(ref: torch.Tensor, epsilon: float = 0.02, iterations: int = 100) -> torch.Tensor:
    """``OT(a, a)`` of uncompressed tokens ``ref`` [B, N, C] -> [B], the ``ref_self`` of :func:`token_emd`."""
    with one_thread_on_cpu(ref.device):
        ref = torch.nn.functional.normalize(ref.float(), dim=-1)
        log_a = _uniform_log_mass(ref)
        return _sinkhorn(ref, ref, log_a, log_a, epsilon, iterations)


@contextmanager
def one_thread_on_cpu(device: torch.device):
    """Hundreds of small ops on ``device``: on the CPU, handing each to another thread costs far more
    than the op (and a timing would measure the host's load, not the work)."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _uniform_log_mass(x: torch.Tensor) -> torch.Tensor:
    return torch.full(x.shape[:2], -math.log(x.shape[1]), device=x.device)


def _sinkhorn(x, y, log_a, log_b, epsilon, iterations) -> torch.Tensor:
    """Entropic OT cost <plan, 1 - x y^T> per batch item, unit vectors x [B, N, C], y [B, M, C].

    Log-domain updates ``f = -eps * logsumexp((g - cost) / eps + log b)`` and the same for ``g``;
    ``-cost / eps`` is formed once, and once transposed, so each update is one broadcast add and a
    reduction over the contiguous axis (the iterations are memory-bound at 518 px)."""
    cost = 1.0 - x @ y.transpose(1, 2)  # [B, N, M]
    kernel = cost / -epsilon
    kernel_t = kernel.transpose(1, 2).contiguous()
    f = torch.zeros_like(log_a)
    g = torch.zeros_like(log_b)
    for _ in range(iterations):
        f = -epsilon * torch.logsumexp(kernel + (g / epsilon + log_b)[:, None, :], dim=2)
        g = -epsilon * torch.logsumexp(kernel_t + (f / epsilon + log_a)[:, None, :], dim=2)
    log_plan = (f[:, :, None] + g[:, None, :] - cost) / epsilon + log_a[:, :, None] + log_b[:, None, :]
    return (log_plan.exp() * cost).sum(dim=(1, 2))


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100); NaN for an empty list."""
    if not values:
        return float("nan")
    return float(torch.quantile(torch.tensor(values, dtype=torch.float64), q / 100.0))
