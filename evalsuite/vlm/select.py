"""Visual-token selection and merging between the vision tower and the language model.

Pure torch, one image at a time (images of a batch have different token counts); DivPrune's
greedy loop also has a Triton kernel for CUDA (:mod:`evalsuite.vlm.select_kernels`). Nothing here
waits for the device (no ``.item()``, no ``nonzero()``), so a selection is queued, not waited on.
Every function takes the image's visual tokens as the language model would
receive them, ``tokens`` [N, D] (merge units of the PatchMerger, row-major over
the ``grid`` (h, w) of units), and the number to keep ``k`` (1 <= k <= N), and
returns ``(index, kept, sizes)``:

- ``index`` [k] int64, ascending: the input token whose sequence slot (and M-RoPE
  position) each output token takes;
- ``kept`` [k, D]: the output tokens (a selection returns ``tokens[index]``; a merge
  returns size-weighted means);
- ``sizes`` [k]: how many input tokens each output token stands for (all 1 for a
  selection; they sum to N).

With ``k == N`` each function returns its input unchanged (the parity setting).
"""

from __future__ import annotations

import torch

from . import select_kernels


def _identity(tokens: torch.Tensor):
    n = tokens.shape[0]
    return torch.arange(n, device=tokens.device), tokens, torch.ones(n, device=tokens.device)


def _selected(tokens: torch.Tensor, index: torch.Tensor):
    index = index.sort().values
    return index, tokens[index], torch.ones(len(index), device=tokens.device)


def random_select(tokens: torch.Tensor, k: int, generator: torch.Generator | None = None, **_) -> tuple:
    """Uniformly random ``k`` of the ``N`` tokens (seeded by ``generator``, on the CPU for reproducibility)."""
    n = tokens.shape[0]
    if k >= n:
        return _identity(tokens)
    order = torch.randperm(n, generator=generator)
    return _selected(tokens, order[:k].to(tokens.device))


