"""The shipped checkpoints (checkpoints/), and `ship`, which makes them from finished runs."""

import functools
import json
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
from tokenlearner import datasets

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
    return datasets.test_set(data)


@functools.cache
def loaded(folder):
    """A checkpoint through the project's loader, once per module (tests only read it)."""
    return RunDirectory(folder).load_model()


def fresh_python(code: str) -> list[str]:
    """The lines `code` prints, run in a fresh Python from the repository's root."""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()


def test_every_cards_load_block_runs_as_written():
    """Each card's block in a namespace of its own, all in one fresh Python (a Python and
    TensorFlow started once, not once a card)."""
    check = "\nprint(probabilities.shape, sorted((name, value.shape) for name, value in maps.items()))\n"
    code = ""
    for folder in SHIPPED:
        blocks = re.findall(r"```python\n(.*?)```", (folder / CARD).read_text(), flags=re.S)
        assert len(blocks) == 1, f"{folder.name}: a card shows one way to load its model"
        code += f"print({folder.name!r})\nexec({blocks[0] + check!r}, {{}})\n"
    printed = fresh_python(code)
    for folder in SHIPPED:
        shapes = printed[printed.index(folder.name) + 1]
        config = RunDirectory(folder).model_config()
        assert shapes.startswith(f"(2, {config.num_classes}) ["), folder.name
        assert (shapes.endswith("[]") if config.tokenlearner == "none" else "(2, " in shapes.split("[", 1)[1])


def test_every_cards_predict_command_runs_as_written(tmp_path):
    """Each card's command, its files made up (a photo, a clip of the checkpoint's own test
    clip), through the command line's own entry point, all in one fresh Python."""
    commands = []
    for folder in SHIPPED:
        command = re.search(r"`(python -m tokenlearner predict [^`]+)`", (folder / CARD).read_text())[1]
        files = tmp_path / folder.name
        files.mkdir()
        Image.new("RGB", (640, 480), (90, 140, 200)).save(files / "photo.jpg")
        if RunDirectory(folder).model_config().is_video:
            frames = [Image.fromarray(frame).resize((96, 96)) for frame in drawn_clips(folder).test_clips[0]]
            frames[0].save(files / "clip.gif", save_all=True, append_images=frames[1:], duration=100)
        words = command.split()
        assert words[:3] == ["python", "-m", "tokenlearner"]
        commands.append([str(files / word) if word in ("photo.jpg", "clip.gif", "maps.png") else word
                         for word in words[3:]])
    printed = fresh_python(f"from tokenlearner.cli import main\nfor words in {commands!r}:\n"
                           "    print('exit status', main(words))\n")
    assert [line for line in printed if line.startswith("exit status")] == ["exit status 0"] * len(SHIPPED)
    for folder, words in zip(SHIPPED, commands, strict=True):
        assert ("--overlay" in words) == (tmp_path / folder.name / "maps.png").is_file(), folder.name


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda path: path.name)
class TestShippedCheckpoint:
    def test_is_trained_as_its_grid_entry_or_card_says(self, folder):
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
            return  # the command itself runs, at reduced size, in test_ship_copies_a_video_run_...
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
@pytest.mark.parametrize("folder", [folder for folder in SHIPPED if RunDirectory(folder).model_config().is_video],
                         ids=lambda path: path.name)
def test_ship_copies_a_video_run_of_a_cards_command_with_a_picture_of_its_clip(folder, tmp_path):
    """A shipped video checkpoint's card command, at reduced size (the last of a repeated flag
    counts), trains a run on moving shapes that `evaluate` reads back and that ships as that
    checkpoint was shipped."""
    command = RunDirectory(folder).record()["command"]
    run = tmp_path / "video"
    trained = tokenlearner_command(*command[1:], "--out", str(run), "--epochs", "1", "--clips", "64,16,16",
                                   "--warmup-epochs", "0", "--batch-size", "16")
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "clips/s" in trained.stdout  # steps after the first are timed
    config = RunDirectory(run).model_config()
    assert config == RunDirectory(folder).model_config()
    record = RunDirectory(run).record()["data"]
    assert record == {"kind": "moving_shapes", "seed": 0, "frames": config.frames, "first_frame_only": False,
                      "cifar_directory": None, "train_clips": 64, "val_clips": 16, "test_clips": 16,
                      "class_names": RunDirectory(folder).class_names(), "train_images": 64, "val_images": 16,
                      "test_images": 16}
    probabilities, maps = RunDirectory(run).maps(1)
    assert probabilities.shape == (8, 4)
    assert maps["token_learner"].shape == (8, config.temporal_slices, config.num_tokens, 8, 8)
    assert RunDirectory(run).map_images()["val_clip_indices"] == list(range(8))
    evaluated = tokenlearner_command("evaluate", str(run), "--json")  # the run's own test clips, drawn again
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["test_top1"] == pytest.approx(RunDirectory(run).summary()["test_top1"])
    shipped = tokenlearner_command("ship", str(run), "--name", "tiny-video", "--into", str(tmp_path / "zoo"))
    assert shipped.returncode == 0, shipped.stderr
    copy = tmp_path / "zoo" / "tiny-video"
    card = (copy / CARD).read_text()
    assert card == render_card(copy)
    assert f"over {config.frames}-frame clips" in card and "**Trained on 64 clips of moving shapes**" in card
    assert f"np.zeros((2, {config.frames}, 32, 32, 3), np.uint8)" in card and "--image clip.gif --overlay" in card
    with Image.open(copy / PICTURE) as picture:  # a caption, then a row per temporal slice
        assert picture.height == 14 + config.temporal_slices * (2 + 4 * 32)


def test_ship_refuses_a_finished_run_that_was_imported_not_trained(tmp_path):
    imported = RunDirectory(tmp_path / "imported")  # what import-keras-io writes: a model, no training or tests
    imported.create({"model": ModelConfig().to_dict(), "source": {"keras_io_weights": "example.weights.h5"}})
    imported.set_status("finished")
    with pytest.raises(RunError, match="only a run trained by `train` or `experiment` can be shipped"):
        check_shippable(imported.path, tmp_path / "zoo" / "imported")
