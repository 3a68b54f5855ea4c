"""``--evalsuite-export``: the per-case ``.npz`` round-trips images, keep masks and merge groups."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from evalsuite.data.sample import Sample, SampleError
from evalsuite.export import export_case
from evalsuite.models.base import EncoderOutput
from evalsuite.plan import TokenPlan

SIZE = 64  # model input side: a 4 x 4 grid of 16 px patches
GRID = (4, 4)


def picture(seed: int) -> Image.Image:
    """A non-square RGB image, so the export's resize to the model input is visible."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(30, 50, 3), dtype=np.uint8), "RGB")


def sample(sample_id: str, image: Image.Image | None) -> Sample:
    def load() -> Image.Image:
        if image is None:
            raise SampleError(f"{sample_id}: unreadable")
        return image
    return Sample(sample_id, "test", "photo", load)


def plan_dropping_the_top_row_and_merging_two_patches() -> TokenPlan:
    """Patches 0-3 dropped, patches 4 and 5 merged into token 0, patches 6-15 alone (tokens 1-10)."""
    patch_to_token = np.array([-1, -1, -1, -1, 0, 0, *range(1, 11)], dtype=np.int32)
    return TokenPlan(GRID, patch_to_token, num_tokens=11)


def downscaled_plan() -> TokenPlan:
    return TokenPlan(GRID, np.arange(16, dtype=np.int32), num_tokens=16, input_scale=0.5)


def output(plans: list[TokenPlan]) -> EncoderOutput:
    """An encoder output whose tensors the export does not read; only ``plans`` matter."""
    b = len(plans)
    return EncoderOutput(torch.zeros(b, 17, 8), torch.ones(b, 17), torch.zeros(b, 8), plans, num_prefix=1)


def resized(image: Image.Image) -> np.ndarray:
    return np.asarray(image.resize((SIZE, SIZE), Image.BICUBIC))


@pytest.fixture
def exported(tmp_path):
    images = [picture(0), picture(1), picture(2)]
    samples = [sample(f"s{i}", image) for i, image in enumerate(images)]
    plans = [TokenPlan.identity(GRID), plan_dropping_the_top_row_and_merging_two_patches(), downscaled_plan()]
    # two batches, as the engine passes them: plans are read across outputs in sample order
    path = export_case(tmp_path / "nested" / "case.npz", samples, [output(plans[:2]), output(plans[2:])], SIZE)
    with np.load(path) as npz:
        return path, {key: npz[key] for key in npz.files}, images, plans


def test_the_file_holds_every_array_stacked_over_samples(exported):
    path, arrays, _, _ = exported
    assert path.name == "case.npz" and path.parent.name == "nested"
    assert sorted(arrays) == ["group_ids", "images", "input_scale", "keep_mask", "reconstructions", "sample_ids"]
    assert arrays["sample_ids"].tolist() == ["s0", "s1", "s2"]
    assert arrays["images"].shape == arrays["reconstructions"].shape == (3, SIZE, SIZE, 3)
    assert arrays["images"].dtype == arrays["reconstructions"].dtype == np.uint8
    assert arrays["keep_mask"].shape == (3, *GRID) and arrays["keep_mask"].dtype == bool
    assert arrays["group_ids"].shape == (3, *GRID) and arrays["group_ids"].dtype == np.int32


def test_images_are_the_model_inputs_resized_from_the_originals(exported):
    _, arrays, images, _ = exported
    for stored, image in zip(arrays["images"], images):
        np.testing.assert_array_equal(stored, resized(image))


def test_keep_masks_merge_groups_and_scales_round_trip(exported):
    _, arrays, _, plans = exported
    for i, plan in enumerate(plans):
        np.testing.assert_array_equal(arrays["keep_mask"][i], plan.keep_mask)
        np.testing.assert_array_equal(arrays["group_ids"][i], plan.group_ids)
    assert arrays["keep_mask"][1].tolist() == [[False] * 4] + [[True] * 4] * 3
    assert arrays["group_ids"][1][1, 0] == arrays["group_ids"][1][1, 1] == 0  # the merged pair
    assert arrays["group_ids"][1][0].tolist() == [-1, -1, -1, -1]
    assert arrays["input_scale"].tolist() == [1.0, 1.0, 0.5]
    # the stored arrays rebuild the plans
    rebuilt = TokenPlan(GRID, arrays["group_ids"][1].ravel(), int(arrays["group_ids"][1].max()) + 1,
                        float(arrays["input_scale"][1]))
    np.testing.assert_array_equal(rebuilt.patch_to_token, plans[1].patch_to_token)
    assert rebuilt.num_tokens == plans[1].num_tokens
    np.testing.assert_array_equal(rebuilt.token_sizes(), plans[1].token_sizes())


def test_reconstructions_show_what_the_plan_kept(exported):
    _, arrays, _, _ = exported
    original, seen = arrays["images"], arrays["reconstructions"]
    np.testing.assert_array_equal(seen[0], original[0])  # identity plan: the input itself
    # dropped top row of patches: blank (white)
    assert (seen[1][:16] == 255).all()
    # merged patches 4 and 5 (rows 16-31, columns 0-31): one colour, the mean of their pixels
    merged = seen[1][16:32, :32].reshape(-1, 3)
    expected = np.rint(original[1][16:32, :32].reshape(-1, 3).astype(np.float64).mean(axis=0))
    np.testing.assert_array_equal(merged, np.broadcast_to(expected.astype(np.uint8), merged.shape))
    # singleton patches keep their pixels
    np.testing.assert_array_equal(seen[1][16:, 32:], original[1][16:, 32:])
    # a downscaled input: the model input at half its side and back, detail lost
    half = Image.fromarray(original[2]).resize((SIZE // 2, SIZE // 2), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(seen[2], np.asarray(half.resize((SIZE, SIZE), Image.Resampling.BICUBIC)))
    assert not np.array_equal(seen[2], original[2])


def test_a_sample_that_cannot_be_loaded_is_left_out_with_its_plan(tmp_path):
    samples = [sample("ok0", picture(0)), sample("bad", None), sample("ok2", picture(2))]
    plans = [TokenPlan.identity(GRID), plan_dropping_the_top_row_and_merging_two_patches(), downscaled_plan()]
    path = export_case(tmp_path / "case.npz", samples, [output(plans)], SIZE)
    with np.load(path) as npz:
        assert npz["sample_ids"].tolist() == ["ok0", "ok2"]
        np.testing.assert_array_equal(npz["keep_mask"][1], plans[2].keep_mask)  # ok2 keeps its own plan
        assert npz["input_scale"].tolist() == [1.0, 0.5]
        np.testing.assert_array_equal(npz["images"][1], resized(picture(2)))
