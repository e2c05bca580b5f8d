import itertools
import json
import subprocess
import sys

import pytest
from cifar_files import make_cifar_folder
from conftest import REPO

from tokenlearner.experiment import grid_progress, pending, read_grid, results, run_grid
from tokenlearner.presets import PRESETS, PUBLISHED

GRID = {
    "seeds": [0, 1],
    "train": {"epochs": 1, "batch_size": 32},
    "configs": {
        "baseline": {"preset": "keras-io-no-tokenlearner", "model": {"depth": 1, "placement": 1}},
        "tokens": {"model": {"depth": 1, "placement": 1, "num_tokens": 2}, "train": {"label_smoothing": 0.1}},
    },
}


def test_the_timing_grid_is_the_keras_io_configs_once_for_two_epochs():
    tables, timing = read_grid("keras_io_tables"), read_grid("keras_io_timing")
    assert [(run.name, run.model) for run in timing] == [(run.name, run.model) for run in tables if run.seed == 0]
    assert all(run.seed == 0 and run.train.epochs == 2 for run in timing)


def test_the_shipped_grid_is_the_keras_io_tables():
    runs = read_grid("keras_io_tables")
    assert len(runs) == 7 * 5
    assert [run.seed for run in runs[:7]] == [0] * 7 and len({run.name for run in runs[:7]}) == 7, "seed by seed"
    assert {run.model for run in runs} == {PRESETS[name] for name in PUBLISHED}
    assert all(run.train.epochs == 20 and run.train.batch_size == 256 for run in runs)


@pytest.mark.parametrize(
    "grid, message",
    [
        ({"configs": {}}, "non-empty \"configs\""),
        ({"configs": {"a": {}}, "seeds": "0"}, "\"seeds\" must be a non-empty list"),
        ({"configs": {"a": {"model": {"depth": 0}}}}, "config 'a': depth=0 is out of range"),
        ({"configs": {"a": {"preset": "nope"}}}, "config 'a': unknown preset 'nope'"),
        ({"configs": {"a": {"optimizer": "sgd"}}}, "may only have"),
        ({"configs": {"a": {}}, "train": {"epoch": 3}}, "config 'a': "),
        ({"configs": {"a": {}}, "data": {"name": "mnist"}}, "grid.json: data 'mnist' is not known"),
        ({"configs": {"a": {"data": {"name": "moving-shapes", "clips": [1, 2]}}}},
         "config 'a': clips=.* must be three whole numbers"),
        ({"configs": {"a": {"preset": "video-shapes"}}}, "config 'a': CIFAR-10 holds images and the model takes clips"),
        ({"configs": {"a": {}}, "data": {"name": "moving-shapes"}}, "config 'a': the moving shapes has 4 classes"),
    ],
)
def test_grid_mistakes(grid, message, tmp_path):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(grid))
    with pytest.raises(ValueError, match=message):
        read_grid(path)


def test_a_grids_data_is_shared_and_a_config_may_have_its_own(tmp_path):
    from tokenlearner.datasets import DataChoice

    path = tmp_path / "grid.json"
    path.write_text(json.dumps({
        "data": {"name": "moving-shapes", "clips": [40, 10, 10]},
        "configs": {"video": {"preset": "video-shapes"},
                    "single-frame": {"preset": "video-shapes", "model": {"frames": 1, "tubelet_frames": 1}},
                    "cifar": {"data": {"name": "cifar10"}}}}))
    shared = DataChoice("moving-shapes", (40, 10, 10))
    assert [(run.name, run.data) for run in read_grid(path)] == [("video", shared), ("single-frame", shared),
                                                                 ("cifar", DataChoice())]


def test_the_video_grid_is_the_shipped_video_model_against_its_single_frame_baseline():
    from tokenlearner.runs import RunDirectory

    video, single = read_grid("video_shapes")
    shipped = RunDirectory(REPO / "checkpoints" / "video-shapes")
    record = shipped.record()["data"]
    assert video.model == shipped.model_config() and video.train == shipped.train_config()
    assert single.model == video.model.replace(frames=1, tubelet_frames=1) and single.train == video.train
    assert video.data == single.data and video.data.clips == (record["train_clips"], record["val_clips"],
                                                              record["test_clips"])


