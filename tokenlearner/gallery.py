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
    TokenLearner model, a shipped checkpoint before any local run."""
    candidates = [run for run in runs
                  if run.config.tokenlearner != "none" and run.summary and run.summary.get("test_top1") is not None
                  and run.summary.get("best_epoch") in run.run.map_epochs()]
    if not candidates:
        return None
    return max(candidates, key=lambda run: (run.name.startswith("checkpoints/"), run.summary["test_top1"]))


def fixed_images(train_images: np.ndarray, train_labels: np.ndarray, indices: list[int],
                 labels: list[int]) -> np.ndarray | None:
    """The images a run's per-epoch maps are of (by their index in the training batches),
    or None when this copy of CIFAR-10 is not the one the run was trained on: too few
    images, or other labels at those places."""
    if max(indices) >= len(train_images) or list(train_labels[indices]) != list(labels):
        return None
    return train_images[indices]
