"""Fixtures shared by the harness's own tests: small real models with random weights."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

def _zero_compression() -> list[tuple[str, dict]]:
    """Every registered method that runs in an encoder, at each of its do-nothing settings (its spec's
    ``zero_params``): a new method gets parity coverage by registering, with no list to edit here.
    (Methods of other insertion points get theirs from their stage's parity tests.)"""
    from evalsuite.methods import METHODS

    return [(name, dict(params)) for name in METHODS if "encoder" in METHODS.get(name).insertion
            for params in METHODS.get(name).zero_params]


ZERO_COMPRESSION = _zero_compression()

COMPRESSING = [
    ("tome", {"merge_factor": 0.5}),
    ("tome", {"r": 3}),
    ("v2drop", {"keep": 0.5}),
    ("avit", {"sparsity": 0.3}),
    ("random", {"keep": 0.7}),
    ("downscale", {"keep": 0.5}),
]


def two_model_matrix(dinov2_size: int, samples: int) -> str:
    """A case matrix of two models (DINOv2-S/14 and ViT-B/16 with random weights) x none and ToMe f0.5 x
    ``samples`` rendered pages, timed twice after one warm-up: two xdist workers can get a model each."""
    return f"""
timing_repeats = 2
timing_warmup = 1
[models.dinov2_s14]
image_size = {dinov2_size}
[models.vit_b16_random]
image_size = 64
[methods.none]
[methods.tome]
merge_factor = 0.5
[datasets.samples]
limit = {samples}
"""


def claim_of_an_ended_process(key: str, directory: Path | None = None) -> Path:
    """Leave ``key``'s OCR claim file as a process that has since ended would; returns the file."""
    from evalsuite.ocr import cache

    pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                         text=True, check=True).stdout.strip()
    path = cache._claim_file(key, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid} {cache.socket.gethostname()}", encoding="utf-8")
    return path


def tome_merging_once(num_layers: int, r: int = 16):
    """ToMe that merges ``r`` tokens in the first block only. Later blocks still attend with the size
    bias, but no later matching can go another way: two ways of computing attention that round
    differently in half precision would otherwise flip near ties in ToMe's matching, and the
    tokens would differ by whole merges."""
    from evalsuite.methods import build

    comp = build("tome", {"r": r}, num_layers)
    merge = comp.after_attention
    comp.after_attention = lambda layer, x, state: merge(layer, x, state) if layer == 0 else x
    return comp


def tiny_timm(**overrides):
    """A 4-block timm ViT (real timm code, random weights) with the features that broke ToMe's patches."""
    from evalsuite.models.timm_vit import TimmViT
    import timm

    torch.manual_seed(0)
    kwargs = dict(img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=4, num_classes=0,
                  dynamic_img_size=True)
    kwargs.update(overrides)
    model = timm.models.vision_transformer.VisionTransformer(**kwargs)
    model.pretrained_cfg = {}
    return TimmViT("tiny_timm", model, image_size=64, random_weights=True)


def tiny_hf_dinov2():
    from evalsuite.models.hf_dinov2 import create

    config = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, patch_size=8, image_size=64,
                  layerscale_value=0.5)
    return create("tiny_dinov2", image_size=64, config=config, seed=0)


def tiny_hf_clip(arch: str):
    from evalsuite.models.hf_clip import create

    config = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, patch_size=8)
    return create(f"tiny_{arch}", arch=arch, image_size=64, config=config, seed=0)


def tiny_open_clip(**overrides):
    """A 4-block open_clip image tower (real open_clip code, random weights); skipped where open_clip is
    not installed (a GPU host set up for the VLM gate alone)."""
    pytest.importorskip("open_clip")
    from evalsuite.models.open_clip_vit import create

    config = dict(patch_size=8, width=64, layers=4, heads=4, mlp_ratio=2.0, output_dim=32, **overrides)
    return create("tiny_open_clip", image_size=64, config=config, seed=0)


FAMILIES = {
    "timm_cls": lambda: tiny_timm(),
    "timm_reg4_ls_qknorm": lambda: tiny_timm(reg_tokens=4, init_values=0.3, qk_norm=True),
    "timm_gap_noclass": lambda: tiny_timm(class_token=False, global_pool="avg", fc_norm=False),
    "hf_dinov2_layerscale": tiny_hf_dinov2,
    "hf_clip_cls_prenorm": lambda: tiny_hf_clip("clip"),
    "hf_siglip_noclass_maphead": lambda: tiny_hf_clip("siglip"),
    "open_clip_cls_layerscale": lambda: tiny_open_clip(ls_init_value=0.3),
    "open_clip_avg_noprenorm": lambda: tiny_open_clip(pool_type="avg", no_ln_pre=True),
}


@pytest.fixture(autouse=True)
def _no_clickhouse_from_env(monkeypatch):
    """No test may write to a ClickHouse server named in the developer's environment."""
    from evalsuite.sinks.clickhouse import DSN_ENV, PASSWORD_ENV, USER_ENV

    for name in (DSN_ENV, USER_ENV, PASSWORD_ENV):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(params=sorted(FAMILIES), scope="module")
def adapter(request):
    return FAMILIES[request.param]()


@pytest.fixture(scope="module")
def pixels():
    torch.manual_seed(1)
    return torch.randn(3, 3, 64, 64)
