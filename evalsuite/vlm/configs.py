"""Named Qwen2-VL configurations for models built with random weights.

``QWEN2_VL_2B`` holds the values of Qwen2-VL-2B-Instruct's published
``config.json`` (flat, as on the hub): built from it, a model has the 2B
checkpoint's shapes and costs, for speed figures only. ``TINY`` keeps the real
vocabulary and token ids (so the offline Qwen2 tokenizer fits) with a few narrow
layers, for CPU tests.
"""

from __future__ import annotations

import copy

_QWEN2_IDS = {
    "bos_token_id": 151643, "eos_token_id": 151645, "pad_token_id": 151643,
    "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654,
    "image_token_id": 151655, "video_token_id": 151656, "vocab_size": 151936,
}

QWEN2_VL_2B = {
    "architectures": ["Qwen2VLForConditionalGeneration"],
    "model_type": "qwen2_vl",
    **_QWEN2_IDS,
    "attention_dropout": 0.0,
    "hidden_act": "silu",
    "hidden_size": 1536,
    "initializer_range": 0.02,
    "intermediate_size": 8960,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "num_attention_heads": 12,
    "num_hidden_layers": 28,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "sliding_window": 32768,
    "use_sliding_window": False,
    "tie_word_embeddings": True,
    "use_cache": True,
    "vision_config": {
        "depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3, "hidden_size": 1536,
        "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
    },
}

TINY = {
    "architectures": ["Qwen2VLForConditionalGeneration"],
    "model_type": "qwen2_vl",
    **_QWEN2_IDS,
    "attention_dropout": 0.0,
    "hidden_act": "silu",
    "hidden_size": 64,
    "initializer_range": 0.2,  # wide enough that random weights give varied, image-dependent answers
    "intermediate_size": 128,
    "max_position_embeddings": 4096,
    "max_window_layers": 2,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},  # sums to head_dim / 2 = 8
    "use_sliding_window": False,
    "tie_word_embeddings": True,
    "use_cache": True,
    "vision_config": {
        "depth": 2, "embed_dim": 32, "mlp_ratio": 2, "num_heads": 2, "in_chans": 3, "hidden_size": 64,
        "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "initializer_range": 0.2,
    },
}

# Qwen2.5-VL: the same language model; its tower has RMSNorm, a gated MLP and windowed attention
# (windows of window_size pixels, full attention in the blocks of fullatt_block_indexes).
TINY_QWEN2_5_VL = {
    **{k: v for k, v in TINY.items() if k != "vision_config"},
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "model_type": "qwen2_5_vl",
    "vision_config": {
        "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "in_chans": 3,
        "out_hidden_size": 64, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
        "window_size": 56, "fullatt_block_indexes": [1], "hidden_act": "silu", "initializer_range": 0.2,
    },
}

# As deep as the 2B model's language model (28 layers) but as narrow as TINY: the published in-LM
# V2Drop schedules (drops before layers 3/16/22) fit, and it still runs in seconds on a CPU.
TINY_DEEP = {**TINY, "num_hidden_layers": 28, "max_window_layers": 28}

NAMED = {"qwen2_vl_2b": QWEN2_VL_2B, "tiny": TINY, "tiny_deep": TINY_DEEP, "tiny_qwen2_5_vl": TINY_QWEN2_5_VL}


def named(name: str) -> dict:
    """A copy of configuration ``name`` (a key of :data:`NAMED`)."""
    if name not in NAMED:
        raise ValueError(f"unknown Qwen2-VL configuration {name!r}; known: {', '.join(NAMED)}")
    return copy.deepcopy(NAMED[name])
