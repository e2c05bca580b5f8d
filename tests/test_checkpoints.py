"""The shipped checkpoints (checkpoints/), and `ship`, which makes them from finished runs."""

import functools
import os
import re
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
from cifar_files import make_cifar_folder
from conftest import REPO, tokenlearner_command
from PIL import Image

import tokenlearner  # noqa: F401  (registers the layers, as a user's `import tokenlearner` does)
from tokenlearner.card import CARD, MAX_BYTES, PICTURE, check_shippable, render_card
from tokenlearner.config import ModelConfig
from tokenlearner.data import load_cifar10
from tokenlearner.experiment import read_grid
from tokenlearner.model import predict_with_maps
from tokenlearner.moving_shapes import from_record
from tokenlearner.runs import CHECKPOINTS_DIR, RunDirectory, RunError
from tokenlearner.steps import Steps
from tokenlearner import training

SHIPPED = sorted(path for path in CHECKPOINTS_DIR.iterdir() if path.is_dir()) if CHECKPOINTS_DIR.is_dir() else []
GRID = {run.name: run for run in read_grid(REPO / "tokenlearner" / "grids" / "checkpoints.json")}


@pytest.fixture(scope="module")
def test_set(cifar_dir):
    return load_cifar10(cifar_dir)


@functools.cache
def drawn_clips(folder):
    """A video checkpoint's own test clips, drawn again from its record."""
    return from_record(RunDirectory(folder).record()["data"], parts=("test",))


def inputs_of(folder, images):
    """What the checkpoint was tested on: its drawn test clips for a video model, else `images`' test images."""
    data = drawn_clips(folder) if RunDirectory(folder).model_config().is_video else images
    return training.test_set(data)


