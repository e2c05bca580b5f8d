import numpy as np
import pytest

from tokenlearner.augment import BatchAugmentation
from tokenlearner.config import TrainConfig

BATCH, SIDE, CLASSES = 6, 8, 4


def batch():
    # Every pixel value is unique, so where each output pixel came from can be read off.
    images = np.arange(BATCH * SIDE * SIDE * 3, dtype=np.float32).reshape(BATCH, SIDE, SIDE, 3)
    targets = np.eye(CLASSES, dtype=np.float32)[np.arange(BATCH) % CLASSES]
    return images, targets


def run(**recipe):
    return [np.asarray(t) for t in BatchAugmentation(TrainConfig(**recipe))(*batch())]


def test_off_by_default():
    assert not BatchAugmentation.wanted(TrainConfig())
    assert BatchAugmentation.wanted(TrainConfig(random_shift=2))


def test_random_shift_moves_each_image_by_its_own_offset_with_reflect_padding():
    images, _ = batch()
    shifted, targets = run(random_shift=2, seed=3)
    np.testing.assert_array_equal(targets, batch()[1])
    offsets = set()
    for original, moved in zip(images, shifted):
        padded = np.pad(original, ((2, 2), (2, 2), (0, 0)), mode="reflect")
        matches = [(dy, dx) for dy in range(5) for dx in range(5)
                   if np.array_equal(padded[dy:dy + SIDE, dx:dx + SIDE], moved)]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 1, "every image of the batch got the same offset"


@pytest.mark.parametrize("recipe", [{"mixup_alpha": 0.8}, {"cutmix_alpha": 1.0}])
def test_mixing_blends_images_and_targets_by_the_same_weight(recipe):
    images, targets = batch()
    mixed, mixed_targets = run(seed=1, **recipe)
    np.testing.assert_allclose(mixed_targets.sum(axis=1), 1.0, rtol=1e-6)
    weight = float(mixed_targets[0, 0])  # image 0 is class 0; its partner, image 5, is class 1
    assert 0.0 <= weight <= 1.0
    np.testing.assert_allclose(mixed_targets[0, 1], 1 - weight, rtol=1e-5)
    if "mixup_alpha" in recipe:
        np.testing.assert_allclose(mixed, weight * images + (1 - weight) * images[::-1], rtol=1e-5)
    else:
        from_partner = np.all(mixed == images[::-1], axis=-1)
        assert np.all(from_partner | np.all(mixed == images, axis=-1))
        assert from_partner.mean(axis=(1, 2)) == pytest.approx(1 - weight)


def test_both_mixes_take_turns_and_a_seed_repeats():
    first = [run(mixup_alpha=0.8, cutmix_alpha=1.0, seed=seed)[0] for seed in range(8)]
    again = [run(mixup_alpha=0.8, cutmix_alpha=1.0, seed=seed)[0] for seed in range(8)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    images, _ = batch()
    cutmix = [bool(np.all(np.all(m == images, -1) | np.all(m == images[::-1], -1))) for m in first]
    assert any(cutmix) and not all(cutmix)


@pytest.mark.parametrize("field, value", [("random_shift", -1), ("random_shift", 17), ("mixup_alpha", -0.5),
                                          ("cutmix_alpha", 11.0)])
def test_bad_values_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("recipe", [{"random_shift": 2}, {"cutmix_alpha": 1.0}, {"mixup_alpha": 0.8}])
def test_every_frame_of_a_clip_is_augmented_alike(recipe):
    """A clip of three copies of one image: its frames stay copies of each other, and the
    first equals what the image alone becomes under the same seed."""
    images, targets = batch()
    clips = np.repeat(images[:, None], 3, axis=1)
    augmented_clips, clip_targets = (np.asarray(t) for t in BatchAugmentation(TrainConfig(seed=4, **recipe))(
        clips, targets))
    augmented_images, image_targets = (np.asarray(t) for t in BatchAugmentation(TrainConfig(seed=4, **recipe))(
        images, targets))
    assert augmented_clips.shape == clips.shape
    for frame in range(3):
        np.testing.assert_allclose(augmented_clips[:, frame], augmented_images, rtol=1e-6)
    np.testing.assert_allclose(clip_targets, image_targets, rtol=1e-6)
    assert not np.array_equal(augmented_clips, clips)
