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


def showcase(runs: list) -> object | None:
    """The run whose learned-token maps the home page shows: the most accurate finished
    TokenLearner image model, a shipped checkpoint before any local run."""
    candidates = [run for run in runs
                  if run.config.tokenlearner != "none" and not run.on_clips and run.summary and run.summary.get("test_top1") is not None
                  and run.summary.get("best_epoch") in run.directory.map_epochs()]
    if not candidates:
        return None
    return max(candidates, key=lambda run: (run.name.startswith("checkpoints/"), run.summary["test_top1"]))


def is_training_copy(train_labels: np.ndarray, indices: list[int], labels: list[int]) -> bool:
    """Whether a CIFAR-10 copy with these training labels is the one a run's per-epoch maps
    were made on (its fixed images, by index, carry the labels the run recorded): not too
    few images, and the same labels at those places."""
    return max(indices) < len(train_labels) and list(train_labels[indices]) == list(labels)
