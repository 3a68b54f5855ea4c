"""Dropping whole merge units inside the Qwen2-VL vision tower.

The tower's PatchMerger concatenates each 2x2 block of neighbouring patches (a merge
unit, four consecutive rows of the tower's sequence: the image processor orders
patches unit by unit) into one visual token. So a unit is dropped as one: after the
configured blocks, :func:`tower_with_unit_drop` keeps the top-scoring units of each
image and removes their four rows; the merger then makes one token per kept unit.

Nothing of the model is rewritten: a forward hook on a dropping block cuts its output,
and a pre-hook on every later block (and the merger) cuts what the tower's own forward
passes them (the rotary ``position_embeddings`` and any per-row tensor are gathered
for the kept rows; ``cu_seqlens`` and ``max_seqlen`` are recomputed per image from the
kept counts). The hooks are removed when the forward returns. With nothing to drop no
hook changes anything, so the tower equals the unpatched one (parity).

ToMe merges whole units instead (:class:`UnitMerge`), each merged unit keeping one slot.

Qwen2.5-VL's tower reorders units into attention windows (of whole units) and attends within
windows except in its full-attention blocks: the windows' ``cu_seqlens`` are recomputed from
the kept units of each window, and the merger's output is put back in window order before
the tower restores raster order, so each kept token returns with its raster unit index.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

UNIT = 4  # rows per merge unit (2x2 patches)

# (block index, hidden [R, E] after the block, hidden before it, units per image) -> scores [R / 4]
UnitScores = Callable[[int, torch.Tensor, torch.Tensor, list[int]], torch.Tensor]


class UnsupportedTower(ValueError):
    """A tower this patch cannot drop units in."""


def check_supported(visual: torch.nn.Module) -> None:
    if getattr(visual, "spatial_merge_size", 2) != 2:
        raise UnsupportedTower("the vision tower does not merge 2x2 patches")
    full = _full_attention_blocks(visual)
    if full is not None and 0 in full:
        raise UnsupportedTower("a windowed tower whose first block attends fully: its windows cannot be read")


def _full_attention_blocks(visual: torch.nn.Module) -> set[int] | None:
    """Qwen2.5-VL: the blocks attending over the whole image (the others attend within windows);
    None for a tower without windows (Qwen2-VL)."""
    blocks = getattr(visual, "fullatt_block_indexes", None)
    if blocks is None:
        blocks = getattr(visual.config, "fullatt_block_indexes", None)
    return None if blocks is None else set(blocks)


def _window_index(visual: torch.nn.Module, grid_thw: torch.Tensor) -> torch.Tensor:
    """[U] the raster unit index at each position of the tower's window order (the model's own helper)."""
    if hasattr(visual, "get_window_index"):  # older transformers: a method of the tower
        return visual.get_window_index(grid_thw)[0]
    from transformers.vision_utils import get_vision_window_index

    return get_vision_window_index(grid_thw, visual.spatial_merge_size, visual.window_size, visual.patch_size)[0]


class _Cut:
    """Which rows of the original sequence are still in the tower, per image."""

    def __init__(self, units: list[int], device: torch.device):
        self.units = list(units)  # units per image, now
        self.original_units = list(units)
        self.unit_ids = [torch.arange(n, device=device) for n in units]  # original unit index of each kept unit
        self.sizes = [torch.ones(n, device=device) for n in units]  # original units each kept unit stands for
        self.rows: torch.Tensor | None = None  # kept rows in original indexing (None: all)
        self.block_input: torch.Tensor | None = None

    def cu_seqlens(self, like: torch.Tensor) -> torch.Tensor:
        lengths = torch.tensor([0] + [n * UNIT for n in self.units], device=like.device)
        return lengths.cumsum(0).to(like.dtype)

    def kept_positions(self) -> torch.Tensor:
        """[K] window-order (global) positions of the kept units."""
        offsets = [0]
        for n in self.original_units[:-1]:
            offsets.append(offsets[-1] + n)
        return torch.cat([ids + off for ids, off in zip(self.unit_ids, offsets)])

    def window_seqlens(self, windows: torch.Tensor) -> torch.Tensor:
        """``cu_window_seqlens`` for the kept units, from the original one ``windows`` [W + 1]."""
        bounds = (windows // UNIT).to(torch.long)
        window = torch.bucketize(self.kept_positions(), bounds[1:], right=True)  # window of each kept unit
        counts = torch.bincount(window, minlength=len(bounds) - 1)
        cu = torch.cat([windows.new_zeros(1), (counts * UNIT).cumsum(0).to(windows.dtype)])
        return torch.unique_consecutive(cu)  # a window left empty is no segment (the model drops them too)


def tower_with_unit_drop(visual: torch.nn.Module, pixels: torch.Tensor, grid_thw: torch.Tensor,
                         targets: dict[int, list[int]],
                         scores: UnitScores) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Run the tower, keeping ``targets[block][b]`` units of image ``b`` after each listed block.

    ``pixels`` [P, C*T*p*p] and ``grid_thw`` [B, 3] as the processor gives them. ``scores`` ranks
    units to keep, or (with ``merges = True``) merges them: ``scores.merge(units [n, 4*E], k, sizes [n])
    -> (kept unit indices [k] ascending, merged units [k, 4*E], sizes [k])``. Returns the merged
    visual tokens [sum K_b, D] and, per image, the original unit index of each kept token [K_b]
    (ascending: the image's pad slots in the prompt they fill) and the units each stands for [K_b].
    """
    check_supported(visual)
    units = [int(g.prod()) // UNIT for g in grid_thw]
    cut = _Cut(units, pixels.device)
    full_rows = sum(units) * UNIT
    full_blocks = _full_attention_blocks(visual)
    windows: dict[str, torch.Tensor] = {}  # the original cu_window_seqlens, read at the first block
    handles = []

    def fix_kwargs(index: int, kwargs: dict) -> dict:
        windowed = full_blocks is not None and index not in full_blocks
        if windowed and "cu_seqlens" in kwargs and "cu" not in windows:
            windows["cu"] = kwargs["cu_seqlens"]
        if cut.rows is None:
            return kwargs
        fixed = {}
        cu = cut.window_seqlens(windows["cu"]) if windowed else None
        for key, value in kwargs.items():
            if key == "cu_seqlens":
                value = cu.to(value.dtype) if windowed else cut.cu_seqlens(value)
            elif key == "max_seqlen" and value is not None:
                longest = int((cu[1:] - cu[:-1]).max()) if windowed else max(cut.units) * UNIT
                value = (torch.tensor(longest, dtype=value.dtype, device=value.device) if torch.is_tensor(value)
                         else longest)
            elif torch.is_tensor(value) and value.dim() and value.shape[0] == full_rows:
                value = value[cut.rows]
            elif isinstance(value, tuple) and all(torch.is_tensor(v) and v.shape[0] == full_rows for v in value):
                value = tuple(v[cut.rows] for v in value)
            fixed[key] = value
        return fixed

    def pre_block(index):
        def hook(module, args, kwargs):
            cut.block_input = args[0] if args else kwargs.get("hidden_states")
            return args, fix_kwargs(index, kwargs)
        return hook

    def scatter_merged(module, args, output):
        """Windowed tower: the model reorders the merger's output back to raster order by indexing all
        units, so the kept ones go back in their window-order places (the rest are never read)."""
        if cut.rows is None:
            return output
        full = output.new_zeros(sum(cut.original_units), output.shape[-1])
        full[cut.kept_positions()] = output
        return full

    def post_block(index):
        def hook(module, args, kwargs, output):
            wanted = targets.get(index)
            if wanted is None or all(w >= n for w, n in zip(wanted, cut.units)):
                return output
            x = output
            merging = getattr(scores, "merges", False)
            unit_scores = None if merging else scores(index, x, cut.block_input, cut.units)  # [sum units]
            keep_rows, new_units, new_ids, new_sizes, merged_rows, offset = [], [], [], [], [], 0
            for b, n in enumerate(cut.units):
                k = min(n, wanted[b])
                if merging:  # a unit's four rows merge row by row into another unit's (its slot and positions)
                    units_x = x[offset * UNIT:(offset + n) * UNIT].reshape(n, -1)
                    chosen, kept, sizes = scores.merge(units_x, k, cut.sizes[b])
                    merged_rows.append(kept.reshape(k * UNIT, -1))
                else:
                    chosen = unit_scores[offset:offset + n].topk(k).indices.sort().values  # keep the units' order
                    sizes = cut.sizes[b][chosen]
                keep_rows.append(((offset + chosen)[:, None] * UNIT + torch.arange(UNIT, device=x.device)).flatten())
                new_ids.append(cut.unit_ids[b][chosen])
                new_units.append(k)
                new_sizes.append(sizes)
                offset += n
            local = torch.cat(keep_rows)
            cut.rows = local if cut.rows is None else cut.rows[local]
            cut.units, cut.unit_ids, cut.sizes = new_units, new_ids, new_sizes
            return torch.cat(merged_rows) if merging else x[local]
        return hook

    def attention_hook(index):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            scores.observe(index, module, hidden, kwargs.get("cu_seqlens"), kwargs.get("position_embeddings"))
        return hook

    for index, block in enumerate(visual.blocks):
        handles.append(block.register_forward_pre_hook(pre_block(index), with_kwargs=True))
        handles.append(block.register_forward_hook(post_block(index), with_kwargs=True))
        if getattr(scores, "needs_attention", False) and index in targets:
            handles.append(block.attn.register_forward_pre_hook(attention_hook(index), with_kwargs=True))
    if full_blocks is not None:
        handles.append(visual.merger.register_forward_hook(scatter_merged))
    try:
        out = visual(pixels, grid_thw=grid_thw)
    finally:
        for handle in handles:
            handle.remove()
    merged = out if isinstance(out, torch.Tensor) else out.pooler_output
    if full_blocks is None:
        return merged, cut.unit_ids, cut.sizes
    # windowed: ``merged`` is in raster order over all units; the kept ones, by raster index, per image
    raster = _window_index(visual, grid_thw).to(merged.device)[cut.kept_positions()]
    tokens, ids, sizes, start, offset = [], [], [], 0, 0
    for n_now, n_all, size in zip(cut.units, cut.original_units, cut.sizes):
        local = raster[start:start + n_now] - offset
        order = local.argsort()
        ids.append(local[order])
        sizes.append(size[order])
        tokens.append(merged[offset + local[order]])
        start, offset = start + n_now, offset + n_all
    return torch.cat(tokens), ids, sizes


def v2drop_scores(index: int, x: torch.Tensor, x_in: torch.Tensor, units: list[int]) -> torch.Tensor:
    """Encoder V2Drop on units: how much a unit's four rows changed in the block (L2 norm of the
    difference, summed over the rows); the least-changed units are dropped."""
    return (x.float() - x_in.float()).norm(dim=-1).view(-1, UNIT).sum(dim=1)


class AttentionReceived:
    """A-ViT-style unit scores: the attention a unit's four rows receive in the dropping block,
    averaged over heads and over the queries that attend to them (the tower has no class token): its
    image, or its window in a windowed block of Qwen2.5-VL.

    The block's attention runs in a fused kernel, so its probabilities are recomputed here from
    the attention module's input: ``qkv``, the rotary embedding, ``softmax(q k^T / sqrt(d))`` per
    image (``cu_seqlens``), in float32; only the dropping blocks pay for it.
    """

    needs_attention = True

    def __init__(self):
        self._importance: dict[int, torch.Tensor] = {}

    def observe(self, index: int, attn: torch.nn.Module, hidden: torch.Tensor, cu_seqlens: torch.Tensor,
                position_embeddings) -> None:
        probs = attention_probs(attn, hidden, cu_seqlens, position_embeddings)
        self._importance[index] = torch.cat([p.mean(dim=(0, 1)) for p in probs])  # [R] attention each row receives

    def __call__(self, index, x, x_in, units):
        return self._importance.pop(index).view(-1, UNIT).sum(dim=1)


def attention_probs(attn: torch.nn.Module, hidden: torch.Tensor, cu_seqlens: torch.Tensor,
                    position_embeddings) -> list[torch.Tensor]:
    """The attention probabilities of a Qwen2-VL tower attention on ``hidden`` [R, E]: per image of
    ``cu_seqlens`` a [H, n, n] float32 tensor (rows: queries), as its fused kernel computes them."""
    if position_embeddings is None or cu_seqlens is None:
        raise UnsupportedTower("A-ViT-style scores need the tower attention's position_embeddings and "
                               "cu_seqlens (this transformers version passes neither)")
    rows = hidden.shape[0]
    q, k = attn.qkv(hidden).reshape(rows, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)[:2]
    cos, sin = (t.float().unsqueeze(-2) for t in position_embeddings)
    q, k = q.float(), k.float()
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    bounds = cu_seqlens.tolist()
    probs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        qi, ki = q[start:end].transpose(0, 1), k[start:end].transpose(0, 1)  # [H, n, d]
        probs.append(torch.softmax(qi @ ki.transpose(1, 2) / qi.shape[-1] ** 0.5, dim=-1))
    return probs


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class UnitMerge:
    """ToMe on whole units: bipartite soft matching of the units' four rows taken together (cosine of
    the block's output, ToMe's keys being inside the fused attention), merged row by row as
    size-weighted means (:func:`evalsuite.vlm.select.tome_merge`). Without proportional attention:
    SDPA takes no per-key bias here, so a merged unit pulls like one unit (ToMe's ``_nopa``)."""

    merges = True

    @staticmethod
    def merge(units: torch.Tensor, k: int, sizes: torch.Tensor):
        from ..vlm.select import tome_merge

        return tome_merge(units, k, sizes)


def random_scores(generator: torch.Generator) -> UnitScores:
    """Uniform scores from ``generator`` (on the CPU, for the same draw on every device)."""
    def scores(index, x, x_in, units):
        return torch.rand(sum(units), generator=generator).to(x.device)
    return scores
