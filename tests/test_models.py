"""Model factories: timm ViTs by name with checked local weights, HF DINOv2, the random stand-in."""

import copy
import re

import pytest
import torch

from evalsuite.methods import build
from evalsuite.models import MODELS
from evalsuite.models.timm_vit import ChecksumError, create
from evalsuite.paths import file_sha256
from evalsuite.registry import UnknownNameError

from .conftest import FAMILIES

ARCH = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A state dict of a timm ViT-Ti/16 with known random weights, saved like a downloaded file."""
    import timm

    torch.manual_seed(3)
    model = timm.create_model(ARCH, pretrained=False, num_classes=0)
    path = tmp_path_factory.mktemp("weights") / "vit_tiny.pth"
    torch.save(model.state_dict(), path)
    return path, model


def test_local_checkpoint_with_matching_sha256_loads_those_weights(checkpoint):
    path, original = checkpoint
    adapter = create("vit_ti", ARCH, image_size=224, checkpoint=str(path), sha256=file_sha256(path))
    assert adapter.labels == ()  # real (if here random-looking) weights: not labelled random
    torch.testing.assert_close(adapter.model.blocks[0].attn.qkv.weight, original.blocks[0].attn.qkv.weight)


@pytest.mark.parametrize("sha256,message", [("0" * 64, "has sha256"), (None, "without its sha256")])
def test_local_checkpoint_with_wrong_or_missing_sha256_is_refused(checkpoint, sha256, message):
    path, _ = checkpoint
    with pytest.raises(ChecksumError, match=message):
        create("vit_ti", ARCH, checkpoint=str(path), sha256=sha256)


def test_random_stand_in_is_labelled_and_is_a_vit_b16():
    adapter = MODELS.get("vit_b16_random")("vit_b16_random", image_size=224)
    assert adapter.labels == ("random-weights",)
    assert (adapter.embed_dim, adapter.num_layers, adapter.patch_size, adapter.num_patches) == (768, 12, 16, 196)


def test_unknown_model_suggests_the_closest_factory():
    with pytest.raises(UnknownNameError, match="did you mean 'dinov2_s14'"):
        MODELS.get("dinov2_s16")


@pytest.mark.parametrize("arch", ["clip", "siglip"])
def test_hf_clip_pooled_output_is_the_models_own(arch):
    """The reference pass pools as the model does: CLIP's normed class token, SigLIP's attention head."""
    from .conftest import tiny_hf_clip

    adapter = tiny_hf_clip(arch)
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        own = adapter.model(pixel_values=pixels).pooler_output
    assert adapter.labels == ("random-weights",) and adapter.num_prefix == (1 if arch == "clip" else 0)
    torch.testing.assert_close(adapter.reference(pixels).pooled, own, atol=1e-5, rtol=0)


def test_siglip_head_weighs_a_merged_token_like_the_patches_it_holds():
    """Proportional attention in the pooling head: a token of size 2 pools like two copies of it."""
    from .conftest import tiny_hf_clip

    adapter = tiny_hf_clip("siglip")
    torch.manual_seed(0)
    tokens = torch.randn(1, 5, 64)
    copies = torch.cat([tokens, tokens[:, 2:3]], dim=1)
    with torch.inference_mode():
        merged = adapter._pool(tokens, torch.tensor([[1.0, 1.0, 2.0, 1.0, 1.0]]))
        expanded = adapter._pool(copies, torch.ones(1, 6))
        plain = adapter._pool(tokens, torch.ones(1, 5))
    torch.testing.assert_close(merged, expanded, atol=1e-5, rtol=0)
    assert not torch.allclose(merged, plain, atol=1e-4)


def test_hf_clip_refuses_an_unknown_arch():
    with pytest.raises(ValueError, match="arch must be one of"):
        MODELS.get("hf_clip")("x", arch="blip")


def _drop_memo(model) -> int:
    """Remove the memos installed on ``model``'s modules (the classes' own methods run again, open_clip's
    positions are resampled afresh); how many modules had one."""
    dropped = 0
    for module in model.modules():  # transformers', timm's, and evalsuite's own for open_clip
        found = [vars(module).pop(name, None) is not None
                 for name in ("interpolate_pos_encoding", "_pos_embed", "evalsuite_position_memo")]
        dropped += any(found)
    return dropped


def _position_embeddings(model) -> torch.nn.Parameter:
    return next(p for name, p in model.named_parameters() if re.search(r"pos(ition(al)?)?_embed", name))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_memoized_position_embeddings_equal_the_models_own_and_follow_the_weights(family):
    """Adapters keep their library's resampled position embeddings per grid: both passes, at resampled
    and native sizes, equal a copy of the model without the memo, also after the weights change in place."""
    adapter = FAMILIES[family]()
    plain = copy.deepcopy(adapter)
    assert _drop_memo(plain.model) == 1  # the memo was installed
    downscale = build("downscale", {"keep": 0.5}, adapter.num_layers)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))

    def outputs(a, size):  # the reference pass at other grids where the model itself runs there
        px = pixels[..., :size, :size]
        reference = a.reference(px).tokens if size == 64 or not a.native_grid_only else torch.zeros(0)
        return reference, a.compressed(px, downscale).tokens

    for size in (48, 40, 64, 48):  # 64 px: the native grid in the reference pass
        torch.testing.assert_close(outputs(adapter, size), outputs(plain, size), atol=0, rtol=0)
    before = outputs(adapter, 48)
    for a in (adapter, plain):
        with torch.no_grad():
            _position_embeddings(a.model).mul_(-2.0)
    after = outputs(adapter, 48)
    assert not torch.equal(after[1], before[1])
    assert adapter.native_grid_only or not torch.equal(after[0], before[0])
    torch.testing.assert_close(after, outputs(plain, 48), atol=0, rtol=0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_model_built_under_inference_mode_runs_every_pass(family):
    """Parameters created under ``torch.inference_mode`` are inference tensors without a write
    count; the memo (and the padded-projection cache) must still work with them."""
    with torch.inference_mode():
        adapter = FAMILIES[family]()
        pixels = torch.randn(1, 3, 48, 48)
        for name, params in (("downscale", {"keep": 0.5}), ("tome", {"r": 2})):
            comp = build(name, params, adapter.num_layers)
            first, again = adapter.compressed(pixels, comp).tokens, adapter.compressed(pixels, comp).tokens
            torch.testing.assert_close(first, again, atol=0, rtol=0)
        if adapter.native_grid_only:
            pixels = torch.randn(1, 3, 64, 64)
        torch.testing.assert_close(adapter.reference(pixels).tokens, adapter.reference(pixels).tokens)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_deep_copy_of_a_memoized_model_resamples_its_own_weights(family):
    adapter = FAMILIES[family]()
    pixels = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    downscale = build("downscale", {"keep": 0.5}, adapter.num_layers)
    # the pass that resamples: the model's own at 48 px, or evalsuite's for downscale's grid
    tokens = ((lambda a: a.compressed(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)),
                                      downscale).tokens)
              if adapter.native_grid_only else (lambda a: a.reference(pixels).tokens))
    tokens(adapter)  # fills the memo
    copied = copy.deepcopy(adapter)
    with torch.no_grad():
        _position_embeddings(copied.model).mul_(-2.0)
    memoized = tokens(copied)
    _drop_memo(copied.model)
    torch.testing.assert_close(memoized, tokens(copied), atol=0, rtol=0)


def test_timm_resamples_once_per_grid_and_weights_and_always_under_grad(monkeypatch):
    import timm.models.vision_transformer as vit

    grids = []
    resample = vit.resample_abs_pos_embed

    def counting(posemb, new_size, *args, **kwargs):
        grids.append(tuple(new_size))
        return resample(posemb, new_size, *args, **kwargs)

    monkeypatch.setattr(vit, "resample_abs_pos_embed", counting)
    adapter = FAMILIES["timm_cls"]()  # its memo wraps the counting resample
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    adapter.reference(pixels[..., :48, :48])
    adapter.compressed(pixels, build("downscale", {"keep": 0.5}, adapter.num_layers))  # 64 px -> 48 px
    adapter.reference(pixels[..., :48, :48])
    assert grids == [(6, 6)]
    with torch.no_grad():
        _position_embeddings(adapter.model).mul_(-2.0)
    adapter.reference(pixels[..., :48, :48])
    assert grids == [(6, 6)] * 2
    adapter.model.forward_features(pixels[..., :48, :48])  # recording gradients: no memo
    adapter.model.forward_features(pixels[..., :48, :48])
    assert grids == [(6, 6)] * 4


@pytest.mark.parametrize("family", ["open_clip_cls_layerscale", "open_clip_avg_noprenorm"])
def test_open_clip_pooled_output_is_the_towers_own(family):
    """The adapter's image embedding is what the open_clip tower itself returns (class token or mean, projected)."""
    adapter = FAMILIES[family]()
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(adapter.reference(pixels).pooled, adapter.model(pixels))


def test_open_clip_refuses_towers_and_sizes_it_would_compute_wrongly():
    from evalsuite.models.open_clip_vit import OpenClipViT, create

    with pytest.raises(TypeError, match="only 'tok' or 'avg' pooling"):
        create("pooler", image_size=64, config=dict(patch_size=8, width=64, layers=1, heads=4, mlp_ratio=2.0,
                                                    attentional_pool=True, attn_pooler_heads=4))
    with pytest.raises(TypeError, match="supports open_clip VisionTransformer.*ModifiedResNet"):
        create("rn50", model_name="RN50")  # a ResNet tower: no tokens to compress
    tower = FAMILIES["open_clip_cls_layerscale"]().model
    with pytest.raises(ValueError, match="model small: the tower takes 64x64 px.*image_size is 48"):
        OpenClipViT("small", tower, 48)
