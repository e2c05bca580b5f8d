"""Which data a run trains on, as one value that the command line, grids and searches and
the app's training jobs share: CIFAR-10's images, or clips of moving shapes drawn from
the run's seed (`moving_shapes`, docs/video.md), plain or on CIFAR-10 images. An image
model given clips trains on each clip's first frame: the single-frame baseline."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from tokenlearner.config import ModelConfig
from tokenlearner.data import Cifar10, DataError, find_data_dir, load_cifar10
from tokenlearner.moving_shapes import PARTS, SIZE, MovingShapes, check_clip_counts, moving_shapes

DATA_SETS = ("cifar10", "moving-shapes", "moving-shapes-on-cifar")
DEFAULT_CLIPS = (4000, 1000, 1000)


@dataclass(frozen=True)
class DataChoice:
    """`name` is one of `DATA_SETS`; `clips` the training, validation and test clips to draw
    (moving shapes only). A `ValueError` says what is wrong with either."""

    name: str = "cifar10"
    clips: tuple[int, int, int] = DEFAULT_CLIPS

    def __post_init__(self) -> None:
        if self.name not in DATA_SETS:
            raise ValueError(f"data {self.name!r} is not known: choose one of {', '.join(DATA_SETS)}")
        clips = tuple(self.clips) if isinstance(self.clips, (list, tuple)) else ()
        if len(clips) != 3 or not all(isinstance(n, int) and not isinstance(n, bool) for n in clips):
            raise ValueError(f"clips={self.clips!r} must be three whole numbers: training, validation and test clips")
        check_clip_counts(clips)
        object.__setattr__(self, "clips", clips)

    @property
    def on_clips(self) -> bool:
        return self.name != "cifar10"

    def images_per_item(self, config: ModelConfig) -> int:
        """The images one training item of this data costs `config`: a clip's frames for a
        video model on clips, else 1 (an image, or a clip's first frame)."""
        return config.frames if self.on_clips and config.is_video else 1

    def flags(self) -> list[str]:
        """The `train` flags that choose this data."""
        return ["--data", self.name, *(["--clips", ",".join(map(str, self.clips))] if self.on_clips else [])]

    def to_dict(self) -> dict:
        return {"name": self.name, **({"clips": list(self.clips)} if self.on_clips else {})}

    @classmethod
    def from_dict(cls, values) -> "DataChoice":
        """The choice a grid's or search's `"data"` object describes: {"name": ..., "clips": [...]}."""
        if not isinstance(values, dict) or "name" not in values or set(values) - {"name", "clips"}:
            raise ValueError("\"data\" must be an object with a \"name\" (" + ", ".join(DATA_SETS)
                             + ") and, for moving shapes, \"clips\": [train, val, test]")
        return cls(values["name"], values.get("clips", DEFAULT_CLIPS))

    def check_fits(self, config: ModelConfig) -> None:
        """A `DataError` where this data cannot fit `config`, found without reading or
        drawing any of it (what depends on a CIFAR-10 folder's files is checked once read)."""
        if self.on_clips:
            drawn = moving_shapes(*self.clips, frames=_drawn_frames(config), parts=())  # no clip is drawn
            check_data_fits(config, drawn if config.is_video else drawn.first_frames())
        elif config.is_video:
            raise DataError(_images_for_clips(config, "CIFAR-10"))

    def load(self, config: ModelConfig, seed: int = 0, data_dir: str | os.PathLike | None = None,
             parts: tuple[str, ...] = PARTS) -> Cifar10 | MovingShapes:
        """The data for `config`: CIFAR-10 from `data_dir` (default: `find_data_dir`'s), or the
        `parts` of moving-shape clips of its frames drawn from `seed` (on CIFAR-10 images
        from `data_dir`); for an image model, their first frames."""
        if not self.on_clips:
            return load_cifar10(find_data_dir(data_dir))
        cifar = find_data_dir(data_dir) if self.name == "moving-shapes-on-cifar" else None
        drawn = moving_shapes(*self.clips, frames=_drawn_frames(config), seed=seed, cifar_directory=cifar,
                              parts=parts)
        return drawn if config.is_video else drawn.first_frames()

    def key(self, config: ModelConfig, seed: int) -> tuple:
        """What `load`'s result depends on besides the data folder: runs with equal keys can
        share one load (CIFAR-10 is the same for every run; clips depend on the seed and
        the frames)."""
        return (self.name,) if not self.on_clips else (self.name, self.clips, _drawn_frames(config),
                                                       config.is_video, seed)


def _drawn_frames(config: ModelConfig) -> int:
    # An image model takes each clip's first frame, which is the same however many frames are drawn.
    return config.frames if config.is_video else 2


def _images_for_clips(config: ModelConfig, where: str) -> str:
    return (f"{where} holds images and the model takes clips of {config.frames} frames: train it on clips "
            "(moving shapes, docs/video.md), or set frames to 1")


def check_data_fits(model_config: ModelConfig, data: Cifar10 | MovingShapes) -> None:
    """A DataError unless `data` has the image size, the frames and the classes `model_config` takes."""
    if isinstance(data, MovingShapes):
        where, size = "the moving shapes", SIZE
        if model_config.frames != data.model_frames:
            holds = "single frames" if data.first_frame_only else f"clips of {data.frames} frames"
            takes = f"{model_config.frames}-frame clips" if model_config.is_video else "images"
            raise DataError(f"the moving shapes are {holds} and the model takes {takes}: "
                            f"set --frames {data.model_frames}")
    else:
        where, size = str(data.directory), data.test_images.shape[1]
        if model_config.is_video:
            raise DataError(_images_for_clips(model_config, f"{where} (CIFAR-10)"))
    if size != model_config.input_size:
        raise DataError(f"{where} holds {size}x{size} images and the model takes {model_config.input_size}"
                        f"x{model_config.input_size} ones: set --input-size {size}")
    if len(data.class_names) != model_config.num_classes:
        raise DataError(f"{where} has {len(data.class_names)} classes and the model "
                        f"{model_config.num_classes}: set --num-classes {len(data.class_names)}")


def test_set(data: Cifar10 | MovingShapes) -> tuple[np.ndarray, np.ndarray]:
    """The test images (or clips) and their labels."""
    if isinstance(data, MovingShapes):
        return data.test_clips, data.test_labels
    return data.test_images, data.test_labels
