"""CIFAR-10 in the official python batch format, read safely.

A `cifar-10-batches-py` folder holds `data_batch_1`..`data_batch_5`, `test_batch` and
`batches.meta`: pickles of dicts whose `data` is a uint8 array (N, 3072) in
channel-major order and whose `labels` is a list of N class indices. Any number of rows
per batch is accepted, so the full set (50,000 + 10,000) and a part of it load alike.

A pickle can run code when it is loaded, so these are unpickled with an allow-list: only
numpy's array reconstruction and plain containers; anything else is refused.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenlearner.files import exclusive, is_held

DATA_ENV = "TOKENLEARNER_DATA_DIR"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{index}" for index in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Keras' own CIFAR-10 download (keras.datasets.cifar10), so the two share one cache.
DOWNLOAD_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
DOWNLOAD_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
DOWNLOAD_NAME = "cifar-10-batches-py-target"
DOWNLOAD_BYTES = 170_498_071
DOWNLOAD_LOCK = "cifar-10-download.lock"
# An official batch is 30.7 MB (10,000 rows); anything much larger is not one, and is not
# read into memory to find that out.
MAX_BATCH_BYTES = 64 * 2**20

_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2
}


class DataError(ValueError):
    """CIFAR-10 could not be found or read; the message says where and what to do."""


@dataclass(frozen=True)
class Cifar10:
    train_images: np.ndarray | None  # (N, 32, 32, 3) uint8; None where they were not kept
    train_labels: np.ndarray  # (N,) int32
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    directory: Path


@dataclass(frozen=True)
class Split:
    """A deterministic train/validation split of the training batches."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    train_index: np.ndarray  # positions in the training batches, concatenated in order
    val_index: np.ndarray


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise _ForbiddenGlobal(f"it asks for {module}.{name}, which a CIFAR-10 batch never contains")
        return super().find_class(module, name)


def read_batch(path: Path) -> dict:
    """One unpickled batch file, its keys decoded to str; `DataError` names the file."""
    try:
        if path.is_file() and path.stat().st_size > MAX_BATCH_BYTES:
            raise DataError(f"{path} is {path.stat().st_size / 2**20:.0f} MB: a CIFAR-10 batch is about 31 MB, "
                            f"and files over {MAX_BATCH_BYTES / 2**20:.0f} MB are not read")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path} is missing: a {FOLDER} folder needs {', '.join(TRAIN_BATCHES)}, "
                        f"{TEST_BATCH} and {META}") from None
    except OSError as error:
        raise DataError(f"{path} cannot be read ({error.strerror})") from None
    try:
        value = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _ForbiddenGlobal as error:
        raise DataError(f"{path} was refused: {error}") from None
    except Exception as error:  # truncated or garbled pickles raise many types
        raise DataError(f"{path} is truncated or corrupt ({type(error).__name__}: {error})") from None
    if not isinstance(value, dict):
        raise DataError(f"{path} does not hold a CIFAR-10 batch (a dict), but a {type(value).__name__}")
    return {key.decode() if isinstance(key, bytes) else key: item for key, item in value.items()}


def _rows_and_labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A batch's `data` rows (N, 3072: the red, green and blue planes of each image) and
    its labels, checked."""
    batch = read_batch(path)
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got {shape}")
    labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if labels.shape != (len(data),) or (labels.size and not (0 <= labels.min() and labels.max() <= 9)):
        raise DataError(f"{path}: 'labels' must hold {len(data)} class indices from 0 to 9")
    return data, labels.astype(np.int32)


def _as_images(batches: list[np.ndarray]) -> np.ndarray:
    """Batches of rows as one (N, 32, 32, 3) array. Copied a colour plane at a time: five
    times faster than copying the transposed rows whole (docs/performance.md)."""
    images = np.empty((sum(len(rows) for rows in batches), 32, 32, 3), dtype=np.uint8)
    start = 0
    for rows in batches:
        pixels = images[start : start + len(rows)].reshape(len(rows), 1024, 3)
        for channel, plane in enumerate(rows.reshape(len(rows), 3, 1024).transpose(1, 0, 2)):
            pixels[:, :, channel] = plane
        start += len(rows)
    return images


def load_cifar10(directory: str | os.PathLike, train_images: bool = True) -> Cifar10:
    """Every batch of a `cifar-10-batches-py` folder, or a `DataError`: nothing half-loaded.
    With `train_images=False` every batch is still read and checked, but only the
    training labels are kept, not their images (`train_images` is None): all that a viewer
    of the test images needs, a sixth of the memory (`read_train_images` fetches a few)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory} is not a folder")
    train_rows, train_labels = [], []
    for name in TRAIN_BATCHES:
        rows, labels = _rows_and_labels(directory / name)
        if train_images:
            train_rows.append(rows)
        train_labels.append(labels)
    test_rows, test_labels = _rows_and_labels(directory / TEST_BATCH)
    names = read_batch(directory / META).get("label_names", CLASS_NAMES)
    class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    if len(class_names) != 10:
        raise DataError(f"{directory / META}: expected 10 label names, got {len(class_names)}")
    return Cifar10(
        train_images=_as_images(train_rows) if train_images else None,
        train_labels=np.concatenate(train_labels),
        test_images=_as_images([test_rows]),
        test_labels=test_labels,
        class_names=class_names,
        directory=directory,
    )


