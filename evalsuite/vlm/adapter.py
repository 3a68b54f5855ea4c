"""The Qwen2-VL family (Qwen2-VL, Qwen2.5-VL) as evalsuite sees a VLM.

:class:`Qwen2VLAdapter` wraps transformers' own model classes
(``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``), their
image processor and a tokenizer, and splits the model's forward into the steps a
compression method sits between:

``encode`` (image -> pixel patches and grid; an ``image``-point method resizes here)
-> ``vision`` (the vision tower, PatchMerger included: visual tokens [N, D] per image)
-> a ``pre_llm`` method keeps or merges visual tokens -> ``prefill_inputs`` (embeddings,
M-RoPE positions computed on the full sequence and gathered for the kept tokens,
attention mask) -> :func:`evalsuite.vlm.generate.greedy`.

Loading (hub id, manifest-checked local folder, or a config with random weights) is in
:mod:`evalsuite.models.qwen2_vl`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from PIL import Image

from .generate import DECODERS, PrefillInputs

SYSTEM_PROMPT = "You are a helpful assistant."
MERGE = 2  # the PatchMerger joins 2x2 neighbouring patches into one visual token


class InputError(ValueError):
    """An input the model cannot take (an image the processor refuses, a prompt too long)."""


@dataclass
class EncodedImage:
    """One processed image: ``pixel_values`` [P, C*T*p*p] flattened patches, ``grid_thw`` [3]
    (temporal, height, width in patches); ``num_tokens`` visual tokens it gives the LM."""


    pixel_values: torch.Tensor
    grid_thw: torch.Tensor
    planned_tokens: int | None = None  # downscaled: the tokens the resize aimed at (None: not resized)

    @property
    def num_tokens(self) -> int:
        return int(self.grid_thw.prod()) // MERGE**2

    @property
    def unit_grid(self) -> tuple[int, int]:
        """(rows, cols) of visual tokens (merge units)."""
        return int(self.grid_thw[1]) // MERGE, int(self.grid_thw[2]) // MERGE


class _Parts:
    """The language-model side of the VLM, as :mod:`evalsuite.vlm.generate` needs it."""

    def __init__(self, model: torch.nn.Module):
        self.language_model = model.model.language_model
        self.lm_head = model.lm_head
        self.embed_tokens = self.language_model.embed_tokens


class Qwen2VLAdapter:
    """One loaded Qwen2-VL-family model with its processor; see the module docstring."""

    kind = "vlm"
    family = "qwen2_vl"

    def __init__(self, name: str, model: torch.nn.Module, tokenizer, image_processor, *, min_pixels: int,
                 max_pixels: int, max_new_tokens: int, insertion: str = "pre_llm",
                 labels: tuple[str, ...] = (), source: str = "", decoder: str = "eager"):
        self.name, self.model = name, model.eval()
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.max_new_tokens, self.insertion = max_new_tokens, insertion
        self.labels, self.source = tuple(labels), source
        self.decoder_name = decoder
        self.decoder = DECODERS.get(decoder)()  # how answers are decoded (evalsuite.vlm.generate.DECODERS)
        config = model.config
        self.image_token_id = config.image_token_id
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.context = int(text.max_position_embeddings)
        self.num_layers = int(text.num_hidden_layers)
        self.end_ids = {tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.end_ids)
        self.parts = _Parts(model)
        self._rope_params = set(inspect.signature(model.model.get_rope_index).parameters)

    # -- bookkeeping the engine expects of an adapter -------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device, dtype: torch.dtype | None = None) -> "Qwen2VLAdapter":
        self.model.to(device=device, dtype=dtype)
        return self

    def env(self) -> dict[str, str]:
        """What every result row records about the model and its processor."""
        return {"min_pixels": str(self.min_pixels), "max_pixels": str(self.max_pixels),
                "max_new_tokens": str(self.max_new_tokens), "insertion": self.insertion, "decoder": self.decoder_name,
                "model_source": self.source, "attn_implementation": str(self.model.config._attn_implementation)}

    # -- steps ----------------------------------------------------------------------------
    def encode(self, image: Image.Image, scale: float = 1.0) -> EncodedImage:
        """RGB image -> patches (the processor's resize within min/max pixels); ``scale`` < 1 first
        shrinks the processed size by that factor per side, to whole merge units (``downscale``)."""
        planned = None
        try:
            if scale != 1.0:
                full = self.encode(image)
                unit = MERGE * self.image_processor.patch_size
                h = max(1, round(int(full.grid_thw[1]) * self.image_processor.patch_size * scale / unit)) * unit
                w = max(1, round(int(full.grid_thw[2]) * self.image_processor.patch_size * scale / unit)) * unit
                image = image.resize((w, h), Image.BICUBIC)
                planned = (h // unit) * (w // unit)  # the processor keeps it unless min/max pixels forbid
            out = self.image_processor(images=[image], return_tensors="pt")
        except InputError:
            raise
        except Exception as exc:  # the processor's own refusals (aspect ratio, size, mode)
            raise InputError(f"the image processor cannot take this image ({image.size[0]}x{image.size[1]}): "
                             f"{type(exc).__name__}: {exc}") from None
        return EncodedImage(out["pixel_values"], out["image_grid_thw"][0], planned)

    def prompt_ids(self, prompt: str, num_visual: int) -> list[int]:
        """Token ids of the chat turn asking ``prompt`` about one image of ``num_visual`` visual tokens."""
        text = (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n<|vision_start|>"
                + "<|image_pad|>" * num_visual + f"<|vision_end|>{prompt}<|im_end|>\n<|im_start|>assistant\n")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) + self.max_new_tokens > self.context:
            raise InputError(f"prompt of {len(ids)} tokens ({num_visual} visual) plus max_new_tokens "
                             f"{self.max_new_tokens} exceeds the model's context of {self.context}")
        return ids

    @torch.inference_mode()
    def vision(self, images: list[EncodedImage]) -> list[torch.Tensor]:
        """The vision tower and PatchMerger on a batch of images -> per image [N_i, D] visual tokens."""
        visual = self.model.model.visual
        pixels = torch.cat([im.pixel_values for im in images]).to(self.device, self.dtype)
        grid = torch.stack([im.grid_thw for im in images]).to(self.device)
        out = visual(pixels, grid_thw=grid)
        merged = out if isinstance(out, torch.Tensor) else out.pooler_output  # newer transformers return both
        return list(merged.split([im.num_tokens for im in images]))

    @torch.inference_mode()
    def vision_with_unit_drop(self, images: list[EncodedImage], method,
                              generator: torch.Generator) -> tuple[list, list, list]:
        """The tower dropping (or merging) whole merge units (``method``: a resolved ``vision``-point
        method) -> per image the kept visual tokens [K_b, D], their unit indices [K_b] (the slots they
        fill) and the original units each stands for [K_b]."""
        from ..methods.state import stage_counts
        from ..patch import qwen2_vl as tower_patch
        from .methods import tower_layers

        visual = self.model.model.visual
        tower_patch.check_supported(visual)
        layers = tower_layers(method, len(visual.blocks))
        counts = [stage_counts(im.num_tokens, method.keep, len(layers)) for im in images]
        targets = {layer: [c[i] for c in counts] for i, layer in enumerate(layers)}
        scores = {"random": lambda: tower_patch.random_scores(generator), "v2drop": lambda: tower_patch.v2drop_scores,
                  "avit": tower_patch.AttentionReceived, "tome": tower_patch.UnitMerge}[method.tower]()
        pixels = torch.cat([im.pixel_values for im in images]).to(self.device, self.dtype)
        grid = torch.stack([im.grid_thw for im in images]).to(self.device)
        merged, unit_ids, sizes = tower_patch.tower_with_unit_drop(visual, pixels, grid, targets, scores)
        return list(merged.split([len(u) for u in unit_ids])), unit_ids, sizes

    @torch.inference_mode()
    def prefill_inputs(self, ids: list[list[int]], images: list[EncodedImage], tokens: list[torch.Tensor],
                       slots: list[torch.Tensor] | None = None) -> PrefillInputs:
        """The language model's inputs for a batch.

        ``ids[b]`` the full prompt (one ``<|image_pad|>`` per uncompressed visual token of
        ``images[b]``); ``tokens[b]`` [K_b, D] the visual tokens to place, in slot order;
        ``slots[b]`` [K_b] ascending: which of the image's N_b pad slots each takes (None: all, K_b = N_b).
        M-RoPE positions come from the model's ``get_rope_index`` on the full sequence; dropped
        slots are removed with their positions, so kept tokens keep their original positions.
        Rows are left padded with the pad token's embedding (as ``generate`` pads).
        """
        device = self.device
        embed = self.parts.embed_tokens
        length = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(ids), length, dtype=torch.long)
        for b, row in enumerate(ids):
            input_ids[b, length - len(row):] = torch.tensor(row)
            mask[b, length - len(row):] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        positions = self._rope_index(input_ids, mask, torch.stack([im.grid_thw for im in images]).to(device))
        embeds = embed(input_ids)
        is_image = input_ids == self.image_token_id
        rows, row_pos, row_visual = [], [], []
        for b in range(len(ids)):
            real = mask[b].bool()
            keep = real.clone()
            slot_index = is_image[b].nonzero().squeeze(1)  # [N_b] sequence index of each pad slot
            if len(slot_index) != images[b].num_tokens:
                raise RuntimeError(f"sample {b}: {len(slot_index)} image slots for {images[b].num_tokens} tokens")
            row = embeds[b].clone()
            if slots is None or slots[b] is None:
                row[slot_index] = tokens[b].to(row.dtype)
            else:
                dropped = torch.ones(len(slot_index), dtype=torch.bool, device=device)
                dropped[slots[b]] = False
                keep[slot_index[dropped]] = False
                row[slot_index[slots[b]]] = tokens[b].to(row.dtype)
            rows.append(row[keep])
            row_pos.append(positions[:, b, keep])
            row_visual.append(is_image[b, keep])
        new_length = max(len(r) for r in rows)
        pad_embed = embed(torch.tensor([self.pad_id], device=device))[0]
        out_embeds = pad_embed.expand(len(ids), new_length, -1).clone()
        out_mask = torch.zeros(len(ids), new_length, dtype=torch.long, device=device)
        out_pos = torch.zeros(3, len(ids), new_length, dtype=positions.dtype, device=device)
        out_visual = torch.zeros(len(ids), new_length, dtype=torch.bool, device=device)
        for b, (row, pos, vis) in enumerate(zip(rows, row_pos, row_visual)):
            out_embeds[b, new_length - len(row):] = row
            out_mask[b, new_length - len(row):] = 1
            out_pos[:, b, new_length - len(row):] = pos
            out_visual[b, new_length - len(row):] = vis
        return PrefillInputs(out_embeds, out_mask, out_pos, out_visual)

    def _rope_index(self, input_ids: torch.Tensor, mask: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """[3, B, L] M-RoPE positions from the model's own ``get_rope_index`` (its arguments differ
        across transformers versions: newer ones take the modality of every token)."""
        kwargs = {"image_grid_thw": grid, "attention_mask": mask}
        if "mm_token_type_ids" in self._rope_params:
            kwargs["mm_token_type_ids"] = (input_ids == self.image_token_id).int()
        positions, _ = self.model.model.get_rope_index(input_ids, **kwargs)
        return positions

    def decode_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
