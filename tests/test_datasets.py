"""`DataChoice`: which data a run trains on, shared by `train`, grids, searches and the
app's jobs."""

import numpy as np
import pytest

from tokenlearner.config import ModelConfig
from tokenlearner.data import DataError
from tokenlearner.datasets import DATA_SETS, DataChoice
from tokenlearner.moving_shapes import moving_shapes
from tokenlearner.presets import preset

CLIP_MODEL = preset("video-shapes")
IMAGE_MODEL_ON_CLIPS = CLIP_MODEL.replace(frames=1, tubelet_frames=1)


@pytest.mark.parametrize("values, message", [
    ({"name": "imagenet"}, "data 'imagenet' is not known: choose one of " + ", ".join(DATA_SETS)),
    ({"name": "moving-shapes", "clips": [10, 10]}, "must be three whole numbers"),
    ({"name": "moving-shapes", "clips": [10, 1.5, 10]}, "must be three whole numbers"),
    ({"name": "moving-shapes", "clips": [10, True, 10]}, "must be three whole numbers"),
    ({"name": "moving-shapes", "clips": [10, 0, 10]}, "0 val clips is out of range"),
    ({"name": "moving-shapes", "clips": "10,10,10"}, "must be three whole numbers"),
    ({"clips": [10, 10, 10]}, "\"data\" must be an object with a \"name\""),
    ({"name": "moving-shapes", "frames": 8}, "\"data\" must be an object with a \"name\""),
    ("moving-shapes", "\"data\" must be an object with a \"name\""),
])
def test_a_wrong_data_entry_says_what_is_wrong(values, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DataChoice.from_dict(values)


def test_a_choice_round_trips_through_its_dict_and_its_flags():
    from tokenlearner.cli import build_parser

    for choice in (DataChoice(), DataChoice("moving-shapes", (30, 5, 6)), DataChoice("moving-shapes-on-cifar")):
        assert DataChoice.from_dict(choice.to_dict()) == choice
        args = build_parser().parse_args(["train", "--out", "x", *choice.flags()])
        assert DataChoice(args.data, args.clips) == choice
    assert DataChoice().flags() == ["--data", "cifar10"]


@pytest.mark.parametrize("choice, config, message", [
    (DataChoice(), CLIP_MODEL, "CIFAR-10 holds images and the model takes clips of 8 frames"),
    (DataChoice("moving-shapes"), ModelConfig(frames=8, tubelet_frames=2), "has 4 classes and the model 10"),
    (DataChoice("moving-shapes"), CLIP_MODEL.replace(input_size=48, resize_size=48, image_size=48),
     "holds 32x32 images and the model takes 48x48"),
])
def test_a_model_the_data_cannot_fit_is_refused_before_any_is_read(choice, config, message):
    with pytest.raises(DataError, match=message):
        choice.check_fits(config)


def test_what_each_model_takes_of_the_clips():
    choice = DataChoice("moving-shapes", (6, 3, 2))
    choice.check_fits(CLIP_MODEL)
    choice.check_fits(IMAGE_MODEL_ON_CLIPS)  # the single-frame baseline
    clips, frames = choice.load(CLIP_MODEL, seed=5), choice.load(IMAGE_MODEL_ON_CLIPS, seed=5)
    assert clips.train_clips.shape == (6, 8, 32, 32, 3) and frames.train_clips.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(frames.val_clips, clips.val_clips[:, 0])
    np.testing.assert_array_equal(clips.test_clips, moving_shapes(6, 3, 2, frames=8, seed=5).test_clips)
    assert choice.images_per_item(CLIP_MODEL) == 8 and choice.images_per_item(IMAGE_MODEL_ON_CLIPS) == 1
    assert DataChoice().images_per_item(ModelConfig()) == 1
    assert choice.key(CLIP_MODEL, 5) != choice.key(CLIP_MODEL, 6) != choice.key(IMAGE_MODEL_ON_CLIPS, 6)
    assert DataChoice().key(ModelConfig(), 0) == DataChoice().key(ModelConfig(depth=2, placement=1), 1), "one load"
