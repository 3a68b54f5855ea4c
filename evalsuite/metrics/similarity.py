"""Feature similarity between compressed and uncompressed encoder outputs."""

from __future__ import annotations

import math

import torch


def pooled_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine per image of pooled embeddings [B, C], [B, C] -> [B]."""
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


def token_emd(
    ref: torch.Tensor, out: torch.Tensor, out_sizes: torch.Tensor,
    epsilon: float = 0.02, iterations: int = 100,
) -> torch.Tensor:
    """Earth mover's distance between the token sets of a batch of images -> [B].

    ``ref`` [B, N, C] uncompressed tokens (mass 1/N each), ``out`` [B, M, C]
    compressed tokens with mass proportional to ``out_sizes`` [B, M] (patches
    per token). Cost is ``1 - cosine``, so values lie in [0, 2]. Computed as
    the debiased Sinkhorn divergence ``OT(a, b) - (OT(a, a) + OT(b, b)) / 2``
    with entropic regularisation ``epsilon``: exactly 0 for identical sets and
    close to the exact EMD for small ``epsilon``. Batched, because the
    iterations are hundreds of small kernels: one call per batch, not per image.
    """
    if ref.device.type == "cpu" and torch.get_num_threads() > 1:
        # hundreds of small ops: thread hand-offs cost 20x more than the work on CPU
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return token_emd(ref, out, out_sizes, epsilon, iterations)
        finally:
            torch.set_num_threads(threads)
    ref = torch.nn.functional.normalize(ref.float(), dim=-1)
    out = torch.nn.functional.normalize(out.float(), dim=-1)
    log_a = torch.full(ref.shape[:2], -math.log(ref.shape[1]), device=ref.device)
    w = out_sizes.float().clamp(min=0)
    log_b = (w / w.sum(dim=1, keepdim=True)).log()
    cross = _sinkhorn(ref, out, log_a, log_b, epsilon, iterations)
    self_a = _sinkhorn(ref, ref, log_a, log_a, epsilon, iterations)
    self_b = _sinkhorn(out, out, log_b, log_b, epsilon, iterations)
    return (cross - 0.5 * (self_a + self_b)).clamp(min=0)


def _sinkhorn(x, y, log_a, log_b, epsilon, iterations) -> torch.Tensor:
    """Entropic OT cost <plan, 1 - x y^T> per batch item, unit vectors x [B, N, C], y [B, M, C]."""
    cost = 1.0 - x @ y.transpose(1, 2)  # [B, N, M]
    f = torch.zeros_like(log_a)
    g = torch.zeros_like(log_b)
    for _ in range(iterations):
        f = -epsilon * torch.logsumexp((g[:, None, :] - cost) / epsilon + log_b[:, None, :], dim=2)
        g = -epsilon * torch.logsumexp((f[:, :, None] - cost) / epsilon + log_a[:, :, None], dim=1)
    log_plan = (f[:, :, None] + g[:, None, :] - cost) / epsilon + log_a[:, :, None] + log_b[:, None, :]
    return (log_plan.exp() * cost).sum(dim=(1, 2))


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100); NaN for an empty list."""
    if not values:
        return float("nan")
    return float(torch.quantile(torch.tensor(values, dtype=torch.float64), q / 100.0))
