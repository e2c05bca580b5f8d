"""Which images the Attention page shows, and which copy of CIFAR-10 a run's maps belong to."""


def test_fixed_images_come_only_from_the_copy_a_run_was_trained_on():
    import numpy as np

    from tokenlearner.gallery import is_training_copy

    labels = np.array([3, 1, 4, 1, 5])
    assert is_training_copy(labels, [4, 1], [5, 1])
    assert not is_training_copy(labels, [4, 1], [5, 2])
    assert not is_training_copy(labels, [7], [5])
