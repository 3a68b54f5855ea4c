"""Retrieval stability: does a compressed embedding still retrieve its own image?

The team's retrieval pipeline indexes uncompressed embeddings and queries with compressed ones.
For each sample, its compressed pooled embedding is the query and the dataset's uncompressed
pooled embeddings are the gallery; the sample is a hit at ``k`` when its own uncompressed
embedding is among the ``k`` most similar (cosine). The case KPI ``retrieval_recall_at_k`` is the
mean of the hits over samples (its interval: a bootstrap over samples, as for any per-sample KPI).
"""

from __future__ import annotations

import torch

KS = (1, 5)


def sample_key(k: int) -> str:
    """Per-sample KPI: 1.0 when the sample retrieves itself within ``k``, else 0.0."""
    return f"retrieval_hit_at_{k}"


def case_key(k: int) -> str:
    return f"retrieval_recall_at_{k}"


def self_ranks(queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """Rank of each query's own gallery item, 0 = retrieved first -> [N] (int64).

    ``queries`` [N, C] (compressed pooled embeddings), ``gallery`` [N, C] (uncompressed), row i of
    both from sample i. Cosine similarity; only gallery items strictly more similar than the query's
    own push it down, so identical images (a tie) cost nothing and the ``none`` method ranks 0.

    >>> g = torch.eye(3)
    >>> self_ranks(g, g).tolist(), self_ranks(g[[1, 0, 2]], g).tolist()
    ([0, 0, 0], [1, 1, 0])
    """
    q = torch.nn.functional.normalize(queries.float(), dim=-1)
    g = torch.nn.functional.normalize(gallery.float(), dim=-1)
    similarity = q @ g.T  # [N, N]
    own = similarity.diagonal()
    return (similarity > own[:, None]).sum(dim=1)


def self_hits(queries: torch.Tensor, gallery: torch.Tensor, ks: tuple[int, ...] = KS) -> list[dict[str, float]]:
    """Per sample, ``{retrieval_hit_at_k: 0.0 | 1.0}`` for each ``k`` smaller than the gallery
    (retrieving among ``k`` or fewer images always hits, so says nothing). Shapes as :func:`self_ranks`."""
    ranks = self_ranks(queries, gallery).tolist()
    usable = [k for k in ks if k < len(ranks)]
    return [{sample_key(k): float(rank < k) for k in usable} for rank in ranks]
