"""Images from users (uploads, files) turned into the model's 32x32 RGB input, safely.

The pixel count a file declares is checked before anything is decoded, far below
Pillow's own guard (which only warns at 89 megapixels), so a decompression bomb costs
nothing. Grayscale, palette, RGBA (composited on white) and 16-bit images are converted.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 16_000_000  # 16 megapixels: any real photo, far below a decompression bomb
FORMATS = ("PNG", "JPEG")


class ImageError(ValueError):
    """An input that is not a usable image; the message says why and what to do."""


def read_image(source: str | os.PathLike | bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A decoded RGB image from a PNG or JPEG file path or its bytes."""
    name = "the upload" if isinstance(source, bytes) else str(source)
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    except OSError as error:
        raise ImageError(f"{name} cannot be opened ({error.strerror})") from None
    with handle:
        try:
            with warnings.catch_warnings():  # Pillow's bomb warning: our own, lower limit follows
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(handle, formats=FORMATS)  # reads the header only
        except UnidentifiedImageError:
            raise ImageError(f"{name} is not a PNG or JPEG image") from None
        except Image.DecompressionBombError:
            raise ImageError(f"{name} declares more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} MP; "
                             f"the limit is {max_pixels / 1e6:.0f} MP: use a smaller image") from None
        except (OSError, ValueError) as error:
            raise ImageError(f"{name} cannot be read as an image ({error})") from None
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(f"{name} declares {width}x{height} pixels ({width * height / 1e6:.0f} MP); "
                             f"the limit is {max_pixels / 1e6:.0f} MP: use a smaller image")
        try:
            image.load()
        except (OSError, ValueError, SyntaxError) as error:  # truncated or corrupt data
            raise ImageError(f"{name} is truncated or corrupt ({error})") from None
    return _to_rgb(ImageOps.exif_transpose(image))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values / top * 255.0, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def to_model_input(image: Image.Image, size: int = 32) -> np.ndarray:
    """The largest centred square of `image`, resized to `size` x `size`: (size, size, 3) uint8."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return np.asarray(square.resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)
