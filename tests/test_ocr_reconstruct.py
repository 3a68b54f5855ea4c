"""reconstruct/overlay: what a token plan leaves of a picture, at the original resolution."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from evalsuite.ocr.reconstruct import as_seen_by_model, overlay, reconstruct, token_label_image
from evalsuite.plan import TokenPlan


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8))


def plan_of(grid, patch_to_token, input_scale=1.0) -> TokenPlan:
    p2t = np.asarray(patch_to_token, np.int32)
    return TokenPlan(grid, p2t, int(p2t.max()) + 1 if (p2t >= 0).any() else 0, input_scale)


def test_identity_plan_returns_the_identical_image():
    image = noise(37, 23)
    out = reconstruct(image, TokenPlan.identity((4, 5)))
    assert out is not image
    assert np.array_equal(np.asarray(out), np.asarray(image))


def test_permuted_singletons_are_still_unchanged():
    image = noise(40, 40)
    plan = plan_of((4, 4), np.random.default_rng(1).permutation(16))
    assert np.array_equal(np.asarray(reconstruct(image, plan)), np.asarray(image))


def test_all_dropped_is_blank():
    out = np.asarray(reconstruct(noise(30, 20), plan_of((2, 3), [-1] * 6), blank=(10, 20, 30)))
    assert (out == (10, 20, 30)).all()


def test_two_patch_group_gets_the_pixel_mean_and_the_rest_is_untouched():
    pixels = np.zeros((10, 20, 3), np.uint8)  # grid (1, 2): two 10x10 patches
    pixels[:, :10] = (200, 0, 50)
    pixels[:, 10:] = (0, 100, 51)
    merged = np.asarray(reconstruct(Image.fromarray(pixels), plan_of((1, 2), [0, 0])))
    assert (merged == (100, 50, 50)).all()  # 50.5 rounds to even

    pixels3 = np.concatenate([pixels, np.full((10, 10, 3), 7, np.uint8)], axis=1)  # third patch kept alone
    out = np.asarray(reconstruct(Image.fromarray(pixels3), plan_of((1, 3), [0, 0, 1])))
    assert (out[:, :20] == (100, 50, 50)).all()
    assert (out[:, 20:] == 7).all()


def test_group_mean_is_weighted_by_pixel_count():
    # 3 columns over a 10 px wide image: patches get 4, 3 and 3 columns ((x*3)//10)
    pixels = np.zeros((5, 10, 3), np.uint8)
    pixels[:, :4] = 100  # patch 0 (4 px wide)
    pixels[:, 4:7] = 30  # patch 1 (3 px wide)
    out = np.asarray(reconstruct(Image.fromarray(pixels), plan_of((1, 3), [0, 0, -1])))
    assert (out[:, :7] == round((4 * 100 + 3 * 30) / 7)).all()
    assert (out[:, 7:] == 255).all()


def test_patches_cover_proportional_boxes_of_any_size():
    labels = token_label_image(plan_of((3, 4), np.arange(12)), (37, 23))
    assert labels.shape == (23, 37)
    for token in range(12):
        rows, cols = np.nonzero(labels == token)
        r, c = divmod(token, 4)
        assert rows.min() == -(-r * 23 // 3) and rows.max() == -(-(r + 1) * 23 // 3) - 1
        assert cols.min() == -(-c * 37 // 4) and cols.max() == -(-(c + 1) * 37 // 4) - 1


def test_input_scale_removes_detail_but_keeps_size():
    image = noise(64, 48)
    plan = TokenPlan((4, 4), np.arange(16, dtype=np.int32), 16, input_scale=0.25)
    out = reconstruct(image, plan)
    assert out.size == image.size
    assert np.array_equal(np.asarray(out), np.asarray(as_seen_by_model(image, 0.25)))
    detail = lambda a: np.abs(np.diff(np.asarray(a, np.float64), axis=1)).mean()  # noqa: E731
    assert detail(out) < 0.5 * detail(image)


def test_input_scale_then_drop():
    image = noise(64, 48)
    plan = TokenPlan((2, 2), np.array([0, -1, 1, 2], np.int32), 3, input_scale=0.5)
    out = np.asarray(reconstruct(image, plan))
    assert (out[:24, 32:] == 255).all()
    assert np.array_equal(out[24:, :], np.asarray(as_seen_by_model(image, 0.5))[24:, :])


def test_overlay_marks_dropped_and_merged_but_not_singletons():
    image = Image.new("RGB", (40, 40), (200, 200, 200))
    out = np.asarray(overlay(image, plan_of((2, 2), [0, 0, -1, 1])))
    assert out.shape == (40, 40, 3)
    assert (out[30, 10] != (200, 200, 200)).any() and out[30, 10, 0] > out[30, 10, 1]  # dropped: red, dark
    assert (out[10, 10] != (200, 200, 200)).any()  # merged group tinted
    assert (out[30, 30] == (200, 200, 200)).all()  # singleton untouched


@pytest.mark.parametrize("size", [(1, 1), (3, 2)])
def test_images_smaller_than_the_grid(size):
    plan = plan_of((4, 4), [0, 0] + [-1] * 14)
    assert reconstruct(noise(*size), plan).size == size
    assert overlay(noise(*size), plan).size == size


def test_downscaled_plan_is_not_painted_as_merged_groups():
    """A downscale token covers several full-grid patches by resampling: keep the resampled pixels."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    plan = TokenPlan((4, 4), np.repeat(np.repeat(np.arange(4).reshape(2, 2), 2, 0), 2, 1).ravel().astype(np.int32),
                     4, input_scale=0.5)
    out = np.asarray(reconstruct(image, plan)).astype(int)
    assert len(np.unique(out.reshape(-1, 3), axis=0)) > 100  # not 4 flat colours
    expected = np.asarray(as_seen_by_model(image, 0.5)).astype(int)
    np.testing.assert_array_equal(out, expected)
