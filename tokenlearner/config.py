"""The model configuration: one frozen dataclass whose defaults are the keras.io example.

`ModelConfig()` is the mini ViT of "Learning to tokenize in Vision Transformers"
(Gosthipaty & Paul, keras.io) with a TokenLearner v1.0 of 4 tokens after its third
block. Every field is validated when the object is made, before any TensorFlow work,
and a bad value raises a `ValueError` that names the field, the value and what is
allowed. This module imports nothing heavy, so the app's pages and the FLOPs counter
can use it without loading TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

TOKENLEARNER_VERSIONS = ("none", "v1", "v11")
V11_STYLES = ("grouped_conv", "mlp")
POOLINGS = ("mean", "sum")
INFERENCE_CROPS = ("top_left", "center")

MAX_DEPTH = 48
MAX_IMAGE_SIDE = 1024
MAX_FRAMES = 64


def _knob(default: Any, help: str, flag: str | None = None) -> Any:
    """A config field with the help text that the command line and the app show."""
    return field(default=default, metadata={"help": help, "flag": flag})


@dataclass(frozen=True)
class Stage:
    """One step of a model's layout (`ModelConfig.stages`): a transformer block, a
    TokenLearner or a TokenFuser, named as `build_model` names its layer, with the number
    of tokens it reads per image or clip, over all its temporal slices (for a block, the
    tokens it attends over)."""

    kind: str  # "block", "token_learner" or "token_fuser"
    name: str
    tokens: int


@dataclass(frozen=True)
class ModelConfig:
    """A mini Vision Transformer, optionally with TokenLearner and TokenFuser."""

    # Input and preprocessing (inside the model, as in the keras.io example).
    input_size: int = _knob(32, "side of the square input images in pixels (CIFAR-10: 32)")
    frames: int = _knob(
        1, f"frames per input clip, 1 to {MAX_FRAMES}; 1 is the image model, taking (B, H, W, 3) "
           "images, more takes (B, frames, H, W, 3) clips"
    )
    resize_size: int = _knob(
        52, "images are rescaled to [0, 1] and resized to this side; must be >= image_size"
    )
    image_size: int = _knob(
        48, "side of the random training crop; a multiple of patch_size, at most resize_size"
    )
    inference_crop: str = _knob(
        "top_left",
        "window the patches see at inference: top_left reproduces keras.io (its RandomCrop "
        "passes the resized image through and the VALID patch conv keeps the top-left "
        "image_size window), center takes the middle window",
    )
    # Patch embedding and transformer.
    patch_size: int = _knob(6, "side of the square patches (6 -> an 8x8 grid of 64 patches)")
    tubelet_frames: int = _knob(
        1, "frames each patch spans (ViViT tubelets); must divide frames. The model runs on "
           "frames / tubelet_frames temporal slices, and TokenLearner learns its tokens per slice"
    )
    dim: int = _knob(128, "width of the patch embedding and of every block's residual stream")
    depth: int = _knob(4, f"number of transformer blocks, 1 to {MAX_DEPTH}")
    heads: int = _knob(4, "attention heads per block")
    key_dim: int = _knob(128, "width of each head's queries, keys and values (keras.io: 128, not dim/heads)")
    mlp_units: tuple[int, ...] = _knob(
        (256, 128), "widths of the MLP's Dense layers, each followed by GELU; the last must equal dim"
    )
    dropout: float = _knob(0.1, "dropout after the position embedding and after each MLP Dense, in [0, 1)")
    attention_dropout: float = _knob(0.1, "dropout on the attention weights, in [0, 1)")
    num_classes: int = _knob(10, "number of output classes (CIFAR-10: 10)")
    # TokenLearner and TokenFuser.
    tokenlearner: str = _knob(
        "v1",
        "none, v1 (TokenLearner v1.0: four 3x3 convs, sigmoid maps) or "
        "v11 (TokenLearner v1.1: softmax maps, see v11_style)",
    )
    num_tokens: int = _knob(4, "tokens TokenLearner learns, 1 to the number of patches", flag="--tokens")
    placement: int = _knob(
        3,
        "blocks that run on the patches before TokenLearner: 0 = right after the patch "
        "embedding, depth = after the last block (keras.io: 3 of 4)",
    )
    pooling: str = _knob(
        "mean", "how TokenLearner v1.0 pools its weighted positions: mean (keras.io) or sum (official code)"
    )
    fuser: bool = _knob(
        False,
        "TokenFuser: every block from placement on becomes TokenLearner -> block -> "
        "TokenFuser + residual, so the token count returns to the number of patches",
    )
    v11_style: str = _knob(
        "grouped_conv",
        "TokenLearner v1.1 form: grouped_conv (two grouped 1x1 convs, as the keras.io "
        "authors describe) or mlp (the current official code: LayerNorm, MLP, softmax)",
    )
    v11_groups: int = _knob(4, "groups of v1.1's grouped 1x1 convs; must divide dim")
    bottleneck_dim: int = _knob(64, "hidden width of the v1.1 mlp selector and of TokenFuser's gate MLP")

    def __post_init__(self) -> None:
        if isinstance(self.mlp_units, list):
            object.__setattr__(self, "mlp_units", tuple(self.mlp_units))
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        self._check_ranges()

    # Derived quantities.
    @property
    def grid_size(self) -> int:
        """Patches along each side of the (square) patch grid."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patches per frame (per temporal slice of a clip)."""
        return self.grid_size**2

    @property
    def is_video(self) -> bool:
        return self.frames > 1

    @property
    def temporal_slices(self) -> int:
        """Slices of a clip along time, each `tubelet_frames` frames: TokenLearner and
        TokenFuser run on each slice's patches on their own, as in the official code."""
        return self.frames // self.tubelet_frames

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One input without its batch axis: (H, W, 3), or (frames, H, W, 3) for a clip."""
        image = (self.input_size, self.input_size, 3)
        return (self.frames, *image) if self.is_video else image

    @property
    def crop_offset(self) -> int:
        """Row and column, in the resized image, of the window the patches see at inference."""
        return 0 if self.inference_crop == "top_left" else (self.resize_size - self.image_size) // 2

    def covered_region(self) -> tuple[float, float, float, float]:
        """(top, left, bottom, right) of the input image that the patches cover at inference,
        as fractions of its side: attention overlays are drawn over this region only."""
        start = self.crop_offset / self.resize_size
        end = (self.crop_offset + self.image_size) / self.resize_size
        return (start, start, end, end)

    def stages(self) -> tuple["Stage", ...]:
        """The model's layout after the patch embedding, in order: the one description that
        `build_model`, the FLOPs and parameter counts and the app follow.

        Without TokenFuser one TokenLearner sits before block `placement` (after the last
        block when placement == depth) and the blocks after it attend over its tokens. With
        TokenFuser every block from `placement` on is wrapped: a TokenLearner of its own
        before it, a TokenFuser after it that maps the tokens back onto the patches. A clip's
        blocks attend over every slice's patches or tokens together."""
        learned = self.tokenlearner != "none"
        patches, tokens = self.temporal_slices * self.num_patches, self.temporal_slices * self.num_tokens
        stages = []
        for index in range(self.depth):
            if self.fuser and index >= self.placement:
                stages += [Stage("token_learner", f"token_learner_{index}", patches),
                           Stage("block", f"block_{index}", tokens),
                           Stage("token_fuser", f"token_fuser_{index}", tokens)]
                continue
            if learned and index == self.placement:
                stages.append(Stage("token_learner", "token_learner", patches))
            after_learner = learned and not self.fuser and index >= self.placement
            stages.append(Stage("block", f"block_{index}", tokens if after_learner else patches))
        if learned and self.placement == self.depth:
            stages.append(Stage("token_learner", "token_learner", patches))
        return tuple(stages)

    def layer_names(self, kind: str) -> list[str]:
        """The names of the layers of one kind ("block", "token_learner", "token_fuser") in
        depth order: `predict_with_maps` hands back each TokenLearner's and TokenFuser's maps
        under these names, so `maps[config.layer_names("token_learner")[0]]` are the first
        TokenLearner's."""
        return [stage.name for stage in self.stages() if stage.kind == kind]

    def tokens_per_block(self) -> list[int]:
        """How many tokens each block attends over."""
        return [stage.tokens for stage in self.stages() if stage.kind == "block"]

    def final_tokens(self) -> int:
        """Tokens the classifier averages over: TokenLearner's, unless a TokenFuser has
        mapped them back onto the patches."""
        learned = self.tokenlearner != "none" and not self.fuser
        return self.temporal_slices * (self.num_tokens if learned else self.num_patches)

    # Serialisation.
    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["mlp_units"] = list(self.mlp_units)
        return values

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        return _from_dict(cls, values, "model config")

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(_parse_json(text, "model config"))

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def _check_ranges(self) -> None:
        _in_range("input_size", self.input_size, 1, MAX_IMAGE_SIDE)
        _in_range("frames", self.frames, 1, MAX_FRAMES)
        _in_range("tubelet_frames", self.tubelet_frames, 1, self.frames, "at most frames")
        if self.frames % self.tubelet_frames:
            raise ValueError(
                f"tubelet_frames={self.tubelet_frames} does not divide frames={self.frames}: "
                "a clip is cut into whole tubelets along time"
            )
        _in_range("patch_size", self.patch_size, 1, MAX_IMAGE_SIDE)
        _in_range("image_size", self.image_size, self.patch_size, MAX_IMAGE_SIDE,
                  "at least patch_size")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}: "
                f"choose an image_size that is a multiple of {self.patch_size} "
                f"(for example {self.grid_size * self.patch_size or self.patch_size})"
            )
        _in_range("resize_size", self.resize_size, self.image_size, MAX_IMAGE_SIDE,
                  "the crop is taken from the resized image, so at least image_size")
        _one_of("inference_crop", self.inference_crop, INFERENCE_CROPS)
        _in_range("dim", self.dim, 1, 4096)
        _in_range("depth", self.depth, 1, MAX_DEPTH)
        _in_range("heads", self.heads, 1, 64)
        _in_range("key_dim", self.key_dim, 1, 4096)
        if not self.mlp_units:
            raise ValueError("mlp_units=() is empty: give at least one width, the last equal to dim")
        for width in self.mlp_units:
            _in_range("mlp_units", width, 1, 16384)
        if self.mlp_units[-1] != self.dim:
            raise ValueError(
                f"mlp_units={list(self.mlp_units)} must end with dim={self.dim}: "
                "the MLP's output is added back to the residual stream"
            )
        _fraction("dropout", self.dropout)
        _fraction("attention_dropout", self.attention_dropout)
        _in_range("num_classes", self.num_classes, 2, 100_000)
        _one_of("tokenlearner", self.tokenlearner, TOKENLEARNER_VERSIONS)
        _in_range("num_tokens", self.num_tokens, 1, self.num_patches,
                  f"at most the number of patches, ({self.image_size}/{self.patch_size})^2")
        _in_range("placement", self.placement, 0, self.depth, "0 to depth")
        _one_of("pooling", self.pooling, POOLINGS)
        _one_of("v11_style", self.v11_style, V11_STYLES)
        _in_range("v11_groups", self.v11_groups, 1, self.dim)
        _in_range("bottleneck_dim", self.bottleneck_dim, 1, 4096)
        if self.tokenlearner == "v11" and self.v11_style == "grouped_conv" and self.dim % self.v11_groups:
            raise ValueError(
                f"v11_groups={self.v11_groups} does not divide dim={self.dim}: "
                "the grouped convs split the channels evenly"
            )
        if self.pooling != "mean" and self.tokenlearner != "v1":
            raise ValueError(
                f"pooling={self.pooling!r} applies to TokenLearner v1.0 only "
                f"(tokenlearner={self.tokenlearner!r}); v1.1's softmax maps are already normalised"
            )
        if self.fuser:
            if self.tokenlearner == "none":
                raise ValueError("fuser=True needs a TokenLearner: set tokenlearner to v1 or v11")
            if self.placement >= self.depth:
                raise ValueError(
                    f"placement={self.placement} with fuser=True must be less than depth={self.depth}: "
                    "TokenFuser wraps the blocks from placement on, so at least one must remain"
                )


SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained; the defaults are the keras.io recipe."""

    epochs: int = _knob(20, "passes over the training images (keras.io: 20)")
    batch_size: int = _knob(256, "images per step (keras.io: 256)")
    learning_rate: float = _knob(1e-3, "AdamW learning rate, the peak when a schedule is used (keras.io: 1e-3)")
    weight_decay: float = _knob(1e-4, "AdamW weight decay (keras.io: 1e-4)")
    schedule: str = _knob("constant", "learning-rate schedule after warm-up: constant (keras.io) or cosine decay to 0")
    warmup_epochs: int = _knob(0, "epochs of linear warm-up from 0 to learning_rate, fewer than epochs")
    label_smoothing: float = _knob(0.0, "label smoothing of the cross-entropy, in [0, 1)")
    random_shift: int = _knob(0, "move each image by its own random offset of up to this many pixels "
                                 "(reflect padding) before the model's own augmentation; 0: off (keras.io)")
    mixup_alpha: float = _knob(0.0, "mixup: blend each batch with itself reversed, weight ~ Beta(alpha, alpha); "
                                    "0: off (keras.io)")
    cutmix_alpha: float = _knob(0.0, "CutMix: paste a box of the reversed batch, area ~ Beta(alpha, alpha); "
                                     "with mixup too, each batch takes one of them; 0: off (keras.io)")
    seed: int = _knob(0, "seed of the split, the shuffling, the initial weights, augmentation and dropout")
    validation_fraction: float = _knob(0.2, "share of the training batches held out for validation (keras.io: 0.2)")
    limit: int = _knob(0, "train on only this many images (0: all), for quick runs")
    eval_limit: int = _knob(0, "validate and test on only this many images each (0: all), for quick runs")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        _in_range("epochs", self.epochs, 1, 10_000)
        _in_range("batch_size", self.batch_size, 1, 8192)
        if not 0.0 < self.learning_rate <= 1.0:
            raise ValueError(f"learning_rate={self.learning_rate} is out of range: must be in (0, 1]")
        if not 0.0 <= self.weight_decay < 1.0:
            raise ValueError(f"weight_decay={self.weight_decay} is out of range: must be in [0, 1)")
        _one_of("schedule", self.schedule, SCHEDULES)
        _in_range("warmup_epochs", self.warmup_epochs, 0, self.epochs - 1, "fewer than epochs")
        _fraction("label_smoothing", self.label_smoothing)
        _in_range("random_shift", self.random_shift, 0, 16)
        for name in ("mixup_alpha", "cutmix_alpha"):
            if not 0.0 <= getattr(self, name) <= 10.0:
                raise ValueError(f"{name}={getattr(self, name)} is out of range: must be in [0, 10] (0 turns it off)")
        _in_range("seed", self.seed, 0, 2**31 - 1)
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction={self.validation_fraction} is out of range: must be in (0, 1)")
        _in_range("limit", self.limit, 0, 10_000_000, "0 means every training image")
        _in_range("eval_limit", self.eval_limit, 0, 10_000_000, "0 means every validation and test image")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        return _from_dict(cls, values, "training config")

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        return cls.from_dict(_parse_json(text, "training config"))

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def _from_dict(config_class, values: Any, what: str):
    """`config_class` from a dict (a JSON object); unknown fields are named, with the known ones."""
    if not isinstance(values, dict):
        raise ValueError(f"a {what} must be a JSON object, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what} field(s) {', '.join(unknown)}; known fields: {', '.join(sorted(known))}")
    return config_class(**values)


def _parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"the {what} is not valid JSON: {error}") from None


def _check_type(name: str, value: Any, annotation: str) -> None:
    expected = {"int": int, "float": (int, float), "str": str, "bool": bool}.get(annotation)
    if annotation == "tuple[int, ...]":
        if not isinstance(value, tuple) or not all(_is_int(v) for v in value):
            raise ValueError(f"{name}={value!r} must be a list of integers")
        return
    ok = _is_int(value) if annotation == "int" else (
        isinstance(value, expected) and not (annotation == "float" and isinstance(value, bool))
    )
    if not ok:
        raise ValueError(f"{name}={value!r} must be of type {annotation}, not {type(value).__name__}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _in_range(name: str, value: int, low: int, high: int, why: str = "") -> None:
    if not low <= value <= high:
        because = f" ({why})" if why else ""
        raise ValueError(f"{name}={value} is out of range: must be from {low} to {high}{because}")


def _fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:  # also refuses NaN
        raise ValueError(f"{name}={value} is out of range: must be in [0, 1)")


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed: choose one of {', '.join(allowed)}")
