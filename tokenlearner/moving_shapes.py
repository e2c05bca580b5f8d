"""A small video data set that needs time, drawn from a seed: four shapes on a 32x32
canvas, one of which moves; the label is which one.

Every clip holds a red disc, a green square, a blue triangle and a yellow cross (each
colour jittered a little per clip) over a dark noisy background; the labelled shape slides in a straight line at 1.5 to 3 pixels per
frame and the three others stand still. Every position is on a torus (a shape leaving on
one side comes back on the other) and starts uniformly at random, so in any single frame
each shape's position is uniform whether it moves or not: one frame has the same
distribution under every label, and only motion tells them apart. The shapes are drawn
in a fixed order, so which one covers which does not depend on the label either.

With a CIFAR-10 folder the background is a CIFAR-10 image and each shape is cut out of
another, outlined in its own colour: the training and validation
clips take their images from the training batches only, the test clips from the test
batch only.

Clip `i` of a part is drawn from the seed `[seed, part, i]` alone, so any clip can be drawn
again without the others, and the three parts never share a stream.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHAPES = ("disc", "square", "triangle", "cross")
# Each shape's own colour (jittered per clip), so that which shape is which is plain to see:
# what the model has to learn is which one moves.
COLOURS = np.array([(230, 60, 60), (60, 200, 80), (70, 110, 240), (240, 210, 50)], dtype=np.float64)
COLOUR_JITTER = 20
CLASS_NAMES = tuple(f"the {shape} moves" for shape in SHAPES)
PARTS = ("train", "val", "test")
SIZE = 32
SHAPE_SIDE = 9
SPEED = (1.5, 3.0)  # pixels per frame
MAX_CLIPS = 200_000  # per part; 200,000 clips of 8 frames are 4.9 GB


def _masks() -> dict[str, np.ndarray]:
    rows, cols = np.mgrid[:SHAPE_SIDE, :SHAPE_SIDE]
    centre = SHAPE_SIDE // 2
    return {
        "disc": (rows - centre) ** 2 + (cols - centre) ** 2 <= centre**2 + 1,
        "square": (abs(rows - centre) <= 3) & (abs(cols - centre) <= 3),
        "triangle": (rows >= 1) & (abs(cols - centre) <= (rows - 1) * centre / (SHAPE_SIDE - 2)),
        "cross": (abs(rows - centre) <= 1) | (abs(cols - centre) <= 1),
    }


MASKS = _masks()


def _outline(mask: np.ndarray) -> np.ndarray:
    """The mask's pixels with a neighbour outside it (or on its box's edge)."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


@dataclass(frozen=True)
class MovingShapes:
    """The three parts of one draw, uint8 clips (N, frames, 32, 32, 3) and int32 labels
    (the index of the shape that moves), with what drew them; or, for an image model,
    each clip's first frame alone, (N, 32, 32, 3) (`first_frames`)."""

    train_clips: np.ndarray
    train_labels: np.ndarray
    val_clips: np.ndarray
    val_labels: np.ndarray
    test_clips: np.ndarray
    test_labels: np.ndarray
    seed: int
    frames: int
    cifar_directory: Path | None
    first_frame_only: bool = False

    class_names = CLASS_NAMES

    @property
    def model_frames(self) -> int:
        """The frames a model trained on these takes: 1 once reduced to first frames."""
        return 1 if self.first_frame_only else self.frames

    def first_frames(self) -> "MovingShapes":
        """Each clip's first frame alone: the data of a single-frame model, which, since one
        frame cannot tell the labels apart, stays at chance."""
        return dataclasses.replace(self, train_clips=self.train_clips[:, 0], val_clips=self.val_clips[:, 0],
                                   test_clips=self.test_clips[:, 0], first_frame_only=True)

    def describe(self) -> dict:
        """What a run records to draw the same clips again."""
        return {"kind": "moving_shapes", "seed": self.seed, "frames": self.frames,
                "first_frame_only": self.first_frame_only,
                "cifar_directory": str(self.cifar_directory) if self.cifar_directory else None,
                "train_clips": len(self.train_labels), "val_clips": len(self.val_labels),
                "test_clips": len(self.test_labels), "class_names": list(CLASS_NAMES)}


