"""Choosing CIFAR-10 test images to look at, for the app's Attention page."""

from __future__ import annotations

import numpy as np

PICKS = ("by class", "at random", "misclassified")


def pick_images(labels: np.ndarray, how: str, count: int, seed: int = 0, class_index: int = 0,
                predicted: np.ndarray | None = None) -> np.ndarray:
    """Indices of up to `count` test images: of one class, at random, or among those the
    model gets wrong (`predicted` holds its class for every test image)."""
    if how not in PICKS:
        raise ValueError(f"how={how!r}: choose one of {PICKS}")
    if how == "by class":
        candidates = np.flatnonzero(labels == class_index)
    elif how == "misclassified":
        if predicted is None:
            raise ValueError("misclassified images need the model's predictions")
        candidates = np.flatnonzero(predicted != labels)
    else:
        candidates = np.arange(len(labels))
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(candidates)[:count])
