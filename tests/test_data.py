import os
import pickle

import numpy as np
import pytest
from cifar_files import make_cifar_folder, write_batch

from tokenlearner.data import DataError, find_data_dir, load_cifar10, split


@pytest.fixture
def folder(tmp_path):
    return make_cifar_folder(tmp_path / "cifar-10-batches-py", rows_per_batch=12, test_rows=7)


def test_reads_any_number_of_rows(folder):
    data = load_cifar10(folder)
    assert data.train_images.shape == (60, 32, 32, 3) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (7, 32, 32, 3) and data.test_labels.shape == (7,)
    assert data.class_names[0] == "airplane" and len(data.class_names) == 10


def test_pixels_come_back_in_height_width_channel_order(folder):
    image = np.zeros((1, 32, 32, 3), np.uint8)
    image[0, 1, 2] = (10, 20, 30)  # row 1, column 2: one red, green, blue pixel
    write_batch(folder / "test_batch", image, np.array([4]))
    data = load_cifar10(folder)
    assert tuple(data.test_images[0, 1, 2]) == (10, 20, 30) and data.test_labels[0] == 4


def test_the_shared_sample_loads(cifar_dir):
    data = load_cifar10(cifar_dir)
    assert len(data.train_labels) > 0 and len(data.test_labels) > 0
    assert set(np.unique(data.test_labels)) <= set(range(10))


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_pickle_that_calls_a_forbidden_global_is_refused(folder):
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Exploit(), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_3 was refused: it asks for (posix|os)\.system"):
        load_cifar10(folder)


def test_a_truncated_batch_names_the_file(folder):
    raw = (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_2").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="data_batch_2 is truncated or corrupt"):
        load_cifar10(folder)


@pytest.mark.parametrize(
    "content, message",
    [
        (pickle.dumps([1, 2, 3]), "does not hold a CIFAR-10 batch"),
        (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), "shape \\(N, 3072\\)"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}), "class indices from 0 to 9"),
        (b"", "truncated or corrupt"),
    ],
)
def test_malformed_batches(folder, content, message):
    (folder / "test_batch").write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_cifar10(folder)


def test_a_missing_batch_names_the_file(folder):
    (folder / "data_batch_5").unlink()
    with pytest.raises(DataError, match="data_batch_5 is missing"):
        load_cifar10(folder)


def test_search_order(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.setenv("TOKENLEARNER_DATA_DIR", str(folder))
    assert find_data_dir() == folder
    assert find_data_dir(folder.parent) == folder  # the folder above is accepted too
    monkeypatch.delenv("TOKENLEARNER_DATA_DIR")
    with pytest.raises(DataError) as error:
        find_data_dir()
    message = str(error.value)
    assert "the Keras cache" in message and str(tmp_path / "keras-home") in message
    assert "python -m tokenlearner download" in message
    cached = tmp_path / "keras-home" / "datasets" / "cifar-10-batches-py-target"
    make_cifar_folder(cached / "cifar-10-batches-py", rows_per_batch=2, test_rows=2)
    assert find_data_dir() == cached / "cifar-10-batches-py"


def test_split_is_deterministic_and_disjoint(folder):
    data = load_cifar10(folder)
    first, again, other = split(data, seed=3), split(data, seed=3), split(data, seed=4)
    np.testing.assert_array_equal(first.train_index, again.train_index)
    assert not np.array_equal(first.train_index, other.train_index)
    assert len(first.val_index) == 12 and len(first.train_index) == 48  # the example's 4:1
    assert not set(first.train_index) & set(first.val_index)
    np.testing.assert_array_equal(first.val_images, data.train_images[first.val_index])
    assert len(split(data, limit=10).train_labels) == 10


def test_without_training_images_every_batch_is_still_checked_and_a_few_read_on_demand(folder):
    from tokenlearner.data import read_train_images

    whole, light = load_cifar10(folder), load_cifar10(folder, train_images=False)
    assert light.train_images is None
    np.testing.assert_array_equal(light.train_labels, whole.train_labels)
    np.testing.assert_array_equal(light.test_images, whole.test_images)
    rows = [len(whole.train_labels) - 1, 0, 41]  # across batches, in any order
    np.testing.assert_array_equal(read_train_images(folder, rows), whole.train_images[rows])
    with pytest.raises(DataError, match=f"has {len(whole.train_labels)} training images: no image 100000"):
        read_train_images(folder, [100_000])
    raw = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="data_batch_3 is truncated"):
        load_cifar10(folder, train_images=False)
