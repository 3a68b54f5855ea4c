"""A FLOP model of a ViT block, for the speedup a token schedule implies."""

from __future__ import annotations


def block_flops(attn_tokens: int, mlp_tokens: int, dim: int, mlp_ratio: float = 4.0) -> float:
    """Multiply-adds of one block: qkv + proj + attention on ``attn_tokens``, MLP on ``mlp_tokens``."""
    n = attn_tokens
    attention = 4 * n * dim * dim + 2 * n * n * dim
    mlp = 2 * mlp_tokens * dim * dim * mlp_ratio
    return attention + mlp


def ideal_speedup(schedule: list[int], full: int, num_prefix: int, dim: int) -> float:
    """FLOPs of the uncompressed encoder / FLOPs under ``schedule`` (see ``Compressor.schedule``).

    >>> ideal_speedup([196] * 24, 196, 1, 384)
    1.0
    """
    pairs = list(zip(schedule[::2], schedule[1::2]))
    base = sum(block_flops(full + num_prefix, full + num_prefix, dim) for _ in pairs)
    reduced = sum(block_flops(a + num_prefix, m + num_prefix, dim) for a, m in pairs)
    return base / reduced