def tome_merge(tokens: torch.Tensor, k: int, sizes: torch.Tensor | None = None, **_) -> tuple:
    """ToMe-style bipartite soft matching on the tokens themselves, repeated until ``k`` remain.

    ``sizes`` [N]: how many inputs each token already stands for (default 1 each), the weights of
    the means and the sizes returned.

    Each round splits the current tokens into A (even) and B (odd), matches every A token to its
    most cosine-similar B token and merges the ``r = min(N_cur - k, |A|)`` best-matched A tokens into
    their partners (size-weighted mean). A merged token takes the slot of its B token.

    Between rounds a token is carried as the sum of its members' features and its size in one
    ``[N, D + 1]`` tensor, divided once at the end: the cosine of a sum is that of the mean, so the
    matching is the same, and at batch 1 on a GPU the step's time is its launch count.
    """
    n = tokens.shape[0]
    if k >= n:
        index, kept, ones = _identity(tokens)
        return index, kept, ones if sizes is None else sizes
    index = torch.arange(n, device=tokens.device)
    sizes = (torch.ones(n, 1, device=tokens.device, dtype=torch.float32) if sizes is None
             else sizes.to(tokens.device, torch.float32)[:, None])
    carried = torch.cat([tokens.float() * sizes, sizes], dim=1)  # [N, D + 1]: member sums, then size
    d = tokens.shape[1]
    while carried.shape[0] > k:
        r = min(carried.shape[0] - k, (carried.shape[0] + 1) // 2)
        metric = torch.nn.functional.normalize(carried[:, :d], dim=-1)
        if carried.shape[0] < 2:
            break
        best, partner = (metric[::2] @ metric[1::2].T).max(dim=-1)
        order = best.argsort(descending=True)
        src, unm = order[:r], order[r:]
        in_a, in_b = carried[::2], carried[1::2]
        merged_b = in_b.index_add(0, partner[src], in_a[src])
        carried = torch.cat([in_a[unm], merged_b])
        index = torch.cat([index[::2][unm], index[1::2]])
    order = index.argsort()
    carried = carried[order]
    sizes = carried[:, d]
    return index[order], (carried[:, :d] / sizes[:, None]).to(tokens.dtype), sizes


def visionzip_select(tokens: torch.Tensor, k: int, contextual_ratio: float = 0.2, **_) -> tuple:
    """VisionZip-style: ``k - k_ctx`` dominant tokens, then ``k_ctx`` contextual tokens merged from the rest.

    VisionZip (arXiv 2412.04467) ranks tokens by the attention the vision encoder's CLS token pays
    them; Qwen2-VL's tower has no CLS token, so here a token's dominance is the attention it receives
    from all tokens, ``softmax(X X^T / sqrt(D))`` averaged over queries, computed on the language
    model's input tokens. The remaining tokens are grouped around ``k_ctx = round(contextual_ratio * k)``
    centres spread evenly over them, each joining its most cosine-similar centre; a group becomes its
    mean, in its centre's slot.
    """
    n = tokens.shape[0]
    if k >= n:
        return _identity(tokens)
    x = tokens.float()
    if tokens.is_cuda:  # bf16 scores on a GPU, as the encoder's own attention kernels compute them
        half = tokens.to(torch.bfloat16)
        scores = (half @ half.T).float()
    else:
        scores = x @ x.T
    attention = torch.softmax(scores / x.shape[-1] ** 0.5, dim=-1).mean(dim=0)  # [N] attention received
    k_ctx = min(k - 1, max(0, round(contextual_ratio * k))) if k > 1 else 0
    dominant = attention.topk(k - k_ctx).indices
    if k_ctx == 0:
        return _selected(tokens, dominant)
    # the remaining tokens, ascending, without asking the device how many there are (nonzero() would
    # wait for it): the n - (k - k_ctx) zeros come first in a stable sort, in index order
    dominated = torch.zeros(n, dtype=torch.uint8, device=tokens.device).index_fill_(0, dominant, 1)
    rest_index = dominated.sort(stable=True).indices[: n - len(dominant)]
    centre_at = torch.linspace(0, len(rest_index) - 1, k_ctx, device=tokens.device).round().long()
    centres = rest_index[centre_at]
    x_rest = x[rest_index]
    unit_rest = torch.nn.functional.normalize(x, dim=-1)[rest_index]
    group = (unit_rest @ unit_rest[centre_at].T).argmax(dim=-1)  # [N_rest] centre of each remaining token
    sums = torch.zeros(k_ctx, x.shape[1], device=x.device).index_add_(0, group, x_rest)
    counts = torch.zeros(k_ctx, device=x.device).index_add_(0, group, torch.ones(len(group), device=x.device))
    merged = sums / counts.clamp(min=1)[:, None]
    index = torch.cat([dominant, centres])
    kept = torch.cat([x[dominant], merged])
    sizes = torch.cat([torch.ones(len(dominant), device=x.device), counts])
    order = index.argsort()
    return index[order], kept[order].to(tokens.dtype), sizes[order]


def divprune_select(tokens: torch.Tensor, k: int, **_) -> tuple:
    """DivPrune (arXiv 2503.02175): the ``k`` tokens of maximal minimum pairwise cosine distance.

    Greedy max-min: start from the token whose nearest neighbour is farthest, then repeatedly add the
    token farthest (cosine distance ``1 - cos``) from the tokens selected so far. On CUDA the loop is
    one kernel (:mod:`evalsuite.vlm.select_kernels`), choosing the same tokens.
    """
    n = tokens.shape[0]
    if k >= n:
        return _identity(tokens)
    distance, start = divprune_distances(tokens)
    if select_kernels.supports(distance):
        return _selected(tokens, select_kernels.max_min_greedy(distance, start, k))
    return _selected(tokens, max_min_greedy(distance, start, k))


def divprune_distances(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DivPrune's inputs for ``tokens`` [N, D]: the cosine distances ``1 - cos`` [N, N] float32 and
    the start token, the one whose nearest other token is farthest (0-d int64, on the tokens' device).
    On a GPU the cosines are float16 products of unit vectors, as in DivPrune's own code (fp16
    features); on a CPU float32."""
    unit = torch.nn.functional.normalize(tokens.float(), dim=-1)
    if tokens.is_cuda:
        unit = unit.half()
    distance = 1.0 - (unit @ unit.T).float()  # [N, N]
    first = distance.masked_fill(torch.eye(len(tokens), dtype=torch.bool, device=tokens.device), float("inf"))
    return distance, first.min(dim=1).values.argmax()


def max_min_greedy(distance: torch.Tensor, start: torch.Tensor, k: int) -> torch.Tensor:
    """From ``start``, ``k - 1`` times the token farthest from those chosen (the first of equal
    maxima): the ``k`` chosen [k] int64, in the order chosen. ``distance`` [N, N], ``1 <= k < N``."""
    chosen = [start]  # device tensors: no host round trip per step
    nearest = distance[start].clone()  # [N] distance of every token to the selected set
    nearest[start] = -1.0
    for _ in range(k - 1):
        nxt = nearest.argmax()
        chosen.append(nxt)
        nearest = torch.minimum(nearest, distance[nxt])
        nearest[nxt] = -1.0
    return torch.stack(chosen)


def kept_count(n: int, keep: float) -> int:
    """Tokens kept of ``n`` at ratio ``keep``: ``round(keep * n)``, at least 1."""
    return max(1, min(n, round(keep * n)))