@functools.cache
def loaded(folder):
    """A checkpoint through the project's loader, once per module (tests only read it)."""
    return RunDirectory(folder).load_model()


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda path: path.name)
class TestShippedCheckpoint:
    def test_the_cards_load_block_runs_as_written_in_a_fresh_python(self, folder):
        card = (folder / CARD).read_text()
        blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
        assert len(blocks) == 1, "a card shows one way to load its model"
        check = "\nprint(probabilities.shape, sorted((name, value.shape) for name, value in maps.items()))\n"
        result = subprocess.run([sys.executable, "-c", blocks[0] + check], cwd=REPO, capture_output=True, text=True,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        shapes = result.stdout.strip().splitlines()[-1]
        model_config = RunDirectory(folder).model_config()
        assert shapes.startswith(f"(2, {model_config.num_classes}) [")
        assert (shapes.endswith("[]") if model_config.tokenlearner == "none" else "(2, " in shapes.split("[", 1)[1])

    def test_the_cards_predict_command_runs_as_written(self, folder, tmp_path):
        command = re.search(r"`(python -m tokenlearner predict [^`]+)`", (folder / CARD).read_text())[1]
        Image.new("RGB", (640, 480), (90, 140, 200)).save(tmp_path / "photo.jpg")
        frames = [Image.fromarray(frame).resize((96, 96)) for frame in drawn_clips(folder).test_clips[0]] \
            if RunDirectory(folder).model_config().is_video else [Image.new("RGB", (8, 8))] * 2
        frames[0].save(tmp_path / "clip.gif", save_all=True, append_images=frames[1:], duration=100)
        arguments = [str(tmp_path / word) if word in ("photo.jpg", "clip.gif", "maps.png") else word
                     for word in command.split()]
        result = subprocess.run([sys.executable, *arguments[1:]], cwd=REPO, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert ("--overlay" in command) == (tmp_path / "maps.png").is_file()

    def test_is_trained_as_its_grid_entry_or_card_says(self, folder, tmp_path):
        """An image checkpoint by its entry of grids/checkpoints.json; a video checkpoint (grids
        train on CIFAR-10) by the train command its card shows, which it records."""
        run = RunDirectory(folder)
        assert run.status()["state"] == "finished"
        if run.model_config().is_video:
            from tokenlearner.cli import build_parser
            from tokenlearner.flags import model_config, train_config

            command = run.record()["command"]
            assert f"```bash\npython -m tokenlearner {' '.join(command[1:])}\n```" in (folder / CARD).read_text()
            args = build_parser().parse_args(command[1:])
            assert (model_config(args), train_config(args)) == (run.model_config(), run.train_config())
            # The card's command itself, at reduced size (the last of a repeated flag counts).
            reduced = tokenlearner_command(*command[1:], "--out", str(tmp_path / "again"), "--epochs", "1",
                                           "--clips", "64,16,16", "--warmup-epochs", "0")
            assert reduced.returncode == 0, reduced.stderr[-2000:]
            assert RunDirectory(tmp_path / "again").model_config() == run.model_config()
            return
        assert folder.name in GRID, f"{folder.name} is not a config of grids/checkpoints.json"
        expected = GRID[folder.name]
        assert run.model_config() == expected.model
        assert run.train_config() == expected.train

    def test_card_agrees_with_its_files(self, folder):
        assert (folder / CARD).read_text() == render_card(folder)

    def test_row_in_docs_results_agrees_with_its_files(self, folder):
        summary = RunDirectory(folder).summary()
        link = f"| [`{folder.name}`](../checkpoints/{folder.name}/README.md) |"
        rows = [line for line in (REPO / "docs" / "results.md").read_text().splitlines() if line.startswith(link)]
        assert len(rows) == 1, f"docs/results.md has one row for {folder.name}"
        expected = [
            f"{100 * summary['test_top1']:.1f}%",
            f"{100 * summary['test_top5']:.1f}%",
            f"{100 * summary['best_val_top1']:.1f}% (epoch {summary['best_epoch']})",
            f"{summary['params']:,}",
            f"{summary['macs'] / 1e6:.2f} M",
            f"{summary['keras_io_gflops']:.4f}",
            f"{summary['train_seconds'] / 60:.0f} min at {summary['train_images_per_s']:.0f} "
            + ("clips/s" if RunDirectory(folder).model_config().is_video else "images/s"),
        ]
        assert [cell.strip() for cell in rows[0].split("|")[3:-1]] == expected

    def test_is_small_and_holds_no_optimizer_state(self, folder):
        assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < MAX_BYTES
        with zipfile.ZipFile(folder / "model.keras") as archive:
            assert "optimizer" not in archive.read("config.json").decode()

    def test_loads_with_the_project_loader_and_with_plain_keras(self, folder):
        model, config = loaded(folder)
        plain = keras.saving.load_model(folder / "model.keras")
        images = np.random.default_rng(0).integers(0, 256, (4, *config.input_shape)).astype("float32")
        np.testing.assert_allclose(plain.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)
        assert model.count_params() == RunDirectory(folder).summary()["params"]

    def test_reproduces_its_test_accuracy(self, folder, test_set):
        summary = RunDirectory(folder).summary()
        images, labels = inputs_of(folder, test_set)
        if len(labels) != summary["test_images"]:
            pytest.skip(f"the card's top-1 is on {summary['test_images']} test images; "
                        f"TOKENLEARNER_DATA_DIR has {len(labels)}")
        model, config = loaded(folder)
        result = Steps(model, None, config.num_classes).evaluate(images, labels)
        assert abs(result["top1"] - summary["test_top1"]) <= 0.005
        assert abs(result["top5"] - summary["test_top5"]) <= 0.005

    def test_maps_have_the_configured_shape_and_are_not_constant(self, folder, test_set):
        model, config = loaded(folder)
        _, maps = predict_with_maps(model, inputs_of(folder, test_set)[0][:8])
        if config.tokenlearner == "none":
            assert maps == {} and not (folder / PICTURE).exists()
            return
        # one TokenLearner, or with TokenFuser a learner and a fuser around every block from the placement on
        blocks = range(config.placement, config.depth)
        assert set(maps) == ({f"token_{kind}_{i}" for i in blocks for kind in ("learner", "fuser")}
                             if config.fuser else {"token_learner"})
        slices = (config.temporal_slices,) if config.is_video else ()
        for name, learned in maps.items():
            assert learned.shape == (8, *slices, config.num_tokens, config.grid_size, config.grid_size), name
            spread = learned.reshape(8, *slices, config.num_tokens, -1).std(axis=-1)
            assert np.all(spread > 1e-4), f"a token's map of {name} is constant over the patches"
        with Image.open(folder / PICTURE) as picture:
            assert picture.format == "PNG" and picture.width > picture.height / 2


@pytest.mark.slow
def test_ship_copies_a_finished_run_with_its_card_and_refuses_what_it_cannot_ship(tmp_path):
    data = make_cifar_folder(tmp_path / "cifar-10-batches-py", rows_per_batch=60, test_rows=40)
    run = tmp_path / "run"
    trained = tokenlearner_command("train", "--out", str(run), "--data-dir", str(data), "--epochs", "1",
                                   "--batch-size", "64", "--tokens", "8", "--random-shift", "2",
                                   "--mixup-alpha", "0.8", "--cutmix-alpha", "1.0", "--label-smoothing", "0.1")
    assert trained.returncode == 0, trained.stderr
    shipped = tokenlearner_command("ship", str(run), "--name", "tiny", "--into", str(tmp_path / "zoo"),
                                   "--data-dir", str(data))
    assert shipped.returncode == 0, shipped.stderr
    folder = tmp_path / "zoo" / "tiny"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["README.md", "config.json", "maps", "maps.png", "metrics.json", "metrics.jsonl", "model.keras", "status.json"])
    card = (folder / CARD).read_text()
    assert card == render_card(folder) and card.startswith("# tiny\n")
    assert "| `mixup_alpha` | 0.8 | 0.0 |" in card and "**Trained on 240 CIFAR-10 training images**, with 60 more" in card
    RunDirectory(folder).load_model()
    assert (folder / "model.keras").stat().st_size < 0.6 * (run / "model.keras").stat().st_size, "not float16"

    other_data = make_cifar_folder(tmp_path / "other" / "cifar-10-batches-py", rows_per_batch=60, test_rows=30)
    elsewhere = tokenlearner_command("ship", str(run), "--name", "other", "--into", str(tmp_path / "zoo"),
                                     "--data-dir", str(other_data))
    assert elsewhere.returncode == 2 and "was tested on 40 images, the data given has 30" in elsewhere.stderr
    assert len(elsewhere.stderr.strip().splitlines()) == 1, "TensorFlow's start-up notices reached stderr"
    again = tokenlearner_command("ship", str(run), "--name", "tiny", "--into", str(tmp_path / "zoo"),
                                 "--data-dir", str(data))
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    RunDirectory(run).request_stop()
    (run / "status.json").write_text('{"state": "stopped"}')
    unfinished = tokenlearner_command("ship", str(run), "--name", "other", "--into", str(tmp_path / "zoo"))
    assert unfinished.returncode == 2 and "has not finished" in unfinished.stderr
    not_a_run = tokenlearner_command("ship", str(tmp_path), "--name", "other", "--into", str(tmp_path / "zoo"))
    assert not_a_run.returncode == 2 and "not a run directory" in not_a_run.stderr
    assert sorted(p.name for p in (tmp_path / "zoo").iterdir()) == ["tiny"], "a failed ship left a folder behind"


@pytest.mark.slow
def test_ship_copies_a_video_run_with_a_picture_of_its_clip(tmp_path):
    from test_training import VIDEO_FLAGS

    run = tmp_path / "video"
    trained = tokenlearner_command("train", "--out", str(run), *VIDEO_FLAGS)
    assert trained.returncode == 0, trained.stderr
    shipped = tokenlearner_command("ship", str(run), "--name", "tiny-video", "--into", str(tmp_path / "zoo"))
    assert shipped.returncode == 0, shipped.stderr
    folder = tmp_path / "zoo" / "tiny-video"
    card = (folder / CARD).read_text()
    assert card == render_card(folder)
    assert "over 4-frame clips, patches of 2 frames" in card and "**Trained on 96 clips of moving shapes**" in card
    assert "np.zeros((2, 4, 32, 32, 3), np.uint8)" in card and "--image clip.gif --overlay maps.png" in card
    with Image.open(folder / PICTURE) as picture:  # a caption, then a row per temporal slice: 2 of them
        assert picture.height == 14 + 2 + 2 * (4 * 32) + 2


def test_ship_refuses_a_finished_run_that_was_imported_not_trained(tmp_path):
    imported = RunDirectory(tmp_path / "imported")  # what import-keras-io writes: a model, no training or tests
    imported.create({"model": ModelConfig().to_dict(), "source": {"keras_io_weights": "example.weights.h5"}})
    imported.set_status("finished")
    with pytest.raises(RunError, match="only a run trained by `train` or `experiment` can be shipped"):
        check_shippable(imported.path, tmp_path / "zoo" / "imported")
