"""Images from users (uploads, files) turned into the model's 32x32 RGB input, safely.

The pixel count a file will decode to is checked before anything is decoded, far below
Pillow's own guard (which only warns at 89 megapixels), so a decompression bomb costs
nothing. A JPEG is decoded at the smallest scale its format allows that still gives
`PREVIEW_SIDE` pixels; everything else is shrunk to about that size right after decoding,
before any conversion, so that what an image costs is its decoded size once, in its own
mode (8 or 16 bits). Grayscale, palette, RGBA (composited on white) and 16-bit images are
converted. One image is decoded at a time in a process: a server's sessions queue.

A clip for a video model is an animated GIF or a folder of PNG or JPEG frames
(`read_clip`). A GIF's frames are decoded one at a time, each turned into the model's
input at once, within one budget of pixels for all of them together (the same limit as
one image); a folder's frames are read as images, only the ones the clip takes.
"""

from __future__ import annotations

import io
import os
import threading
import warnings

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

FORMATS = ("PNG", "JPEG")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_FOLDER_FRAMES = 10_000  # files a folder of frames may hold
# Frames a GIF may hold: a GIF of millions of 1x1 frames fits in an upload and within the
# pixel budget, but costs a decoding step each.
MAX_GIF_FRAMES = 1_000
# The shorter side an image is shrunk to after decoding: enough to show it and to take
# the model's 32x32 from it.
PREVIEW_SIDE = 256
_BAND_ROWS = 256  # rows converted or shrunk at a time
_DECODING = threading.Lock()


class ImageError(ValueError):
    """An input that is not a usable image; the message says why and what to do."""


def read_image(source: str | os.PathLike | bytes, max_pixels: int | None = None) -> Image.Image:
    """A decoded RGB image from a PNG or JPEG file path or its bytes, its shorter side
    shrunk to about `PREVIEW_SIDE` (never enlarged). `max_pixels` defaults to the
    instance's limit (`Limits.max_upload_pixels`: lower in a public demo)."""
    if max_pixels is None:
        from tokenlearner.limits import Limits

        max_pixels = Limits.current().max_upload_pixels
    name = "the upload" if isinstance(source, bytes) else str(source)
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    except OSError as error:
        raise ImageError(f"{name} cannot be opened ({error.strerror})") from None
    with handle, _DECODING:
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
        if image.format == "JPEG":  # JPEG decodes at 1/2, 1/4 or 1/8 scale for the asking
            image.draft(image.mode, (PREVIEW_SIDE, PREVIEW_SIDE))
        if image.size[0] * image.size[1] > max_pixels:
            raise ImageError(f"{name} declares {width}x{height} pixels ({width * height / 1e6:.0f} MP); "
                             f"the limit is {max_pixels / 1e6:.0f} MP: use a smaller image")
        try:
            image.load()
        except (OSError, ValueError, SyntaxError) as error:  # truncated or corrupt data
            raise ImageError(f"{name} is truncated or corrupt ({error})") from None
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        return _to_rgb(_shrink(image).transpose(_ORIENTATIONS[orientation])
                       if orientation in _ORIENTATIONS else _shrink(image))


# EXIF orientation -> the transposition that shows the picture upright (as ImageOps.exif_transpose
# does, but applied after shrinking, so that it copies the small image, not the decoded one).
_ORIENTATIONS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                 8: Image.Transpose.ROTATE_90}