def test_a_stopped_run_ends_the_grid_and_the_next_call_resumes_it(tmp_path):
    from tokenlearner.runs import RunDirectory

    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(GRID))
    runs, trained, messages = read_grid(grid), [], []

    def train_one(run, directory, label, stop_at="tokens seed 0"):
        trained.append(label)
        RunDirectory(directory).create({}).set_status("stopped" if stop_at in label else "finished")
        return stop_at in label

    assert run_grid(pending(runs, tmp_path / "out", messages.append), train_one, messages.append) is False
    assert [label.split("] ")[1] for label in trained] == ["baseline seed 0", "tokens seed 0"]
    assert messages[-1].endswith("stopped; the same command resumes the grid, training this run again from the start")

    trained.clear()
    assert run_grid(pending(runs, tmp_path / "out", messages.append), lambda *args: train_one(*args, stop_at="never"),
                    messages.append)
    assert [label.split("] ")[1] for label in trained] == ["tokens seed 0", "baseline seed 1", "tokens seed 1"]
    assert (tmp_path / "out" / "tokens" / "seed_0.incomplete-1").is_dir()


def test_a_config_without_a_preset_is_the_keras_io_model_with_its_published_figure(tmp_path):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"configs": {"plain": {}, "deeper": {"model": {"depth": 5}}}}))
    plain, deeper = results(read_grid(grid), tmp_path / "out")
    assert plain["published_top1"] == 56.498 and plain["seeds"] == "0/1"
    assert deeper["published_top1"] is None, "the figure belongs to the example's architecture only"


def test_a_grid_leaves_a_run_that_another_process_is_training_alone(tmp_path):
    import os

    from tokenlearner.runs import RunDirectory, RunError

    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(GRID))
    running = RunDirectory(tmp_path / "out" / "baseline" / "seed_0").create({})
    running.set_status("running")  # by this process, which is alive
    with pytest.raises(RunError, match=f"is being trained by process {os.getpid()}"):
        pending(read_grid(grid), tmp_path / "out", print)
    assert running.status()["state"] == "running" and running.path.is_dir()
    (tmp_path / "out" / "grid.json").write_text("the other experiment's plan")
    refused = subprocess.run([sys.executable, "-m", "tokenlearner", "experiment", str(grid), "--out",
                              str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO)
    assert refused.returncode == 2 and "is being trained by process" in refused.stderr
    assert (tmp_path / "out" / "grid.json").read_text() == "the other experiment's plan"


@pytest.mark.slow
def test_a_grid_runs_resumes_and_tabulates(tmp_path):
    data = make_cifar_folder(tmp_path / "cifar-10-batches-py", rows_per_batch=16, test_rows=20)
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(GRID))
    out = tmp_path / "out"

    def experiment():
        return subprocess.run([sys.executable, "-m", "tokenlearner", "experiment", str(grid), "--out", str(out),
                               "--data-dir", str(data)], capture_output=True, text=True, cwd=REPO)

    first = experiment()
    assert first.returncode == 0, first.stderr
    assert "[4/4] tokens seed 1: training" in first.stdout
    assert {row["state"] for row in grid_progress(out)} == {"finished"}
    table = (out / "results.md").read_text()
    assert "| baseline | 2/2 |" in table and "| tokens | 2/2 |" in table
    assert "56.24" not in table  # a changed preset does not borrow the published figure
    csv_rows = (out / "results.csv").read_text().splitlines()
    assert csv_rows[0].startswith("config,seeds,top1_mean,top1_std") and len(csv_rows) == 3

    (out / "tokens" / "seed_1" / "status.json").write_text('{"state": "stopped"}')
    second = experiment()
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("finished already, skipped") == 3
    assert "[4/4] tokens seed 1: an unfinished run was there, moved to seed_1.incomplete-1" in second.stdout
    assert (out / "tokens" / "seed_1.incomplete-1").is_dir()
    assert (out / "results.png").read_bytes().startswith(b"\x89PNG")

    (out / "results.md").unlink()
    tabulated = subprocess.run([sys.executable, "-m", "tokenlearner", "experiment", str(grid), "--out", str(out),
                                "--table-only", "--data-dir", str(tmp_path / "nowhere")],
                               capture_output=True, text=True, cwd=REPO)
    assert tabulated.returncode == 0, tabulated.stderr
    assert "training" not in tabulated.stdout and "| tokens | 2/2 |" in (out / "results.md").read_text()


def test_the_figure_plots_every_table_and_the_published_points(tmp_path):
    from PIL import Image

    from tokenlearner.experiment import plot_accuracy_vs_macs

    rows = [{"config": "4-tokens", "top1_mean": 36.1, "top1_std": 0.8, "macs": 78e6, "published_top1": 56.5},
            {"config": "no-tokenlearner", "top1_mean": 35.0, "top1_std": None, "macs": 96e6, "published_top1": None},
            {"config": "unfinished", "top1_mean": None, "top1_std": None, "macs": 90e6, "published_top1": None}]
    path = plot_accuracy_vs_macs({"keras.io recipe": rows, "our recipe": rows[:1]}, tmp_path / "figure.png", "t")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (900, 576)


