"""Tiny random Qwen2-VL / Qwen2.5-VL models built from configs with transformers' own classes, and inputs
shaped like a processor output (the image processor is transformers' own; the text is random token ids, as
no tokenizer vocabulary ships offline). Shared by the in-LM dropping and static-decode tests and the bench."""

from __future__ import annotations

import numpy as np
import torch

IMAGE, VIDEO, VSTART, VEND = 900, 901, 902, 903
EOS, PAD = 2, 0
TEXT = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
SPECIAL = dict(image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VSTART, vision_end_token_id=VEND,
               bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD)


def tiny_qwen2_vl(family: str = "qwen2_vl", seed: int = 0):
    """A 4-layer random model (hidden 64, 4 heads, 2 kv heads, vocab 1000; vision depth 2, merge 2x2)."""
    import transformers as tf

    if family == "qwen2_vl":
        vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, spatial_merge_size=2,
                      patch_size=14, temporal_patch_size=2, in_channels=3)
        config = tf.Qwen2VLConfig(text_config=TEXT, vision_config=vision, **SPECIAL)
        cls = tf.Qwen2VLForConditionalGeneration
    else:
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                      spatial_merge_size=2, patch_size=14, temporal_patch_size=2, in_channels=3, window_size=56,
                      fullatt_block_indexes=[1])
        config = tf.Qwen2_5_VLConfig(text_config=TEXT, vision_config=vision, **SPECIAL)
        cls = tf.Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(seed)
    model = cls(config).eval()
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = 1, EOS, PAD
    return model


def image_processor():
    from transformers import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112)


def make_batch(specs, seed: int = 0) -> dict:
    """``specs``: (height, width, text tokens after the image) per sample -> a left-padded batch like a
    processor output: input_ids/attention_mask/mm_token_type_ids ``[B, L]``, pixel_values, image_grid_thw."""
    rng = np.random.default_rng(seed)
    proc = image_processor()
    rows, pixels, grids = [], [], []
    for h, w, ntext in specs:
        px = proc(images=[rng.integers(0, 255, (h, w, 3), dtype=np.uint8)], return_tensors="pt")
        n = int(px["image_grid_thw"].prod()) // 4
        rows.append([5, 6, 7, VSTART] + [IMAGE] * n + [VEND] + rng.integers(10, 800, ntext).tolist())
        pixels.append(px["pixel_values"])
        grids.append(px["image_grid_thw"])
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return dict(input_ids=ids, attention_mask=mask, mm_token_type_ids=(ids == IMAGE).int(),
                pixel_values=torch.cat(pixels), image_grid_thw=torch.cat(grids))


def select(batch: dict, i: int) -> dict:
    """Sample ``i`` of ``make_batch``'s output alone, padding removed."""
    keep = batch["attention_mask"][i].bool()
    patches = batch["image_grid_thw"].prod(-1)
    start = int(patches[:i].sum())
    return dict(input_ids=batch["input_ids"][i, keep][None], attention_mask=batch["attention_mask"][i, keep][None],
                mm_token_type_ids=batch["mm_token_type_ids"][i, keep][None],
                pixel_values=batch["pixel_values"][start:start + int(patches[i])],
                image_grid_thw=batch["image_grid_thw"][i:i + 1])
