"""Learned-token maps drawn over images (numpy and Pillow only, so any page can use it)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

# Anchor colours of common colour maps, interpolated linearly (viridis, magma and gray are perceptually
# ordered; jet is offered because many readers know it, not because it is).
COLORMAPS = {
    "viridis": [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)],
    "magma": [(0, 0, 4), (81, 18, 124), (183, 55, 121), (252, 137, 97), (252, 253, 191)],
    "jet": [(0, 0, 131), (0, 60, 255), (0, 255, 255), (255, 255, 0), (255, 0, 0), (128, 0, 0)],
    "gray": [(0, 0, 0), (255, 255, 255)],
}


def colorize(values: np.ndarray, colormap: str = "viridis") -> np.ndarray:
    """Values in [0, 1], any shape -> uint8 RGB colours, shape + (3,)."""
    anchors = np.asarray(COLORMAPS[colormap], dtype=np.float64)
    position = np.clip(values, 0.0, 1.0) * (len(anchors) - 1)
    low = np.floor(position).astype(int).clip(0, len(anchors) - 2)
    fraction = (position - low)[..., None]
    return (anchors[low] * (1 - fraction) + anchors[low + 1] * fraction).round().astype(np.uint8)


def normalise(token_map: np.ndarray) -> np.ndarray:
    """A map scaled to [0, 1] by its own range (a constant map becomes zeros)."""
    low, high = float(token_map.min()), float(token_map.max())
    return (token_map - low) / (high - low) if high > low else np.zeros_like(token_map, dtype=np.float64)


def enlarge(image: np.ndarray, scale: int = 8) -> Image.Image:
    """`image` (H, W, 3), each pixel a `scale` x `scale` block, so a 32x32 image stays sharp on screen."""
    return Image.fromarray(np.asarray(image, np.uint8)).resize(
        (image.shape[1] * scale, image.shape[0] * scale), Image.Resampling.NEAREST)


def _pixel_box(region: tuple[float, float, float, float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """`region` (top, left, bottom, right as fractions of the side) in pixels of an image of `size` (width, height)."""
    width, height = size
    return round(region[0] * height), round(region[1] * width), round(region[2] * height), round(region[3] * width)


def overlay(image: np.ndarray, token_map: np.ndarray, region: tuple[float, float, float, float],
            scale: int = 8, opacity: float = 0.5, colormap: str = "viridis") -> Image.Image:
    """`image` (H, W, 3) enlarged `scale` times, with `token_map` (h, w) upsampled over the
    `region` (top, left, bottom, right as fractions of the side) that the patches cover."""
    base = enlarge(image, scale)
    top, left, bottom, right = _pixel_box(region, base.size)
    heat = Image.fromarray(colorize(normalise(token_map), colormap)).resize(
        (right - left, bottom - top), Image.Resampling.BILINEAR)
    covered = base.crop((left, top, right, bottom))
    base.paste(Image.blend(covered, heat, opacity), (left, top))
    return base


def stack_rows(rows: list[Image.Image], gap: int = 4) -> Image.Image:
    """Images one above the other, left-aligned on white."""
    width = max(row.width for row in rows)
    sheet = Image.new("RGB", (width, sum(row.height for row in rows) + gap * (len(rows) - 1)), "white")
    top = 0
    for row in rows:
        sheet.paste(row, (0, top))
        top += row.height + gap
    return sheet


def overlay_grid(image: np.ndarray, maps: np.ndarray, region: tuple[float, float, float, float],
                 scale: int = 8, opacity: float = 0.5, colormap: str = "viridis", gap: int = 4) -> Image.Image:
    """One row: the image, then the image under each of the S maps (S, h, w)."""
    tiles = [overlay(image, np.zeros(maps.shape[1:]), region, scale, 0.0, colormap)]
    tiles += [overlay(image, token_map, region, scale, opacity, colormap) for token_map in maps]
    tile_width, tile_height = tiles[0].size
    grid = Image.new("RGB", (len(tiles) * (tile_width + gap) - gap, tile_height), "white")
    for index, tile in enumerate(tiles):
        grid.paste(tile, (index * (tile_width + gap), 0))
    return grid


def dominant_token_image(image: np.ndarray, maps: np.ndarray, region: tuple[float, float, float, float],
                         scale: int = 8, opacity: float = 0.5, highlight: int | None = None) -> Image.Image:
    """The image with each patch coloured by the token whose map weights it most. With
    `highlight` (a token's index), only that token's patches are coloured and the rest of
    the image is darkened, so one token's share of the image stands out."""
    owner = np.argmax(maps, axis=0)
    base = enlarge(image, scale)
    top, left, bottom, right = _pixel_box(region, base.size)
    box = (right - left, bottom - top)
    covered = base.crop((left, top, right, bottom))
    colours = Image.fromarray(token_colours(len(maps))[owner]).resize(box, Image.Resampling.NEAREST)
    if highlight is None:
        base.paste(Image.blend(covered, colours, opacity), (left, top))
    else:
        chosen = Image.fromarray(np.where(owner == highlight, 255, 0).astype(np.uint8)).resize(
            box, Image.Resampling.NEAREST)
        darkened = Image.blend(covered, Image.new("RGB", box), 0.6)
        base.paste(Image.composite(Image.blend(covered, colours, max(opacity, 0.7)), darkened, chosen), (left, top))
    ImageDraw.Draw(base).rectangle((left, top, right - 1, bottom - 1), outline=(255, 255, 255))
    return base


def token_colours(count: int) -> np.ndarray:
    hues = np.linspace(0, 1, count, endpoint=False)
    colours = [Image.new("HSV", (1, 1), (int(h * 255), 200, 255)).convert("RGB").getpixel((0, 0)) for h in hues]
    return np.asarray(colours, dtype=np.uint8)


def clip_sheet(clip: np.ndarray, maps: np.ndarray, tubelet_frames: int, region: tuple[float, float, float, float],
               scale: int = 4) -> Image.Image:
    """A clip's maps, (slices, S, h, w): a row per temporal slice, its first frame and that
    frame under each token's map, then the dominant-token view."""
    rows = []
    for index, slice_maps in enumerate(maps):
        frame = clip[index * tubelet_frames]
        grid = overlay_grid(frame, slice_maps, region, scale=scale)
        dominant = dominant_token_image(frame, slice_maps, region, scale=scale)
        row = Image.new("RGB", (grid.width + 4 + dominant.width, grid.height), "white")
        row.paste(grid, (0, 0))
        row.paste(dominant, (grid.width + 4, 0))
        rows.append(row)
    return stack_rows(rows, gap=2)
