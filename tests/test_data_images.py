"""load_image on awkward and hostile files: every one is 8-bit RGB or a SampleError naming it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from evalsuite.data.images import load_image
from evalsuite.data.sample import SampleError


def rgb_at(image: Image.Image, x: int, y: int) -> tuple[int, int, int]:
    assert image.mode == "RGB"
    return tuple(int(v) for v in np.asarray(image)[y, x])


def test_transparent_pixels_composite_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere ...
    rgba[:, 4:, 3] = 255  # ... but only the right half opaque
    rgba[:, :4, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png", "s")
    assert rgb_at(image, 0, 0) == (255, 255, 255)
    assert rgb_at(image, 6, 0) == (255, 0, 0)


def test_half_transparent_blends_with_white(tmp_path):
    Image.new("LA", (4, 4), (0, 128)).save(tmp_path / "la.png")
    r, g, b = rgb_at(load_image(tmp_path / "la.png", "s"), 1, 1)
    assert r == g == b and 120 <= r <= 135


def test_palette_transparency_becomes_white(tmp_path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((3, 3), 1)
    image.save(tmp_path / "p.png", transparency=0)
    loaded = load_image(tmp_path / "p.png", "s")
    assert rgb_at(loaded, 0, 0) == (255, 255, 255)
    assert rgb_at(loaded, 3, 3) == (0, 0, 255)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)  # pure red ink
    r, g, b = rgb_at(load_image(tmp_path / "c.jpg", "s"), 8, 8)
    assert r > 230 and g < 30 and b < 30


def test_16_bit_grayscale_scales_to_full_8_bit_range(tmp_path):
    ramp = np.linspace(0, 65535, 64).astype(np.uint16).reshape(1, 64).repeat(4, axis=0)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    image = load_image(tmp_path / "g16.png", "s")
    assert rgb_at(image, 0, 0) == (0, 0, 0)
    assert rgb_at(image, 63, 0) == (255, 255, 255)
    assert 120 <= rgb_at(image, 32, 0)[0] <= 135


def test_dark_16_bit_image_is_not_mistaken_for_8_bit(tmp_path):
    Image.fromarray(np.full((4, 4), 200, np.uint16)).save(tmp_path / "dark.png")  # 200/65535: nearly black
    assert rgb_at(load_image(tmp_path / "dark.png", "s"), 0, 0) == (1, 1, 1)


def test_32_bit_integer_image_holding_8_bit_values_is_kept(tmp_path):
    Image.fromarray(np.full((4, 4), 200, np.int32), "I").save(tmp_path / "i32.tif")
    assert rgb_at(load_image(tmp_path / "i32.tif", "s"), 0, 0) == (200, 200, 200)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)  # landscape, red on the left, blue on the right
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(pixels).save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    image = load_image(tmp_path / "rot.jpg", "s")
    assert image.size == (20, 40)  # displayed as portrait
    assert rgb_at(image, 10, 5)[0] > 200  # left half ended on top
    assert rgb_at(image, 10, 35)[2] > 200


def test_over_limit_image_is_refused_before_decoding(tmp_path, monkeypatch):
    # an all-black 6400x6400 PNG is a few KiB on disk but 41 MP once decoded
    Image.new("1", (6400, 6400)).save(tmp_path / "bomb.png")

    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(SampleError, match=r"sample bomb: .*6400x6400.*over the limit of 40,000,000"):
        load_image(tmp_path / "bomb.png", "bomb")


def test_pixel_limit_is_configurable(tmp_path):
    Image.new("RGB", (100, 100)).save(tmp_path / "small.png")
    with pytest.raises(SampleError, match="over the limit of 5,000"):
        load_image(tmp_path / "small.png", "s", max_pixels=5_000)
    assert load_image(tmp_path / "small.png", "s", max_pixels=10_000).size == (100, 100)


def test_truncated_file_names_sample_and_path(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(SampleError, match=r"sample rx/7: cannot read image .*cut\.jpg"):
        load_image(tmp_path / "cut.jpg", "rx/7")


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_not_an_image(tmp_path, content):
    (tmp_path / "x.png").write_bytes(content)
    with pytest.raises(SampleError, match=r"sample s: cannot read image .*x\.png"):
        load_image(tmp_path / "x.png", "s")


def test_missing_file(tmp_path):
    with pytest.raises(SampleError, match="sample s: cannot read image .*gone.jpg"):
        load_image(tmp_path / "gone.jpg", "s")


def test_result_is_detached_from_the_file(tmp_path):
    Image.new("RGB", (5, 5), (1, 2, 3)).save(tmp_path / "ok.png")
    image = load_image(tmp_path / "ok.png", "s")
    (tmp_path / "ok.png").unlink()
    assert rgb_at(image, 4, 4) == (1, 2, 3)
