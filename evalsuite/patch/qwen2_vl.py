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

Qwen2.5-VL's tower reorders rows into attention windows and alternates windowed and
full attention; unit dropping there is not supported yet (:func:`check_supported`).
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
    if getattr(visual.config, "fullatt_block_indexes", None) is not None or hasattr(visual, "get_window_index"):
        raise UnsupportedTower("unit dropping inside the Qwen2.5-VL vision tower (windowed attention) is not "
                               "supported yet; use insertion = \"pre_llm\"")
    if getattr(visual, "spatial_merge_size", 2) != 2:
        raise UnsupportedTower("the vision tower does not merge 2x2 patches")


class _Cut:
    """Which rows of the original sequence are still in the tower, per image."""

    def __init__(self, units: list[int], device: torch.device):
        self.units = list(units)  # units per image, now
        self.unit_ids = [torch.arange(n, device=device) for n in units]  # original unit index of each kept unit
        self.rows: torch.Tensor | None = None  # kept rows in original indexing (None: all)
        self.block_input: torch.Tensor | None = None

    def cu_seqlens(self, like: torch.Tensor) -> torch.Tensor:
        lengths = torch.tensor([0] + [n * UNIT for n in self.units], device=like.device)
        return lengths.cumsum(0).to(like.dtype)


def tower_with_unit_drop(visual: torch.nn.Module, pixels: torch.Tensor, grid_thw: torch.Tensor,
                         targets: dict[int, list[int]], scores: UnitScores) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run the tower, keeping ``targets[block][b]`` units of image ``b`` after each listed block.

    ``pixels`` [P, C*T*p*p] and ``grid_thw`` [B, 3] as the processor gives them. Returns the merged
    visual tokens [sum K_b, D] and, per image, the original unit index of each kept token [K_b]
    (ascending: the image's pad slots in the prompt they fill).
    """
    check_supported(visual)
    units = [int(g.prod()) // UNIT for g in grid_thw]
    cut = _Cut(units, pixels.device)
    full_rows = sum(units) * UNIT
    handles = []

    def fix_kwargs(kwargs: dict) -> dict:
        if cut.rows is None:
            return kwargs
        fixed = {}
        for key, value in kwargs.items():
            if key == "cu_seqlens":
                value = cut.cu_seqlens(value)
            elif key == "max_seqlen" and value is not None:
                longest = max(cut.units) * UNIT
                value = (torch.tensor(longest, dtype=value.dtype, device=value.device) if torch.is_tensor(value)
                         else longest)
            elif torch.is_tensor(value) and value.dim() and value.shape[0] == full_rows:
                value = value[cut.rows]
            elif isinstance(value, tuple) and all(torch.is_tensor(v) and v.shape[0] == full_rows for v in value):
                value = tuple(v[cut.rows] for v in value)
            fixed[key] = value
        return fixed

    def pre_block(module, args, kwargs):
        cut.block_input = args[0] if args else kwargs.get("hidden_states")
        return args, fix_kwargs(kwargs)

    def post_block(index):
        def hook(module, args, kwargs, output):
            wanted = targets.get(index)
            if wanted is None or all(w >= n for w, n in zip(wanted, cut.units)):
                return output
            x = output
            unit_scores = scores(index, x, cut.block_input, cut.units)  # [sum units]
            keep_rows, new_units, new_ids, offset = [], [], [], 0
            for b, n in enumerate(cut.units):
                k = min(n, wanted[b])
                chosen = unit_scores[offset:offset + n].topk(k).indices.sort().values  # keep the units' order
                keep_rows.append(((offset + chosen)[:, None] * UNIT + torch.arange(UNIT, device=x.device)).flatten())
                new_ids.append(cut.unit_ids[b][chosen])
                new_units.append(k)
                offset += n
            local = torch.cat(keep_rows)
            cut.rows = local if cut.rows is None else cut.rows[local]
            cut.units, cut.unit_ids = new_units, new_ids
            return x[local]
        return hook

    for index, block in enumerate(visual.blocks):
        handles.append(block.register_forward_pre_hook(pre_block, with_kwargs=True))
        handles.append(block.register_forward_hook(post_block(index), with_kwargs=True))
    try:
        out = visual(pixels, grid_thw=grid_thw)
    finally:
        for handle in handles:
            handle.remove()
    merged = out if isinstance(out, torch.Tensor) else out.pooler_output
    return merged, cut.unit_ids


def v2drop_scores(index: int, x: torch.Tensor, x_in: torch.Tensor, units: list[int]) -> torch.Tensor:
    """Encoder V2Drop on units: how much a unit's four rows changed in the block (L2 norm of the
    difference, summed over the rows); the least-changed units are dropped."""
    return (x.float() - x_in.float()).norm(dim=-1).view(-1, UNIT).sum(dim=1)


def random_scores(generator: torch.Generator) -> UnitScores:
    """Uniform scores from ``generator`` (on the CPU, for the same draw on every device)."""
    def scores(index, x, x_in, units):
        return torch.rand(sum(units), generator=generator).to(x.device)
    return scores
