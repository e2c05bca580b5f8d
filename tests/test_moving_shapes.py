"""The drawn video data set: deterministic, a label that one frame cannot tell, and
CIFAR-10 pixels only from the batches each part may use."""

import numpy as np
import pytest
from cifar_files import make_cifar_folder, write_batch

from tokenlearner.data import TEST_BATCH, TRAIN_BATCHES
from tokenlearner.config import ModelConfig
from tokenlearner.data import DataError
from tokenlearner.moving_shapes import (CLASS_NAMES, COLOURS, SHAPES, SIZE, draw_clip, draw_part, draw_clips,
                                        from_record, moving_shapes)
from tokenlearner.datasets import check_data_fits


def test_the_same_seed_draws_the_same_clips_and_each_clip_alone():
    first, again = moving_shapes(12, 5, 5, frames=4, seed=3), moving_shapes(12, 5, 5, frames=4, seed=3)
    for name in ("train_clips", "train_labels", "val_clips", "test_clips", "test_labels"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert first.train_clips.shape == (12, 4, SIZE, SIZE, 3) and first.train_clips.dtype == np.uint8
    clip, label, _ = draw_clip(3, "train", 7, frames=4)
    np.testing.assert_array_equal(clip, first.train_clips[7])
    assert label == first.train_labels[7]
    np.testing.assert_array_equal(draw_part(3, "train", 5, frames=4)[0], first.train_clips[:5])  # a prefix
    other_seed = moving_shapes(12, 5, 5, frames=4, seed=4)
    assert not np.array_equal(other_seed.train_clips, first.train_clips)
    # The three parts draw from streams of their own: no clip of one is a clip of another.
    every = np.concatenate([first.train_clips, first.val_clips, first.test_clips]).reshape(22, -1)
    assert len(np.unique(every, axis=0)) == 22
    assert first.describe() == {"kind": "moving_shapes", "seed": 3, "frames": 4, "first_frame_only": False,
                                "cifar_directory": None, "train_clips": 12, "val_clips": 5, "test_clips": 5,
                                "class_names": list(CLASS_NAMES)}
    for part, drawn in (("test", first.test_clips), ("val", first.val_clips)):
        clips, labels = draw_clips(first.describe(), part, [4, 1])
        np.testing.assert_array_equal(clips, drawn[[4, 1]])
        np.testing.assert_array_equal(labels, getattr(first, f"{part}_labels")[[4, 1]])
    with pytest.raises(ValueError, match="test clip 5 does not exist: the run drew test clips 0 to 4"):
        draw_clips(first.describe(), "test", [5])
    single, _ = draw_clips(first.first_frames().describe(), "val", [2])
    np.testing.assert_array_equal(single[0], first.val_clips[2, 0])
    drawn_again = from_record(first.describe(), parts=("test",))
    np.testing.assert_array_equal(drawn_again.test_clips, first.test_clips)
    assert len(drawn_again.train_clips) == 0


def test_a_single_frame_model_sees_each_clips_first_frame():
    """However many frames a clip is drawn with, its first frame is the same: the baseline
    of an image model sees exactly the first frames of the video model's clips."""
    long, short = moving_shapes(6, 3, 3, frames=8, seed=2), moving_shapes(6, 3, 3, frames=2, seed=2)
    np.testing.assert_array_equal(long.train_clips[:, 0], short.train_clips[:, 0])
    single = short.first_frames()
    assert single.train_clips.shape == (6, SIZE, SIZE, 3) and single.model_frames == 1
    np.testing.assert_array_equal(single.test_labels, long.test_labels)
    np.testing.assert_array_equal(from_record(single.describe()).val_clips, long.val_clips[:, 0])
    image_model, clip_model = ModelConfig(num_classes=4), ModelConfig(num_classes=4, frames=8)
    check_data_fits(image_model, single)
    check_data_fits(clip_model, long)
    with pytest.raises(DataError, match="the moving shapes are single frames and the model takes 8-frame clips: "
                                        "set --frames 1"):
        check_data_fits(clip_model, single)
    with pytest.raises(DataError, match="are clips of 8 frames and the model takes images: set --frames 8"):
        check_data_fits(image_model, long)
    with pytest.raises(DataError, match="has 4 classes and the model 10: set --num-classes 4"):
        check_data_fits(ModelConfig(frames=8), long)


def test_only_the_labelled_shape_moves():
    for index in range(200):
        _, label, corners = draw_clip(0, "train", index, frames=8)
        steps = np.abs(np.diff(corners, axis=0))
        steps = np.minimum(steps, SIZE - steps)  # across the torus' seam
        moved = steps.max(axis=(0, 2)) > 0
        assert moved.tolist() == [shape == label for shape in range(len(SHAPES))]
        assert steps[:, label].sum(axis=1).max() <= 2 * 3 + 2  # at most 3 pixels a frame, each way, and rounding
        travelled = np.hypot(*(corners[-1, label] - corners[0, label] + SIZE / 2) % SIZE - SIZE / 2)
        assert travelled >= 1.5 * 7 - 2


def _chi_square(counts: np.ndarray) -> float:
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


def test_a_single_frame_has_the_same_distribution_under_every_label():
    """A frame is drawn from every shape's corner in it, colours and a background that do
    not depend on the label, in a fixed order. So it is enough that, in every frame, each
    shape's corner is uniform on the canvas under every label, whether that shape moves or
    not: counted in 4 x 4 cells over 4,000 clips, no label's count may stray from uniform by
    more than chance allows (chi-square with 15 degrees of freedom, 0.01% tail: 45.1)."""
    clips, frames = 4000, 4
    cells = np.zeros((len(SHAPES), frames, len(SHAPES), 16))  # label, frame, shape, cell
    for index in range(clips):
        _, label, corners = draw_clip(1, "train", index, frames=frames)
        cell = (corners[..., 0] // 8) * 4 + corners[..., 1] // 8  # (frames, shapes)
        for frame in range(frames):
            cells[label, frame, np.arange(len(SHAPES)), cell[frame]] += 1
    worst = max(_chi_square(cells[label, frame, shape]) for label in range(len(SHAPES))
                for frame in range(frames) for shape in range(len(SHAPES)))
    assert worst < 45.1
    labels = cells[:, 0, 0].sum(axis=1)
    assert labels.min() > clips / len(SHAPES) * 0.9  # the four labels about equally often


def test_a_single_frame_gives_a_classifier_nothing_to_go_on():
    """On the pixels: nearest class-mean on 8 x 8 thumbnails of one frame stays at chance."""
    data = moving_shapes(2000, 10, 1000, frames=2, seed=5)

    def thumbnails(clips):
        return clips[:, 1].reshape(len(clips), 8, 4, 8, 4, 3).mean(axis=(2, 4)).reshape(len(clips), -1)

    train, test = thumbnails(data.train_clips), thumbnails(data.test_clips)
    means = np.stack([train[data.train_labels == label].mean(axis=0) for label in range(len(SHAPES))])
    predicted = np.argmin(((test[:, None, :] - means[None]) ** 2).sum(axis=-1), axis=1)
    assert abs((predicted == data.test_labels).mean() - 1 / len(SHAPES)) < 0.05


def test_cifar_pixels_come_from_the_parts_own_batches(tmp_path):
    folder = make_cifar_folder(tmp_path / "cifar-10-batches-py", rows_per_batch=4, test_rows=4)
    for name in TRAIN_BATCHES:
        write_batch(folder / name, np.full((4, 32, 32, 3), 10, np.uint8), np.zeros(4, int))
    write_batch(folder / TEST_BATCH, np.full((4, 32, 32, 3), 150, np.uint8), np.zeros(4, int))
    data = moving_shapes(6, 6, 6, frames=3, cifar_directory=folder)
    outlines = set(COLOURS.astype(int).ravel())  # each shape outlined in its own colour
    for clips in (data.train_clips, data.val_clips):
        assert set(np.unique(clips)) - outlines == {10}  # the training images' pixels, nothing else
    assert set(np.unique(data.test_clips)) - outlines == {150}
    assert data.describe()["cifar_directory"] == str(folder)


@pytest.mark.parametrize("arguments, message", [
    ({"train": 0}, "0 train clips is out of range: must be from 1 to 200,000"),
    ({"test": 10**6}, "1000000 test clips is out of range"),
    ({"frames": 1}, "frames=1 is out of range: motion needs 2 to 64 frames"),
])
def test_bad_sizes_are_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        moving_shapes(**{"train": 2, "val": 2, "test": 2, **arguments})
