"""Small CIFAR-10 folders in the official python batch format, made by the tests."""

import pickle
from pathlib import Path

import numpy as np

from tokenlearner.data import CLASS_NAMES, TEST_BATCH, TRAIN_BATCHES


def write_batch(path: Path, images: np.ndarray, labels: np.ndarray, protocol: int = 2) -> None:
    """`images` (N, 32, 32, 3) uint8 as the official batches store them: bytes keys,
    'data' (N, 3072) in channel-major order, 'labels' a list of ints."""
    batch = {
        b"batch_label": path.name.encode(),
        b"labels": [int(label) for label in labels],
        b"data": np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072)),
        b"filenames": [f"image_{index}.png".encode() for index in range(len(images))],
    }
    path.write_bytes(pickle.dumps(batch, protocol=protocol))


def make_cifar_folder(folder: Path, rows_per_batch: int = 40, test_rows: int = 30, seed: int = 0,
                      colours: bool = False) -> Path:
    """A folder of five training batches and a test batch of random images whose class
    shows in their mean brightness, so that a model can learn something in one epoch; with
    `colours`, each class is a colour of its own under a little noise, which a small model
    tells apart within one epoch of a few steps."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    palette = rng.integers(0, 256, (10, 3)) if colours else None  # drawn only then: the other folders stay as they were

    def images_for(labels):
        if colours:
            noise = rng.integers(-20, 21, (len(labels), 32, 32, 3))
            return np.clip(palette[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
        base = rng.integers(0, 256, (len(labels), 32, 32, 3))
        return np.clip(base // 2 + (labels * 12)[:, None, None, None], 0, 255).astype(np.uint8)

    for name in (*TRAIN_BATCHES, TEST_BATCH):
        rows = test_rows if name == TEST_BATCH else rows_per_batch
        labels = rng.integers(0, 10, rows)
        write_batch(folder / name, images_for(labels), labels)
    meta = {b"label_names": [name.encode() for name in CLASS_NAMES], b"num_cases_per_batch": rows_per_batch}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder
