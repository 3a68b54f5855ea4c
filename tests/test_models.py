"""Model factories: timm ViTs by name with checked local weights, HF DINOv2, the random stand-in."""

import pytest
import torch

from evalsuite.models import MODELS
from evalsuite.models.timm_vit import ChecksumError, create
from evalsuite.paths import file_sha256
from evalsuite.registry import UnknownNameError

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


def _embeddings(model):
    from evalsuite.patch import hf_clip

    return model.embeddings if hasattr(model, "embeddings") else hf_clip.tower(model).embeddings


@pytest.mark.parametrize("family", ["hf_dinov2_layerscale", "hf_clip_cls_prenorm", "hf_siglip_noclass_maphead"])
def test_memoized_position_embeddings_equal_the_models_own_and_follow_the_weights(family):
    """Adapters keep transformers' resampled position embeddings per grid: outputs at resampled
    sizes equal a copy of the model without the memo, also after the weights change in place."""
    import copy

    from tests.conftest import FAMILIES

    model = FAMILIES[family]().model
    assert "interpolate_pos_encoding" in vars(_embeddings(model))  # the memo is installed
    plain = copy.deepcopy(model)
    del _embeddings(plain).interpolate_pos_encoding  # the class's own method again
    kwargs = {} if family.startswith("hf_dinov2") else {"interpolate_pos_encoding": True}
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))

    def outputs(m, size):
        with torch.inference_mode():
            return m(pixel_values=pixels[..., :size, :size], **kwargs).last_hidden_state

    for size in (40, 48, 40, 64):
        torch.testing.assert_close(outputs(model, size), outputs(plain, size), atol=0, rtol=0)
    before = outputs(model, 40)
    for m in (model, plain):
        with torch.no_grad():
            next(p for name, p in m.named_parameters() if "position" in name).mul_(-2.0)
    after = outputs(model, 40)
    assert not torch.equal(after, before)
    torch.testing.assert_close(after, outputs(plain, 40), atol=0, rtol=0)