def draw_clip(seed: int, part: str, index: int, frames: int = 8,
              backgrounds: np.ndarray | None = None) -> tuple[np.ndarray, int, np.ndarray]:
    """Clip `index` of `part`: (frames, 32, 32, 3) uint8 pixels, its label, and every shape's
    top-left corner in every frame, (frames, 4, 2) rows and columns. `backgrounds`, CIFAR-10
    images (N, 32, 32, 3) of the part's own batches, give the background and the shapes'
    fill; without them both are plain colours."""
    rng = np.random.default_rng([seed, PARTS.index(part), index])
    label = int(rng.integers(len(SHAPES)))
    starts = rng.uniform(0, SIZE, size=(len(SHAPES), 2))
    speed, angle = rng.uniform(*SPEED), rng.uniform(0, 2 * np.pi)
    velocity = np.zeros((len(SHAPES), 2))
    velocity[label] = speed * np.array([np.sin(angle), np.cos(angle)])
    time = np.arange(frames)[:, None, None]
    corners = np.floor(starts + velocity * time).astype(np.int64) % SIZE  # (frames, shapes, 2)

    if backgrounds is None:
        background = rng.uniform(0, 60, size=3) + rng.normal(0, 6, size=(SIZE, SIZE, 3))
        fills = [np.broadcast_to(colour + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, size=3),
                                 (SHAPE_SIDE, SHAPE_SIDE, 3)) for colour in COLOURS]
    else:
        picks = rng.integers(len(backgrounds), size=1 + len(SHAPES))
        offsets = rng.integers(SIZE - SHAPE_SIDE + 1, size=(len(SHAPES), 2))
        background = backgrounds[picks[0]].astype(np.float64)
        fills = [backgrounds[pick, top : top + SHAPE_SIDE, left : left + SHAPE_SIDE].astype(np.float64)
                 for pick, (top, left) in zip(picks[1:], offsets, strict=True)]
    clip = np.empty((frames, SIZE, SIZE, 3), dtype=np.float64)
    span = np.arange(SHAPE_SIDE)
    for frame in range(frames):
        canvas = background.copy()
        for shape, fill, (top, left) in zip(SHAPES, fills, corners[frame], strict=True):
            rows, cols = np.ix_((top + span) % SIZE, (left + span) % SIZE)
            mask = MASKS[shape]
            patch = canvas[rows, cols]
            patch[mask] = fill[mask]
            if backgrounds is not None:
                patch[_outline(mask)] = COLOURS[SHAPES.index(shape)]
            canvas[rows, cols] = patch
        clip[frame] = canvas
    return np.clip(np.round(clip), 0, 255).astype(np.uint8), label, corners


def draw_part(seed: int, part: str, count: int, frames: int = 8,
              backgrounds: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Clips 0 to `count - 1` of `part`, (count, frames, 32, 32, 3), and their labels."""
    clips = np.empty((count, frames, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.empty(count, dtype=np.int32)
    for index in range(count):
        clips[index], labels[index], _ = draw_clip(seed, part, index, frames, backgrounds)
    return clips, labels


def check_clip_counts(counts: tuple[int, int, int]) -> None:
    """A ValueError unless each part's count of clips is one `moving_shapes` draws."""
    for part, count in zip(PARTS, counts, strict=True):
        if not 1 <= count <= MAX_CLIPS:
            raise ValueError(f"{count} {part} clips is out of range: must be from 1 to {MAX_CLIPS:,}")


def moving_shapes(train: int = 4000, val: int = 1000, test: int = 1000, frames: int = 8, seed: int = 0,
                  cifar_directory: str | os.PathLike | None = None, parts: tuple[str, ...] = PARTS) -> MovingShapes:
    """Draw the three parts (or only those in `parts`: the others are left empty, as an
    evaluation needs the test clips alone). A bad count or frame number raises a
    ValueError that says what is allowed; a CIFAR-10 folder that cannot be read, a `DataError`."""
    check_clip_counts((train, val, test))
    if not 2 <= frames <= 64:
        raise ValueError(f"frames={frames} is out of range: motion needs 2 to 64 frames")
    train_images = test_images = None
    if cifar_directory is not None:
        from tokenlearner.data import load_cifar10

        cifar = load_cifar10(cifar_directory)
        if cifar.test_images.shape[1:] != (SIZE, SIZE, 3):
            from tokenlearner.data import DataError

            raise DataError(f"{cifar.directory} holds {cifar.test_images.shape[1]}-pixel images; "
                            f"the moving shapes are drawn on {SIZE}x{SIZE} CIFAR-10 images")
        train_images, test_images = cifar.train_images, cifar.test_images
        cifar_directory = cifar.directory
    drawn = [draw_part(seed, part, count if part in parts else 0, frames, images)
             for part, count, images in zip(PARTS, (train, val, test), (train_images, train_images, test_images))]
    return MovingShapes(*drawn[0], *drawn[1], *drawn[2], seed=seed, frames=frames,
                        cifar_directory=Path(cifar_directory) if cifar_directory else None)


def from_record(record: dict, parts: tuple[str, ...] = PARTS) -> MovingShapes:
    """The clips a run's `data` record (`MovingShapes.describe`) says it was given."""
    drawn = moving_shapes(record["train_clips"], record["val_clips"], record["test_clips"], record["frames"],
                          record["seed"], record["cifar_directory"], parts)
    return drawn.first_frames() if record.get("first_frame_only") else drawn


def draw_clips(record: dict, part: str, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Clips `indices` of `part` of the clips a run's `data` record describes, each drawn
    alone (first frames, where the run took those), and their labels; an index outside the
    part raises a ValueError."""
    for index in indices:
        if not 0 <= index < record[f"{part}_clips"]:
            raise ValueError(f"{part} clip {index} does not exist: the run drew {part} clips 0 to "
                             f"{record[f'{part}_clips'] - 1}")
    backgrounds = None
    if record["cifar_directory"]:
        from tokenlearner.data import load_cifar10

        cifar = load_cifar10(record["cifar_directory"], train_images=part != "test")
        backgrounds = cifar.test_images if part == "test" else cifar.train_images
    drawn = [draw_clip(record["seed"], part, index, record["frames"], backgrounds)[:2] for index in indices]
    clips = np.stack([clip[0] if record.get("first_frame_only") else clip for clip, _ in drawn])
    return clips, np.array([label for _, label in drawn], dtype=np.int32)
