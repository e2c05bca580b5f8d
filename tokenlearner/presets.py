"""Named configurations: the rows of the keras.io example's results tables, and the
video model of `checkpoints/video-shapes` (docs/video.md).

`PUBLISHED` holds what the example's authors report for each row (CIFAR-10, 20 epochs,
top-1 averaged over 5 runs for the v1.0 table, one run for v1.1), so the project's own
numbers can be set beside them.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenlearner.config import ModelConfig


@dataclass(frozen=True)
class PublishedResult:
    top1: float  # percent
    gflops: float  # the table's "GFLOPs" (see tokenlearner.flops for what it counts)
    runs: int
    description: str


_KERAS_IO = ModelConfig()

PRESETS: dict[str, ModelConfig] = {
    "keras-io-no-tokenlearner": _KERAS_IO.replace(tokenlearner="none"),
    "keras-io-4-tokens": _KERAS_IO,
    "keras-io-8-tokens": _KERAS_IO.replace(num_tokens=8),
    "keras-io-depth-8": _KERAS_IO.replace(tokenlearner="none", depth=8),
    "keras-io-v11-4-groups-4-tokens": _KERAS_IO.replace(tokenlearner="v11", v11_groups=4, num_tokens=4),
    "keras-io-v11-8-groups-8-tokens": _KERAS_IO.replace(tokenlearner="v11", v11_groups=8, num_tokens=8),
    "keras-io-v11-4-groups-8-tokens": _KERAS_IO.replace(tokenlearner="v11", v11_groups=4, num_tokens=8),
    # 8-frame clips of moving shapes (32x32, 4 classes) in tubelets of 2 frames, 4-pixel patches
    "video-shapes": _KERAS_IO.replace(frames=8, tubelet_frames=2, resize_size=32, image_size=32, patch_size=4,
                                      num_classes=4, tokenlearner="v11", num_tokens=8, placement=1),
}

# The keras.io example's own model: what a config starts from when no preset is named.
DEFAULT_PRESET = "keras-io-4-tokens"

# The no-TokenLearner row appears twice in the keras.io table (56.112% and 56.37%).
PUBLISHED: dict[str, PublishedResult] = {
    "keras-io-no-tokenlearner": PublishedResult(56.24, 0.0184, 5, "no TokenLearner (56.11% and 56.37% in two rows)"),
    "keras-io-4-tokens": PublishedResult(56.498, 0.0147, 5, "TokenLearner v1.0, 4 tokens"),
    "keras-io-8-tokens": PublishedResult(56.55, 0.0153, 5, "TokenLearner v1.0, 8 tokens"),
    "keras-io-depth-8": PublishedResult(55.36, 0.0359, 5, "no TokenLearner, 8 blocks"),
    "keras-io-v11-4-groups-4-tokens": PublishedResult(54.638, 0.0149, 1, "TokenLearner v1.1, 4 groups, 4 tokens"),
    "keras-io-v11-8-groups-8-tokens": PublishedResult(54.898, 0.0146, 1, "TokenLearner v1.1, 8 groups, 8 tokens"),
    "keras-io-v11-4-groups-8-tokens": PublishedResult(55.196, 0.0149, 1, "TokenLearner v1.1, 4 groups, 8 tokens"),
}


def preset(name: str) -> ModelConfig:
    """The named configuration; a `ValueError` lists the names when `name` is unknown."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}") from None