def _shrink(image: Image.Image) -> Image.Image:
    """`image` reduced by a whole factor (box averages) to a shorter side of at least
    `PREVIEW_SIDE`, in a mode that keeps the data's meaning: 16-bit grey becomes 8-bit
    first, and palette and 1-bit images are averaged as the colours they stand for."""
    if image.mode in ("I;16", "I;16B", "I;16L"):
        image = _sixteen_to_eight_bits(image)
    factor = min(image.size) // PREVIEW_SIDE
    if factor < 2:
        return image
    if image.mode == "1":
        image = image.convert("L")
    elif image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    # A band at a time: Pillow premultiplies RGBA into a full-size copy before reducing.
    band_rows = factor * max(1, _BAND_ROWS // factor)
    small = Image.new(image.mode, (image.width // factor, image.height // factor))
    for top in range(0, small.height * factor, band_rows):
        band = image.crop((0, top, small.width * factor, min(top + band_rows, small.height * factor)))
        small.paste(band.reduce(factor), (0, top // factor))
    return small


def _sixteen_to_eight_bits(image: Image.Image) -> Image.Image:
    """A 16-bit grey image as 8-bit grey (0..65535 onto 0..255, rounded), a band of rows at
    a time, so that no full-size array wider than the image is made."""
    eight = Image.new("L", image.size)
    for top in range(0, image.height, _BAND_ROWS):
        band = np.asarray(image.crop((0, top, image.width, min(top + _BAND_ROWS, image.height))), dtype=np.uint32)
        eight.paste(Image.fromarray(((band * 255 + 32767) // 65535).astype(np.uint8), "L"), (0, top))
    return eight


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)  # small by now: `_shrink` ran first
        top = 65535.0 if values.max() > 255 else 255.0
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


def example_drawing(side: int = PREVIEW_SIDE) -> Image.Image:
    """A simple scene drawn for the purpose (sky, sun, a red ball on grass, a tree), so
    that token maps can be shown over something a person reads where no CIFAR-10 image
    may be shown or none is on the machine."""
    from PIL import ImageDraw

    image = Image.new("RGB", (side, side), (124, 170, 222))
    draw = ImageDraw.Draw(image)
    unit = side / 32
    draw.rectangle((0, 21 * unit, side, side), fill=(88, 150, 72))
    draw.rectangle((3 * unit, 3 * unit, 8 * unit, 8 * unit), fill=(250, 218, 70))
    draw.ellipse((10 * unit, 10 * unit, 21 * unit, 21 * unit), fill=(206, 62, 48))
    draw.rectangle((25 * unit, 14 * unit, 27 * unit, 23 * unit), fill=(110, 74, 44))
    draw.ellipse((22 * unit, 7 * unit, 30 * unit, 16 * unit), fill=(46, 112, 52))
    return image


def read_clip(source: str | os.PathLike | bytes, frames: int, size: int = 32,
              max_pixels: int | None = None) -> np.ndarray:
    """A clip of `frames` frames, (frames, size, size, 3) uint8, from an animated GIF (a
    path or its bytes) or a folder of PNG or JPEG frames (in the order of their names).
    A longer source gives `frames` frames evenly spaced from its first to its last; a
    shorter one is refused, as is a GIF whose frames together decode to more than
    `max_pixels` (default: the instance's upload limit)."""
    if max_pixels is None:
        from tokenlearner.limits import Limits

        max_pixels = Limits.current().max_upload_pixels
    if not isinstance(source, bytes) and os.path.isdir(source):
        return _clip_from_folder(source, frames, size, max_pixels)
    name = "the upload" if isinstance(source, bytes) else str(source)
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    except OSError as error:
        raise ImageError(f"{name} cannot be opened ({error.strerror})") from None
    decoded = []
    with handle, _DECODING:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                gif = Image.open(handle, formats=("GIF",))
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError):
            raise ImageError(f"{name} is not a GIF: a clip is an animated GIF or a folder of PNG or JPEG "
                             "frames") from None
        width, height = gif.size
        try:
            while True:
                if len(decoded) == MAX_GIF_FRAMES:
                    gif.seek(len(decoded))  # past its last frame (EOFError) if it holds no more
                    raise ImageError(f"{name} has more than {MAX_GIF_FRAMES} frames: use a shorter GIF")
                if (len(decoded) + 1) * width * height > max_pixels:
                    raise ImageError(f"{name} has more than {len(decoded)} frames of {width}x{height}: the limit "
                                     f"is {max_pixels / 1e6:.0f} MP over all its frames; use a shorter or "
                                     "smaller GIF")
                gif.seek(len(decoded))
                decoded.append(to_model_input(_to_rgb(gif.copy()), size))
        except EOFError:  # past its last frame
            pass
        except (OSError, ValueError, SyntaxError) as error:
            raise ImageError(f"{name} is truncated or corrupt ({error})") from None
    return _evenly_spaced(decoded, frames, name)


def _clip_from_folder(folder: str | os.PathLike, frames: int, size: int, max_pixels: int) -> np.ndarray:
    names = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.lower().endswith(FRAME_SUFFIXES) and entry.is_file():
                    names.append(entry.name)
                    if len(names) > MAX_FOLDER_FRAMES:
                        raise ImageError(f"{folder} holds more than {MAX_FOLDER_FRAMES} frames: use a shorter clip")
    except OSError as error:
        raise ImageError(f"{folder} cannot be read ({error.strerror})") from None
    chosen = _evenly_spaced(sorted(names), frames, f"{folder}, a folder of frames,")
    return np.stack([to_model_input(read_image(os.path.join(folder, name), max_pixels), size) for name in chosen])


def _evenly_spaced(items: list, frames: int, name: str):
    if len(items) < frames:
        raise ImageError(f"{name} has {len(items)} frame(s) and the model takes {frames}: use a clip of at least "
                         f"{frames} frames")
    picks = np.linspace(0, len(items) - 1, frames).round().astype(int)
    chosen = [items[index] for index in picks]
    return np.stack(chosen) if isinstance(chosen[0], np.ndarray) else chosen