def test_labels_of_configs_with_nearly_equal_macs_do_not_overlap():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot
    from matplotlib.text import Text

    from tokenlearner.experiment import _label_points

    # the keras.io grid's five depth-4 TokenLearner rows sit within 2 M MACs and 1.5 points
    points = [("v11-4-groups-8-tokens", 79.7, 34.3), ("v11-4-groups-4-tokens", 78.3, 34.2),
              ("v11-8-groups-8-tokens", 79.5, 33.8), ("4-tokens", 78.1, 33.1), ("8-tokens", 79.8, 32.8),
              ("no-tokenlearner", 101.5, 34.0), ("depth-8", 202.2, 27.2)]
    figure, axes = pyplot.subplots(figsize=(7.5, 4.8), dpi=120)
    axes.scatter([x for _, x, _ in points], [y for _, _, y in points])
    axes.set_xlim(0, 230)
    axes.set_ylim(25, 58)
    _label_points(axes, points)
    figure.canvas.draw()
    # the text's own box (an annotation's box takes in its line to the point too)
    boxes = {text.get_text(): Text.get_window_extent(text) for text in axes.texts}
    assert sorted(boxes) == sorted(label for label, _, _ in points)
    for first, second in itertools.combinations(boxes, 2):
        assert not boxes[first].overlaps(boxes[second]), f"{first} and {second} overlap"
    pyplot.close(figure)


def test_the_checkpoint_grid_names_the_shipped_models():
    runs = {run.name: run for run in read_grid(REPO / "tokenlearner" / "grids" / "checkpoints.json")}
    assert list(runs) == ["v1-8-tokens", "no-tokenlearner", "v11-8-tokens", "v1-4-tokens", "v1-8-tokens-fuser",
                          "depth-8"]
    assert runs["v1-8-tokens-fuser"].model.fuser and runs["depth-8"].model.depth == 8
    assert {run.train for run in runs.values()} == {runs["depth-8"].train}, "one recipe for every checkpoint"


def test_the_published_keras_io_runs_are_finished_runs_of_the_shipped_grid_and_docs_show_their_table(tmp_path):
    from tokenlearner.experiment import results, write_results
    from tokenlearner.runs import RunDirectory

    published = REPO / "docs" / "results" / "keras-io-tables"
    grid = read_grid("keras_io_tables")
    expected = {(run.name, run.seed): run for run in grid}
    records = sorted(published.glob("*/seed_*/config.json"))
    assert records, "docs/results.md publishes runs of the keras.io grid"
    for config_file in records:
        directory = RunDirectory(config_file.parent)
        run = expected[(directory.path.parent.name, int(directory.path.name.removeprefix("seed_")))]
        assert directory.status()["state"] == "finished", directory.path
        assert directory.model_config() == run.model and directory.train_config() == run.train
        assert 0 < directory.summary()["test_top1"] <= 1 and len(directory.epochs()) == run.train.epochs

    _, table = write_results(results(grid, published), tmp_path)
    assert (published / "results.md").read_text() == table.read_text(), "rerun experiment ... --table-only"
    results_page = (REPO / "docs" / "results.md").read_text()
    assert all(line in results_page for line in table.read_text().splitlines()), "docs/results.md shows the table"


def test_a_grids_runs_wait_while_its_process_runs_and_are_not_started_after(tmp_path):
    from tokenlearner.experiment import PLAN_FILE, grid_progress, write_plan

    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(GRID))
    runs = read_grid(grid)
    write_plan(runs, tmp_path / "out", str(grid), "process")
    assert [(row["config"], row["seed"], row["state"]) for row in grid_progress(tmp_path / "out")] == [
        ("baseline", 0, "waiting"), ("tokens", 0, "waiting"), ("baseline", 1, "waiting"), ("tokens", 1, "waiting")]
    plan = json.loads((tmp_path / "out" / PLAN_FILE).read_text())
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    plan["process"] = {"pid": int(ended.stdout), "start_ticks": 1, "boot_id": plan["process"]["boot_id"]}
    (tmp_path / "out" / PLAN_FILE).write_text(json.dumps(plan))
    assert {row["state"] for row in grid_progress(tmp_path / "out")} == {"not started"}