def read_train_images(directory: str | os.PathLike, indices: list[int]) -> np.ndarray:
    """The training images at `indices` (positions in the training batches, concatenated in
    order), reading one batch at a time and keeping only those rows."""
    wanted, found, start = np.asarray(indices), {}, 0
    for name in TRAIN_BATCHES:
        rows, _ = _rows_and_labels(Path(directory) / name)
        for index in wanted[(wanted >= start) & (wanted < start + len(rows))]:
            found[int(index)] = _as_images([rows[index - start : index - start + 1]])[0]
        start += len(rows)
    missing = [index for index in indices if index not in found]
    if missing:
        raise DataError(f"{directory} has {start} training images: no image {missing[0]}")
    return np.stack([found[index] for index in indices])


def datasets_dir(keras_home: str | os.PathLike | None = None) -> Path:
    """Where Keras keeps downloaded data sets: `keras_home/datasets`, else
    `$KERAS_HOME/datasets`, else `~/.keras/datasets`, or `/tmp/.keras/datasets` where that
    cannot be written (as Keras itself falls back)."""
    home = Path(keras_home or os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    writable = home if home.exists() else home.parent
    if not os.access(writable, os.W_OK):
        home = Path(tempfile.gettempdir()) / ".keras"
    return home / "datasets"


def keras_cache_dirs() -> list[Path]:
    """Where Keras' own download of CIFAR-10 lands (current and older Keras layouts)."""
    datasets = datasets_dir()
    return [datasets / DOWNLOAD_NAME / FOLDER, datasets / FOLDER]


def download_archive() -> Path:
    """Where Keras' file utility writes the archive while it downloads (for a progress bar)."""
    return datasets_dir() / f"{DOWNLOAD_NAME}_archive"


def download_log() -> Path:
    """Where a download started from the app writes its output (one for the machine, as the download is)."""
    return datasets_dir() / "cifar-10-download.log"


def download_running() -> bool:
    """Whether a download holds the machine's download lock now."""
    return is_held(datasets_dir() / DOWNLOAD_LOCK)


def find_data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The CIFAR-10 folder to use: `explicit` if given, else $TOKENLEARNER_DATA_DIR, else a
    previous Keras download. A `DataError` lists where it looked and how to provide it."""
    if explicit:
        candidates = [("the given path", Path(explicit))]
    else:
        candidates = []
        if os.environ.get(DATA_ENV):
            candidates.append((f"${DATA_ENV}", Path(os.environ[DATA_ENV])))
        candidates += [("the Keras cache", path) for path in keras_cache_dirs()]
    for _, path in candidates:
        if (path / TEST_BATCH).is_file():
            return path
        if (path / FOLDER / TEST_BATCH).is_file():  # the folder above cifar-10-batches-py
            return path / FOLDER
    looked = "; ".join(f"{where}: {path}" for where, path in candidates)
    raise DataError(
        f"no CIFAR-10 found (looked in {looked}). Point --data-dir or ${DATA_ENV} at a "
        f"{FOLDER} folder, or download it (python -m tokenlearner download, about 170 MB)"
    )


def download(keras_home: str | os.PathLike | None = None) -> Path:
    """Download and unpack CIFAR-10 through Keras' file utility (checksum verified) into
    `datasets_dir(keras_home)`, and return the `cifar-10-batches-py` folder. One download runs at a
    time on the machine (Keras writes the archive in place): a second waits for the first
    and then finds the data there."""
    import keras

    datasets = datasets_dir(keras_home)
    with exclusive(datasets / DOWNLOAD_LOCK):
        for folder in (datasets / DOWNLOAD_NAME / FOLDER, datasets / FOLDER):
            if (folder / TEST_BATCH).is_file():
                return folder
        try:
            path = keras.utils.get_file(fname=DOWNLOAD_NAME, origin=DOWNLOAD_URL, extract=True,
                                        file_hash=DOWNLOAD_SHA256, cache_dir=str(datasets.parent))
        except Exception as error:  # network and checksum failures come as several types
            raise DataError(f"downloading CIFAR-10 from {DOWNLOAD_URL} failed ({type(error).__name__}: {error})") \
                from None
    return Path(path) / FOLDER


def split(data: Cifar10, validation_fraction: float = 0.2, seed: int = 0, limit: int | None = None,
          eval_limit: int | None = None) -> Split:
    """Shuffle the training batches with `seed` and hold out `validation_fraction` of them
    (the keras.io example keeps 1 in 5); `limit` then keeps only the first `limit` training
    images of the shuffled remainder, and `eval_limit` the first of the held-out ones, for
    quick runs."""
    order = np.random.default_rng(seed).permutation(len(data.train_labels))
    held_out = int(round(len(order) * validation_fraction))
    val, train = order[:held_out], order[held_out:]
    for name, value in (("limit", limit), ("eval_limit", eval_limit)):
        if value is not None and value < 1:
            raise DataError(f"{name}={value}: use at least one image")
    train, val = train[:limit], val[:eval_limit]
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"{len(data.train_labels)} training images cannot be split into non-empty "
                        f"training and validation parts with validation_fraction={validation_fraction}")
    return Split(data.train_images[train], data.train_labels[train],
                 data.train_images[val], data.train_labels[val], train, val)
