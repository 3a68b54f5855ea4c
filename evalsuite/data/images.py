"""Safe image loading: any file a dataset holds becomes an 8-bit RGB picture, or a clear error.

Every sample goes through :func:`load_image`, so the models and the OCR engine
never see an alpha channel, a palette, CMYK, 16-bit data or a sideways phone
photo, and a hostile or broken file fails as one :class:`SampleError` that
names the sample instead of a decoder traceback (or an out-of-memory kill).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from evalsuite.data.sample import SampleError

DEFAULT_MAX_PIXELS = 40_000_000
WHITE = (255, 255, 255)


def load_image(path: str | Path, sample_id: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``path`` to an RGB image with its EXIF orientation applied.

    The pixel count is checked from the header, before any pixel is decoded, so
    a decompression bomb costs nothing. Raises :class:`SampleError` naming
    ``sample_id`` and ``path`` for a missing, unreadable, truncated or oversized
    file.
    """
    path = Path(path)
    try:
        # Pillow's own bomb guard warns above Image.MAX_IMAGE_PIXELS and fails
        # at twice that; our limit replaces the warning, its error is kept.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise SampleError(
                        f"sample {sample_id}: image {path} is {width}x{height} = {width * height:,} pixels, "
                        f"over the limit of {max_pixels:,} (raise max_pixels to allow it)"
                    )
                image.load()
                return to_rgb(ImageOps.exif_transpose(image))
    except SampleError:
        raise
    except Image.DecompressionBombError as error:
        raise SampleError(f"sample {sample_id}: image {path} refused as a decompression bomb: {error}") from error
    except (OSError, ValueError, SyntaxError, Image.UnidentifiedImageError) as error:
        # OSError covers missing files, truncated data and decoder errors;
        # ValueError/SyntaxError come from malformed headers in some plugins.
        raise SampleError(f"sample {sample_id}: cannot read image {path}: {error}") from error


def to_rgb(image: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """8-bit RGB version of ``image``: transparency composited on ``background``,
    16/32-bit and float data scaled to 0..255, CMYK/palette/YCbCr converted.
    """
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(image), mode), "L").convert("RGB")
    if (mode == "P" and "transparency" in image.info) or mode in ("PA", "LA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        canvas = Image.new("RGBA", image.size, background + (255,))
        return Image.alpha_composite(canvas, image).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK (Pillow undoes Adobe's inversion), YCbCr, LAB, HSV


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Single-channel 16/32-bit or float data [H, W] to uint8 [H, W].

    ``I;16*`` is 16-bit by definition: divided by 257 so white stays white.
    ``I`` and ``F`` say nothing about range, so it is read from the data:
    within 0..1 (float only) is scaled by 255, within 0..255 kept (a 32-bit PNG
    often holds 8-bit values), within 0..65535 taken as 16-bit, anything else
    (negative, HDR) stretched min..max.
    """
    values = values.astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode.startswith("I;16") or (low >= 0 and 255 < high <= 65535):
        scaled = values / 257.0
    elif mode == "F" and low >= 0 and high <= 1:
        scaled = values * 255.0
    elif low >= 0 and high <= 255:
        scaled = values
    elif high > low:
        scaled = (values - low) * (255.0 / (high - low))
    else:
        scaled = np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
