"""The training engine end to end, through the command line, on small CIFAR-10 folders
the tests write in the official format."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from cifar_files import make_cifar_folder
from conftest import REPO, tokenlearner_command

from tokenlearner.runs import RunDirectory

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_cifar(tmp_path_factory):
    return make_cifar_folder(tmp_path_factory.mktemp("data") / "cifar-10-batches-py", rows_per_batch=80,
                             test_rows=50)


def start_training(out, data, *flags):
    return subprocess.Popen([sys.executable, "-m", "tokenlearner", "train", "--out", str(out), "--data-dir",
                             str(data), *flags], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for(condition, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def check_every_file_parses(run: RunDirectory):
    for path in run.path.rglob("*"):
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            [json.loads(line) for line in path.read_text().splitlines()]
        elif path.suffix == ".npz":
            with np.load(path) as saved:
                [saved[name] for name in saved.files]
    assert not list(run.path.rglob(".*")), "a temporary file was left behind"


def test_one_epoch_writes_a_complete_run_that_evaluate_reads(small_cifar, tmp_path):
    flags = ["--epochs", "1", "--batch-size", "64", "--tokens", "8", "--seed", "7"]
    launched = time.time()
    result = tokenlearner_command("train", "--out", str(tmp_path / "run"), "--data-dir", str(small_cifar), *flags)
    command_s = time.time() - launched
    assert result.returncode == 0, result.stderr
    run = RunDirectory(tmp_path / "run")
    check_every_file_parses(run)
    record = run.record()
    assert record["model"]["num_tokens"] == 8 and record["train"]["seed"] == 7
    assert record["data"] == {"directory": str(small_cifar), "train_images": 320, "val_images": 80,
                              "test_images": 50, "class_names": record["data"]["class_names"]}
    assert set(record["versions"]) == {"python", "keras", "tensorflow", "numpy"}
    assert run.status()["state"] == "finished"
    assert [epoch["epoch"] for epoch in run.epochs()] == [1]
    summary = run.summary()
    for key in ("test_top1", "test_top5", "params", "macs", "keras_io_gflops", "train_seconds",
                "train_images_per_s", "first_step_s"):
        assert summary[key] is not None, key
    assert summary["params"] == 1_355_850
    # Every stage before the first step, in order, adding up to it.
    assert list(summary["startup_s"]) == ["reading the data", "importing TensorFlow and Keras", "splitting the data",
                                          "loading the kernels", "building the model", "the maps before training",
                                          "tracing the training step", "the first step"]
    assert all(seconds >= 0 for seconds in summary["startup_s"].values())
    assert summary["startup_s"]["tracing the training step"] > 0 and summary["startup_s"]["the first step"] > 0
    assert summary["first_step_s"] < command_s  # the clock starts inside the command
    assert run.map_epochs() == [0, 1]
    probabilities, maps = run.maps(1)
    assert probabilities.shape == (8, 10) and maps["token_learner"].shape == (8, 8, 8, 8)
    assert len(run.map_images()["train_batch_indices"]) == 8

    evaluated = tokenlearner_command("evaluate", str(run.path), "--data-dir", str(small_cifar), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    for key in ("test_top1", "test_top5", "test_loss"):  # the names metrics.json uses
        assert result[key] == pytest.approx(summary[key]), key
    assert result["test_confusion"] == summary["test_confusion"]
    assert np.asarray(result["test_confusion"]).sum() == 50
    # That the same seed trains the same run again is tests/test_distributed.py's first test: a grid trained in
    # process and on Ray, every run twice in all.


def test_a_killed_run_leaves_only_complete_files(small_cifar, tmp_path):
    run = RunDirectory(tmp_path / "run")
    process = start_training(run.path, small_cifar, "--epochs", "5", "--batch-size", "16")
    wait_for(lambda: len(run.epochs()) >= 1 and (run.progress() or {}).get("epoch", 0) >= 2)
    process.kill()
    process.wait()
    check_every_file_parses(run)
    assert run.status()["state"] == "failed"  # its process is gone
    model, config = run.load_model()
    assert model.count_params() == 1_349_946 and config.num_tokens == 4


@pytest.mark.parametrize("how", ["stop file", "SIGTERM"])
def test_a_stop_request_ends_the_run_cleanly(how, small_cifar, tmp_path):
    run = RunDirectory(tmp_path / "run")
    process = start_training(run.path, small_cifar, "--epochs", "50", "--batch-size", "16")
    wait_for(lambda: (run.progress() or {}).get("step", 0) >= 3)
    if how == "stop file":
        run.request_stop()
    else:
        process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "stopped after" in stdout and "the best so far, are in" in stdout
    assert run.status()["state"] == "stopped"
    check_every_file_parses(run)
    summary = run.summary()
    assert summary["stopped"] is True and summary["best_val_top1"] is not None
    assert summary["epochs_completed"] == sum(epoch["complete"] for epoch in run.epochs()) < 50


def test_commands_load_keras_without_pandas_or_matplotlib_which_stay_importable():
    # Keras imports both whenever they are installed; no command needs them, and they cost
    # 0.5-1 s of every command's start.
    script = ("import sys\n"
              "from tokenlearner.cli import import_keras_quietly\n"
              "import_keras_quietly()\n"
              "print(sorted(name for name in ('pandas', 'pyarrow', 'matplotlib') if name in sys.modules))\n"
              "import pandas\n"
              "from keras.src.trainers.data_adapters import array_slicing\n"
              "print(array_slicing.pandas is None, pandas.DataFrame({'a': [1, 2]}).shape)\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "True (2, 1)"]


def test_a_run_stopped_before_its_first_step_says_it_saved_nothing(small_cifar, tmp_path):
    run = RunDirectory(tmp_path / "run")
    process = start_training(run.path, small_cifar, "--epochs", "5")
    wait_for(lambda: run.status().get("state") == "running")
    run.request_stop()  # while TensorFlow builds and traces, long before the first step ends
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "stopped after 0 complete epoch(s); no epoch was evaluated, so no weights were saved" in stdout
    summary = run.summary()
    assert (summary["best_epoch"], summary["best_val_top1"], summary["epochs_completed"]) == (None, None, 0)
    assert not run.model_file.exists() and run.status()["state"] == "stopped"


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--out", "{tmp}/x", "--data-dir", "{tmp}/nowhere"], "no CIFAR-10 found (looked in the given path"),
        (["train", "--out", "{tmp}/x", "--epochs", "0"], "epochs=0 is out of range"),
        (["train", "--out", "{tmp}/x", "--warmup-epochs", "30"], "warmup_epochs=30 is out of range"),
        (["evaluate", "{tmp}"], "is not a run directory (it has no config.json)"),
        (["evaluate", "{tmp}/missing"], "is not a folder"),
        (["train", "--out", "{tmp}/x", "--data-dir", "{data}", "--num-classes", "5"],
         "has 10 classes and the model 5: set --num-classes 10"),
        (["train", "--out", "{tmp}/x", "--data-dir", "{data}", "--input-size", "40"],
         "holds 32x32 images and the model takes 40x40 ones: set --input-size 32"),
        (["train", "--out", "{tmp}/x", "--data-dir", "{data}", "--validation-fraction", "0.001"],
         "cannot be split into non-empty training and validation parts"),
        (["train", "--out", "{tmp}/x", "--data-dir", "{data}", "--frames", "4"],
         "holds images and the model takes clips of 4 frames: train it on clips (moving shapes, docs/video.md)"),
        (["train", "--out", "{tmp}/x", "--data", "moving-shapes", "--frames", "4", "--clips", "0,1,1"],
         "0 train clips is out of range: must be from 1 to 200,000"),
        (["experiment", "{tmp}", "--out", "{tmp}/grid"], "cannot be read (Is a directory)"),
        (["bench", "--steps", "0"], "argument --steps: '0' is not a positive integer"),
    ],
)
def test_user_errors_exit_with_one_line(args, message, small_cifar, tmp_path):
    result = tokenlearner_command(*[arg.format(tmp=tmp_path, data=small_cifar) for arg in args])
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
