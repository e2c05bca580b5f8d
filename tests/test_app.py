"""The Streamlit app, driven by streamlit.testing.v1.AppTest: every page renders without
an exception, and moving a slider changes the MACs shown."""

import json
import os
import subprocess

import pytest
from streamlit.testing.v1 import AppTest

from tokenlearner.config import ModelConfig
from tokenlearner.data import DataError
from tokenlearner.presets import preset
from tokenlearner.flops import count
from tokenlearner.runs import RunDirectory

PAGES = ["pages/home.py", "pages/train.py", "pages/attention.py", "pages/compare.py", "pages/flops.py",
         "pages/video.py"]


def app() -> AppTest:
    return AppTest.from_file("../app.py", default_timeout=60)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(page):
    test = app().run()
    test.switch_page(page).run()
    assert not test.exception, test.exception


def metric(test: AppTest, label: str) -> str:
    return next(m.value for m in test.metric if m.label == label)


def test_flops_page_follows_the_sliders():
    test = app().run()
    test.switch_page("pages/flops.py").run()
    assert metric(test, "MACs") == "78.07 M"  # the keras.io example, 4 tokens
    test.slider(key="flops_0_tokens").set_value(8).run()
    assert metric(test, "MACs") == "79.84 M"
    test.slider(key="flops_0_depth").set_value(8).run()
    assert metric(test, "MACs") == f"{count(ModelConfig(num_tokens=8, depth=8)).macs / 1e6:.2f} M"
    assert not test.exception


def test_placement_stays_valid_when_depth_shrinks():
    test = app().run()
    test.switch_page("pages/flops.py").run()
    test.slider(key="flops_0_placement").set_value(4).run()
    test.slider(key="flops_0_depth").set_value(2).run()
    assert not test.exception
    assert test.slider(key="flops_0_placement").value == 2
    test.checkbox(key="flops_0_fuser").check().run()
    assert test.slider(key="flops_0_placement").value == 1
    test.slider(key="flops_0_depth").set_value(1).run()
    assert not test.exception


def test_three_configs_side_by_side():
    test = app().run()
    test.switch_page("pages/flops.py").run()
    test.radio(key="flops_compared").set_value(3).run()
    test.selectbox(key="flops_2_preset").set_value("keras-io-depth-8").run()
    assert not test.exception
    assert [m.value for m in test.metric if m.label == "MACs"] == ["78.07 M", "78.07 M", "202.21 M"]


def test_choosing_a_preset_resets_its_controls():
    test = app().run()
    test.switch_page("pages/flops.py").run()
    test.slider(key="flops_0_tokens").set_value(12).run()
    test.selectbox(key="flops_0_preset").set_value("keras-io-8-tokens").run()
    assert test.slider(key="flops_0_tokens").value == 8
    assert metric(test, "MACs") == "79.84 M"


@pytest.fixture
def no_checkpoints(tmp_path, monkeypatch):
    """The app as a clone without shipped checkpoints sees it, so a test controls every model shown."""
    monkeypatch.setattr("tokenlearner.runs.CHECKPOINTS_DIR", tmp_path / "no-checkpoints")


@pytest.fixture
def explorer(tmp_path, monkeypatch, no_checkpoints):
    """A runs folder with one (untrained) TokenLearner + TokenFuser run, and CIFAR-10 from
    $TOKENLEARNER_DATA_DIR, or a small generated folder where that is not set; no shipped
    checkpoint."""
    import os

    from cifar_files import make_cifar_folder

    from tokenlearner import build_model
    from tokenlearner.runs import RunDirectory

    if not os.environ.get("TOKENLEARNER_DATA_DIR"):
        monkeypatch.setenv("TOKENLEARNER_DATA_DIR", str(make_cifar_folder(tmp_path / "cifar-10-batches-py")))
    config = ModelConfig(fuser=True, placement=3)
    run = RunDirectory(tmp_path / "runs" / "fuser-run").create({"model": config.to_dict()})
    run.save_model(build_model(config))
    run.set_status("finished")
    monkeypatch.setenv("TOKENLEARNER_RUNS_DIR", str(tmp_path / "runs"))
    return run


def attention_page() -> AppTest:
    test = app().run()
    test.switch_page("pages/attention.py").run()
    return test


def test_attention_page_overlays_test_images(explorer):
    test = attention_page()
    assert not test.exception, test.exception
    assert test.selectbox(key="attention_run").value.name == "runs/fuser-run"
    assert test.get("image"), "no overlays for the first class"
    test.radio(key="attention_pick").set_value("at random").run()
    test.slider(key="attention_count").set_value(3).run()
    assert not test.exception
    assert len(test.get("image")) == 3 * 2  # per image: the row of token maps and the dominant-token view
    assert len(test.get("plotly_chart")) == 3  # top-5 bars
    test.checkbox(key="attention_gates").check().run()
    assert len(test.get("image")) == 3 * 3  # and TokenFuser's gate maps
    test.radio(key="attention_pick").set_value("misclassified").run()
    assert not test.exception


def test_attention_page_sets_two_models_side_by_side(explorer):
    from tokenlearner import build_model

    config = ModelConfig(tokenlearner="v11", num_tokens=8)
    other = RunDirectory(explorer.path.parent / "v11-run").create({"model": config.to_dict()})
    other.save_model(build_model(config))
    other.set_status("finished")
    test = attention_page()
    choose(test.selectbox(key="attention_run"), "runs/fuser-run (")
    test.radio(key="attention_pick").set_value("at random").run()
    test.slider(key="attention_count").set_value(2).run()
    assert len(test.get("image")) == 2 * 2 and len(test.get("plotly_chart")) == 2
    choose(test.selectbox(key="attention_compare"), "runs/v11-run (")
    assert not test.exception, test.exception
    assert test.query_params["compare"] == "runs/v11-run"
    assert len(test.get("image")) == 2 * 2 * 2  # per image and model: the token maps and the dominant view
    assert len(test.get("plotly_chart")) == 2 * 2  # and each model's top-5
    verdicts = [text.value for text in test.markdown if text.value.startswith(("runs/fuser", "runs/v11"))]
    assert len(verdicts) == 4 and all("%)" in verdict for verdict in verdicts), verdicts
    test.selectbox(key="attention_token").set_value(7).run()  # token 8 of v1.1's eight; the other has 4
    assert not test.exception, test.exception


def choose(selectbox, label_start: str) -> None:
    """Pick the option whose label starts with `label_start` (AppTest sees the labels) and run."""
    selectbox.select_index(next(i for i, label in enumerate(selectbox.options) if label.startswith(label_start))).run()


def test_a_link_opens_two_models_side_by_side(explorer):
    test = app()
    test.query_params.update({"run": "runs/fuser-run", "compare": "runs/nothing-here"})
    test.run()
    test.switch_page("pages/attention.py").run()
    assert not test.exception, test.exception
    assert test.selectbox(key="attention_compare").value is None
    assert "The link names no model here (runs/nothing-here); showing one model" in test.warning[0].value


def test_attention_page_takes_an_upload_and_refuses_a_bomb(explorer):
    from PIL import Image
    from test_images import INPUTS, encode

    test = attention_page()
    test.radio(key="attention_source").set_value("my own image").run()
    test.file_uploader(key="attention_upload").set_value(("cat.png", INPUTS["rgba"], "image/png")).run()
    assert not test.exception, test.exception
    assert len(test.get("image")) == 1 + 2  # the upload, its overlays, the dominant-token view
    bomb = encode(Image.new("1", (10_000, 10_000)), "PNG")
    test.file_uploader(key="attention_upload").set_value(("bomb.png", bomb, "image/png")).run()
    assert not test.exception
    assert "declares 10000x10000 pixels" in test.error[0].value


def test_attention_page_names_a_damaged_data_batch_and_a_damaged_model(explorer, tmp_path, monkeypatch):
    from cifar_files import make_cifar_folder

    data = make_cifar_folder(tmp_path / "damaged" / "cifar-10-batches-py")
    raw = (data / "data_batch_2").read_bytes()
    (data / "data_batch_2").write_bytes(raw[: len(raw) // 2])
    monkeypatch.setenv("TOKENLEARNER_DATA_DIR", str(data))
    test = attention_page()
    assert not test.exception, test.exception
    assert any("data_batch_2 is truncated or corrupt" in message.value for message in test.warning), test.warning

    explorer.model_file.write_bytes(b"not a keras file")
    test = attention_page()
    assert not test.exception, test.exception
    assert any("could not be loaded" in message.value and "train this one again" in message.value
               for message in test.error), test.error


def test_a_damaged_data_folder_is_read_once_until_its_files_change(explorer, tmp_path, monkeypatch):
    from cifar_files import make_cifar_folder

    import tokenlearner.data

    data = make_cifar_folder(tmp_path / "damaged" / "cifar-10-batches-py")
    raw = (data / "data_batch_2").read_bytes()
    (data / "data_batch_2").write_bytes(raw[: len(raw) // 2])
    monkeypatch.setenv("TOKENLEARNER_DATA_DIR", str(data))
    reads = []
    read = tokenlearner.data.load_cifar10
    monkeypatch.setattr(tokenlearner.data, "load_cifar10",
                        lambda directory, **options: reads.append(directory) or read(directory, **options))

    test = attention_page()
    test.run()
    test.run()
    assert any("data_batch_2 is truncated or corrupt" in message.value for message in test.warning), test.warning
    assert len(reads) == 1

    (data / "data_batch_2").write_bytes(raw)
    test.run()
    assert not test.exception, test.exception
    assert not test.warning, test.warning
    assert len(reads) == 2


def test_attention_page_without_runs(tmp_path, monkeypatch, no_checkpoints):
    monkeypatch.setenv("TOKENLEARNER_RUNS_DIR", str(tmp_path / "empty"))
    test = attention_page()
    assert not test.exception
    assert "No trained model yet" in test.info[0].value


@pytest.mark.slow
def test_train_page_runs_a_job_and_shows_it_finished(tmp_path, monkeypatch):
    import time

    from cifar_files import make_cifar_folder

    from tokenlearner.jobs import active_job

    monkeypatch.setenv("TOKENLEARNER_DATA_DIR", str(make_cifar_folder(tmp_path / "cifar-10-batches-py")))
    monkeypatch.setenv("TOKENLEARNER_RUNS_DIR", str(tmp_path / "runs"))
    test = app().run()
    test.switch_page("pages/train.py").run()
    assert not test.exception, test.exception
    test.slider(key="train_depth").set_value(2).run()
    test.slider(key="train_placement").set_value(1).run()
    test.slider(key="train_epochs").set_value(1).run()
    test.select_slider(key="train_batch").set_value(32).run()
    test.text_input(key="train_name").set_value("tiny").run()
    test.button(key="train_start").click().run()
    assert not test.exception, test.exception

    test.button(key="train_start").click().run()  # a second job while the first runs
    assert "already running (tiny)" in test.error[0].value

    deadline = time.time() + 180
    while active_job(tmp_path / "runs") is not None and time.time() < deadline:
        time.sleep(1)
    test.run()
    assert not test.exception, test.exception
    assert any("Finished: test top-1" in message.value for message in test.success), test.markdown
    assert (tmp_path / "runs" / "tiny" / "model.keras").is_file()


def test_train_page_shows_why_a_job_ended_before_it_began_training(tmp_path, monkeypatch):
    import time

    from cifar_files import make_cifar_folder

    from tokenlearner.config import TrainConfig
    from tokenlearner.jobs import active_job, start_job

    data = make_cifar_folder(tmp_path / "cifar-10-batches-py")
    raw = (data / "data_batch_2").read_bytes()
    (data / "data_batch_2").write_bytes(raw[: len(raw) // 2])  # damaged after the page last looked
    monkeypatch.setenv("TOKENLEARNER_DATA_DIR", str(data))
    monkeypatch.setenv("TOKENLEARNER_RUNS_DIR", str(tmp_path / "runs"))
    start_job(ModelConfig(), TrainConfig(), tmp_path / "runs", "broken", str(data))
    deadline = time.time() + 60
    while active_job(tmp_path / "runs") is not None and time.time() < deadline:
        time.sleep(0.5)
    test = app().run()
    test.switch_page("pages/train.py").run()
    assert not test.exception, test.exception
    assert not (tmp_path / "runs" / "broken").exists()
    assert any("broken ended before it began training" in message.value for message in test.error), \
        [message.value for message in test.error]
    assert any("data_batch_2 is truncated" in block.value for block in test.code), "the job's log, shown as typed"
    assert test.button(key="train_start").disabled, "the page offers no start on a folder it cannot read"


def nowhere(*args, **options):
    raise DataError("no CIFAR-10 folder here")


def test_train_page_starts_a_video_job_on_drawn_clips_and_shows_a_clips_maps(tmp_path, monkeypatch):
    """No CIFAR-10 is needed for clips of moving shapes. The job's process is stood in for:
    `train` on clips is tested on its own; here, what the page asks for and how it shows the
    run the job writes."""
    import subprocess

    from tokenlearner import build_model, jobs
    from tokenlearner.model import predict_with_maps
    from tokenlearner.moving_shapes import moving_shapes

    monkeypatch.setenv("TOKENLEARNER_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("TOKENLEARNER_DATA_DIR", raising=False)
    monkeypatch.setattr("tokenlearner.data.find_data_dir", nowhere)
    commands, real_popen = [], subprocess.Popen
    monkeypatch.setattr(jobs.subprocess, "Popen", lambda command, **options: commands.append(command)
                        or real_popen(["true"]))
    test = app().run()
    test.switch_page("pages/train.py").run()
    test.radio(key="train_data").set_value("moving-shapes").run()
    assert not test.exception, test.exception
    assert test.selectbox(key="train_preset").value == "checkpoint video-shapes", "the shipped recipe"
    test.select_slider(key="train_frames").set_value(4).run()
    test.radio(key="train_tubelet").set_value(2).run()
    test.number_input(key="train_clips").set_value(30).run()
    test.text_input(key="train_name").set_value("clips").run()
    assert not test.button(key="train_start").disabled
    test.button(key="train_start").click().run()
    assert not test.exception and not test.error, test.error
    command = commands[0]
    assert command[command.index("--data") + 1] == "moving-shapes" and command[command.index("--clips") + 1] == \
        "30,1000,1000"
    assert command[command.index("--frames") + 1] == "4" and command[command.index("--tubelet-frames") + 1] == "2"

    config = preset("video-shapes").replace(frames=4)
    drawn = moving_shapes(30, 4, 2, frames=4, seed=0)
    run = RunDirectory(tmp_path / "runs" / "clips").create({"model": config.to_dict(), "data": drawn.describe()})
    run.write_map_images([0, 1], drawn.val_labels[:2].tolist(), "val_clip")
    run.write_maps(1, *predict_with_maps(build_model(config), drawn.val_clips[:2]))
    run.set_status("finished")
    test.run()
    assert not test.exception, test.exception
    assert any("a fixed validation clip after epoch 1" in caption.value for caption in test.caption)
    assert len(test.get("image")) == 1, "one clip: a row per slice, drawn again from the run's record"


def test_home_lists_finished_runs_in_the_zoo(explorer):
    test = app().run()
    assert "No finished run yet" in test.info[0].value
    explorer.write_summary({"test_top1": 0.5123, "test_top5": 0.9, "test_images": 817, "params": 1,
                            "macs": 2_000_000, "keras_io_gflops": 0.01})
    test = app().run()
    assert not test.exception
    zoo = test.dataframe[-1].value
    assert list(zoo["run"]) == ["runs/fuser-run"] and list(zoo["test top-1 (%)"]) == [51.23]


def test_demo_mode_caps_the_training_job(monkeypatch):
    monkeypatch.setenv("TOKENLEARNER_DEMO", "1")
    test = app().run()
    test.switch_page("pages/train.py").run()
    assert not test.exception
    assert test.slider(key="train_epochs").max == 5
    assert test.number_input(key="train_limit").value == 2000


def test_the_url_carries_the_config():
    test = app()
    test.query_params.update({"tokens": "8", "depth": "6", "placement": "2"})
    test.run()
    test.switch_page("pages/flops.py").run()
    assert not test.exception
    assert metric(test, "MACs") == f"{count(ModelConfig(num_tokens=8, depth=6, placement=2)).macs / 1e6:.2f} M"
    test.slider(key="flops_0_tokens").set_value(5).run()
    assert test.query_params["tokens"] == "5"


def test_an_invalid_link_is_reported_and_ignored():
    test = app()
    test.query_params.update({"tokens": "999"})
    test.run()
    test.switch_page("pages/flops.py").run()
    assert not test.exception
    assert "num_tokens=999 is out of range" in test.warning[0].value
    assert metric(test, "MACs") == "78.07 M"


@pytest.fixture
def two_runs(explorer):
    from tokenlearner.runs import RunDirectory

    explorer.write_summary({"test_top1": 0.40, "test_top5": 0.9, "best_val_top1": 0.41, "train_seconds": 60})
    for epoch in (1, 2):
        explorer.append_epoch({"epoch": epoch, "loss": 2.0 / epoch, "top1": 0.2 * epoch, "top5": 0.5, "val_loss": 2.1,
                               "val_top1": 0.2 * epoch, "val_top5": 0.6})
    cheaper = ModelConfig(tokenlearner="none", depth=2, placement=2)
    other = RunDirectory(explorer.path.parent / "baseline").create({"model": cheaper.to_dict(), "train": {"epochs": 2}})
    other.write_summary({"test_top1": 0.45, "test_top5": 0.92, "best_val_top1": 0.44, "train_seconds": 30})
    other.set_status("finished")
    return explorer, other


def test_compare_page(two_runs):
    test = app().run()
    test.switch_page("pages/compare.py").run()
    assert not test.exception, test.exception
    table = test.dataframe[0].value
    assert sorted(table["run"]) == ["runs/baseline", "runs/fuser-run"]
    published_grid = test.dataframe[1].value["docs/results.md, keras.io recipe (%)"]
    assert published_grid.str.contains(r"\(\d+ runs?\)").any(), "docs/results/ runs are shown"
    test.slider(key="compare_threshold").set_value(42).run()
    assert list(test.dataframe[0].value["run"]) == ["runs/baseline"]
    test.slider(key="compare_threshold").set_value(0).run()
    assert test.button(key="compare_delete_button").disabled  # no run chosen yet
    test.selectbox(key="compare_delete").set_value(next(
        option for option in test.selectbox(key="compare_delete").options if "baseline" in option))
    test.run()
    test.button(key="compare_delete_button").click().run()
    assert not test.exception, test.exception
    # the dialog asks first (AppTest cannot press its button: test_browser does)
    assert any("Delete **runs/baseline** and all its files for good?" in text.value for text in test.markdown)
    assert two_runs[1].path.exists() and two_runs[0].path.exists()


def test_compare_tables_leave_missing_values_empty(two_runs):
    test = app().run()
    test.switch_page("pages/compare.py").run()
    table = test.dataframe[0].value
    baseline = table[table["run"] == "runs/baseline"].iloc[0]
    assert baseline["tokens"] == "" and baseline["placement"] == ""
    assert table[table["run"] == "runs/fuser-run"].iloc[0]["tokens"] == "4"


def test_a_click_on_a_point_names_its_run():
    from tokenlearner.charts import accuracy_cost_figure, clicked_run

    rows = [{"run": "runs/a", "macs_m": 78.07, "test_top1": 50.0}, {"run": "runs/b", "macs_m": 78.08, "test_top1": 50.05},
            {"run": "runs/c", "macs_m": 101.5, "test_top1": None}]
    figure = accuracy_cost_figure(rows, ["runs/b"])
    runs_curve = next(index for index, trace in enumerate(figure.data) if trace.name == "runs")
    assert clicked_run(figure, [{"curve_number": runs_curve, "point_index": 1}]) == "runs/b"
    assert clicked_run(figure, [{"curve_number": 1 - runs_curve, "point_index": 0}]) is None  # the front's line
    assert clicked_run(figure, [{"curve_number": runs_curve, "point_index": 7}]) is None
    assert clicked_run(figure, []) is None
    low, high = figure.layout.xaxis.range
    assert 75 < low < 78.07 and 78.08 < high < 81, "the axis hugs runs of nearly the same cost, not from 0"
    assert figure.data[runs_curve].textposition[0] != figure.data[runs_curve].textposition[1], \
        "labels of neighbouring points go to different sides"


def test_without_data_the_pages_say_where_they_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("TOKENLEARNER_DATA_DIR", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("TOKENLEARNER_RUNS_DIR", str(tmp_path / "runs"))
    test = app().run()
    test.switch_page("pages/train.py").run()
    assert not test.exception, test.exception
    assert "no CIFAR-10 found" in test.warning[0].value and str(tmp_path / "keras") in test.warning[0].value
    assert test.button(key="train_data_download").label.startswith("Download CIFAR-10")
    assert test.button(key="train_start").disabled
    test.text_input(key="train_data_dir_input").set_value(str(tmp_path / "nowhere")).run()
    test.button(key="train_data_dir_use").click().run()
    assert "looked in the given path" in test.warning[0].value


@pytest.mark.parametrize("page", ["pages/home.py", "pages/train.py", "pages/compare.py", "pages/flops.py"])
def test_pages_that_need_no_model_do_not_load_tensorflow(page, tmp_path, cifar_dir):
    """Home included: with the CIFAR-10 copy the checkpoints were trained on, it draws their
    stored maps (without it, it draws a drawing's, which needs the model)."""
    import subprocess
    import sys

    from conftest import REPO

    script = (
        "import sys\n"
        "from streamlit.testing.v1 import AppTest\n"
        f"test = AppTest.from_file({str(REPO / 'app.py')!r}, default_timeout=60).run()\n"
        f"test.switch_page({page!r}).run()\n"
        "assert not test.exception, test.exception\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    env = {"TOKENLEARNER_RUNS_DIR": str(tmp_path / "runs"), "TOKENLEARNER_DATA_DIR": str(cifar_dir),
           "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False False"


def test_attention_page_replays_how_the_maps_formed(explorer):
    import os

    import numpy as np

    from tokenlearner.data import load_cifar10, split
    from tokenlearner.model import predict_with_maps
    from tokenlearner.runs import RunDirectory

    model, _ = RunDirectory(explorer.path).load_model()
    parts = split(load_cifar10(os.environ["TOKENLEARNER_DATA_DIR"]))
    explorer.write_map_images(parts.val_index[:8].tolist(), parts.val_labels[:8].tolist())
    for epoch in (0, 1, 2):
        explorer.write_maps(epoch, *predict_with_maps(model, parts.val_images[:8] + np.uint8(epoch)))
    test = attention_page()
    assert not test.exception, test.exception
    assert test.select_slider(key="attention_epoch").value == 2
    before = len(test.get("image"))

    def frame_captions():
        return [caption for image in test.get("image") for caption in image.captions
                if "fixed validation images" in caption]

    assert [caption.endswith("after epoch 2") for caption in frame_captions()] == [True]
    test.select_slider(key="attention_epoch").set_value(0).run()
    assert [caption.endswith("after epoch 0") for caption in frame_captions()] == [True]
    test.button(key="attention_play").click().run()  # epochs 0, 1, 2 into the same frame
    assert not test.exception, test.exception
    assert len(test.get("image")) == before
    assert [caption.endswith("after epoch 2") for caption in frame_captions()] == [True]


def test_a_link_beyond_the_sliders_is_clamped_to_them():
    test = app()
    test.query_params.update({"depth": "20", "tokens": "40", "placement": "18"})  # a valid config, wider than the app
    test.run()
    test.switch_page("pages/flops.py").run()
    assert not test.exception, test.exception
    assert (test.slider(key="flops_0_depth").value, test.slider(key="flops_0_tokens").value) == (12, 16)
    assert test.slider(key="flops_0_placement").value == 12


def test_a_shipped_checkpoint_is_a_preset_of_model_and_recipe(tmp_path, monkeypatch):
    from tokenlearner.config import TrainConfig
    from tokenlearner.runs import RunDirectory

    recipe = TrainConfig(epochs=120, schedule="cosine", warmup_epochs=5, weight_decay=0.05, mixup_alpha=0.8, seed=3)
    RunDirectory(tmp_path / "checkpoints" / "v1-8-tokens").create(
        {"model": ModelConfig(num_tokens=8).to_dict(), "train": recipe.to_dict(), "data": {}})
    monkeypatch.setattr("tokenlearner.runs.CHECKPOINTS_DIR", tmp_path / "checkpoints")
    test = app().run()
    test.switch_page("pages/train.py").run()
    test.selectbox(key="train_preset").set_value("checkpoint v1-8-tokens").run()
    assert not test.exception, test.exception
    assert test.slider(key="train_tokens").value == 8
    assert test.slider(key="train_epochs").value == 120 and test.number_input(key="train_seed").value == 3
    assert any("From the preset, too: weight_decay 0.05, schedule cosine, warmup_epochs 5, mixup_alpha 0.8"
               in caption.value for caption in test.caption)


def test_home_shows_what_the_best_models_tokens_pool(explorer):
    import os

    from tokenlearner.data import load_cifar10, split
    from tokenlearner.model import predict_with_maps
    from tokenlearner.runs import RunDirectory

    model, _ = RunDirectory(explorer.path).load_model()
    parts = split(load_cifar10(os.environ["TOKENLEARNER_DATA_DIR"]))
    explorer.write_maps(1, *predict_with_maps(model, parts.val_images[:8]))
    explorer.write_summary({"test_top1": 0.5, "test_top5": 0.9, "test_images": 817, "params": 1, "macs": 1,
                            "keras_io_gflops": 0.01, "best_epoch": 1})
    explorer.write_map_images(parts.val_index[:8].tolist(), parts.val_labels[:8].tolist())
    test = app().run()
    assert not test.exception, test.exception
    assert len(test.get("image")) == 1
    assert test.caption[0].value.startswith("What the 4 tokens of runs/fuser-run (50.0% test top-1) pool")

    # Another copy of CIFAR-10 holds other images at those places: no overlay on the wrong image, but
    # the maps of a drawing.
    explorer.write_map_images(parts.val_index[:8].tolist(), ((parts.val_labels[:8] + 1) % 10).tolist())
    test = app().run()
    assert not test.exception, test.exception
    assert len(test.get("image")) == 1
    assert "a drawing made for this page" in test.caption[0].value


def test_without_data_home_draws_the_maps_over_a_drawing(explorer, monkeypatch, tmp_path):
    explorer.write_summary({"test_top1": 0.5, "test_top5": 0.9, "test_images": 817, "best_epoch": 1})
    explorer.write_map_images([0], [0])
    explorer.write_maps(1, *predict_with_maps_of(explorer))
    monkeypatch.delenv("TOKENLEARNER_DATA_DIR", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    test = app().run()
    assert not test.exception, test.exception
    assert len(test.get("image")) == 1
    assert "a drawing made for this page" in test.caption[0].value


def predict_with_maps_of(run):
    import numpy as np

    from tokenlearner.model import predict_with_maps
    from tokenlearner.runs import RunDirectory

    model, _ = RunDirectory(run.path).load_model()
    return predict_with_maps(model, np.zeros((1, 32, 32, 3), np.uint8))


def test_a_shipped_checkpoint_is_shown_on_home_and_attention(cifar_dir, tmp_path, monkeypatch):
    """With no local run, the home picture and the Attention page come from the shipped
    checkpoints: the real weights, drawn over the images of $TOKENLEARNER_DATA_DIR."""
    from tokenlearner.runs import find_checkpoints

    checkpoints = [info for info in find_checkpoints()[0] if not info.on_clips]  # those: the Video page's
    shipped = [info.name for info in checkpoints if info.config.tokenlearner != "none"]
    assert shipped, "no TokenLearner checkpoint is shipped in checkpoints/"
    without_maps = [info.name for info in checkpoints if info.config.tokenlearner == "none"]
    monkeypatch.setenv("TOKENLEARNER_RUNS_DIR", str(tmp_path / "no-runs"))
    test = app().run()
    assert not test.exception, test.exception
    assert len(test.get("image")) == 1
    caption = test.caption[0].value
    showcased = next((name for name in shipped if caption.startswith("What the ") and f"of {name} (" in caption), None)
    assert showcased, caption
    zoo = test.dataframe[-1].value
    assert set(shipped) <= set(zoo["run"])

    test = attention_page()
    assert not test.exception, test.exception
    assert test.selectbox(key="attention_run").value.name == showcased, "Attention opens on another model than home"
    for name in shipped + without_maps:
        choice = test.selectbox(key="attention_run")
        choice.select_index(next(i for i, label in enumerate(choice.options) if label.startswith(f"{name} ("))).run()
        assert not test.exception, test.exception
        assert test.selectbox(key="attention_run").value.name == name
        test.radio(key="attention_pick").set_value("at random").run()
        test.slider(key="attention_count").set_value(2).run()
        # per image the token maps and the dominant-token view, then the fixed images' maps after an epoch;
        # without TokenLearner just each image
        assert len(test.get("image")) == (2 if name in without_maps else 2 * 2 + 1), name
        replay = "How the maps formed during training" in [header.value for header in test.subheader]
        assert replay == (name not in without_maps), name


@pytest.fixture
def demo(monkeypatch):
    monkeypatch.setenv("TOKENLEARNER_DEMO", "yes")


def test_a_demo_hides_error_details_and_the_data_folder_and_download_controls(demo, tmp_path, monkeypatch):
    import streamlit

    monkeypatch.delenv("TOKENLEARNER_DATA_DIR", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("TOKENLEARNER_RUNS_DIR", str(tmp_path / "runs"))
    test = app().run()
    assert streamlit.get_option("client.showErrorDetails") == "none"
    test.switch_page("pages/train.py").run()
    assert not test.exception, test.exception
    assert any("CIFAR-10 is not available on this instance" in message.value for message in test.info)
    assert not test.warning, "a visitor learns nothing of the server's folders"
    assert [field.key for field in test.text_input] == ["train_name"]  # no folder field
    assert [button.key for button in test.button] == ["train_start"]  # no download button


def test_a_run_name_with_markdown_is_refused_and_shown_as_typed(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENLEARNER_RUNS_DIR", str(tmp_path / "runs"))
    if not os.environ.get("TOKENLEARNER_DATA_DIR"):
        from cifar_files import make_cifar_folder

        monkeypatch.setenv("TOKENLEARNER_DATA_DIR", str(make_cifar_folder(tmp_path / "cifar-10-batches-py")))
    test = app().run()
    test.switch_page("pages/train.py").run()
    test.text_input(key="train_name").set_value("[click](https://example.com) **now**").run()
    test.button(key="train_start").click().run()
    assert not test.exception, test.exception
    assert r"\[click\](https\://example.com) \*\*now\*\*" in test.error[0].value
    assert not (tmp_path / "runs").exists()


def test_only_the_session_that_started_a_demo_job_sees_stop(demo, tmp_path, monkeypatch):
    from cifar_files import make_cifar_folder

    from tokenlearner import jobs

    job = subprocess.Popen(["sleep", "120"])

    class Training:  # the job: a live process, its progress written below
        def __init__(self, command, **options):
            self.pid = job.pid

    monkeypatch.setattr(jobs.subprocess, "Popen", Training)
    monkeypatch.setenv("TOKENLEARNER_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("TOKENLEARNER_DATA_DIR", str(make_cifar_folder(tmp_path / "cifar-10-batches-py")))
    starter, visitor = app().run(), app().run()
    for session in (starter, visitor):
        session.switch_page("pages/train.py").run()
    starter.text_input(key="train_name").set_value("mine").run()
    starter.button(key="train_start").click().run()
    run = RunDirectory(tmp_path / "runs" / "mine").create({"model": ModelConfig().to_dict()})
    run.set_status("running")
    run.write_progress(epoch=1, epochs=5, step=1, steps=8, images_per_s=100.0, eta_s=10.0)
    starter.run()
    visitor.run()
    assert not starter.exception and not visitor.exception
    assert [button.key for button in starter.button if button.key == "train_stop"] == ["train_stop"]
    assert not [button for button in visitor.button if button.key == "train_stop"]
    starter.button(key="train_stop").click().run()
    assert run.stop_requested()
    job.kill()
    job.wait()


def test_a_link_to_a_model_opens_it_and_a_link_to_no_model_says_so(explorer):
    test = app()
    test.query_params["run"] = "runs/fuser-run"
    test.run()
    test.switch_page("pages/attention.py").run()
    assert test.selectbox(key="attention_run").value.name == "runs/fuser-run" and not test.warning

    test = app()
    test.query_params["run"] = "../../etc/passwd"
    test.run()
    test.switch_page("pages/attention.py").run()
    assert not test.exception
    assert "The link names no model here (../../etc/passwd); showing the best one" in test.warning[0].value
    assert test.selectbox(key="attention_run").value.name == "runs/fuser-run"


def test_a_demo_refuses_an_upload_above_its_pixel_cap(explorer, demo):
    from PIL import Image
    from test_images import encode

    test = attention_page()
    test.radio(key="attention_source").set_value("my own image").run()
    big = encode(Image.new("L", (3000, 3000)), "PNG")
    test.file_uploader(key="attention_upload").set_value(("big.png", big, "image/png")).run()
    assert not test.exception
    assert "the limit is 8 MP" in test.error[0].value


def test_compare_page_follows_a_grid_as_it_trains(explorer):
    from tokenlearner.experiment import GridRun, write_plan

    grid = explorer.path.parent / "tables"
    planned = [GridRun(name, seed, ModelConfig(), None, "keras-io-4-tokens")
               for name, seed in (("4-tokens", 0), ("8-tokens", 0), ("4-tokens", 1))]
    write_plan(planned, grid, "keras_io_tables", "ray")
    done = RunDirectory(grid / "4-tokens" / "seed_0").create({"model": ModelConfig().to_dict()})
    for epoch in (1, 2):
        done.append_epoch({"epoch": epoch, "loss": 2.0, "top1": 0.3, "top5": 0.8, "val_loss": 2.0,
                           "val_top1": 0.2 * epoch, "val_top5": 0.7})
    done.write_summary({"test_top1": 0.4321})
    done.set_status("finished")
    training = RunDirectory(grid / "8-tokens" / "seed_0").create({"model": ModelConfig().to_dict()})
    training.set_status("running")  # by this process, which is alive
    training.write_progress(epoch=1, epochs=2, step=3, steps=10)
    (grid / "4-tokens" / "seed_1").mkdir()  # handed to Ray, not started yet

    import shutil

    for only_the_grid in (False, True):
        if only_the_grid:
            shutil.rmtree(explorer.path)  # the grid is shown without any single run too
        test = app().run()
        test.switch_page("pages/compare.py").run()
        assert not test.exception, test.exception
        assert any(text.value == "**tables**: 1 finished, 1 running, 1 waiting" for text in test.markdown)
        table = next(frame.value for frame in test.dataframe if "state" in frame.value and "config" in frame.value)
        assert list(table["state"]) == ["finished", "running", "waiting"]
        assert list(table["epochs"]) == ["2", "0/2", "0"]
        assert table["test top-1 (%)"].iloc[0] == 43.21
    assert not any("No runs yet" in text.value for text in test.info)


def test_compare_page_shows_a_searchs_front(explorer, tmp_path):
    from tokenlearner.experiment import write_plan
    from tokenlearner.search import read_space

    space_file = tmp_path / "space.json"
    space_file.write_text(json.dumps({"train": {"epochs": 3}, "space": {"model": {"num_tokens": [2, 4, 8]}}}))
    space = read_space(space_file)
    samples = sorted(space.samples(3), key=lambda run: run.model.num_tokens)  # cheapest first, as the table
    search = explorer.path.parent / "search"
    write_plan(samples, search, str(space_file), "ray", search=space.plan(3))
    for run, state, curve in zip(samples, ("finished", "stopped early", "running"), ([0.3, 0.4, 0.5], [0.1], [0.2])):
        directory = RunDirectory(search / run.name / "seed_0").create({"model": run.model.to_dict(),
                                                                        "train": run.train.to_dict()})
        for epoch, value in enumerate(curve, start=1):
            directory.append_epoch({"epoch": epoch, "loss": 2.0, "top1": 0.3, "top5": 0.8, "val_loss": 2.0,
                                    "val_top1": value, "val_top5": 0.7, "complete": True})
        directory.set_status(state)

    test = app().run()
    test.switch_page("pages/compare.py").run()
    assert not test.exception, test.exception
    assert any(text.value == "**search**: 1 finished, 1 running, 1 stopped early" for text in test.markdown)
    table = next(frame.value for frame in test.dataframe if "front" in frame.value)
    assert list(table["run"]) == [run.name for run in samples]
    assert list(table["state"]) == ["finished", "stopped early", "running"]
    assert list(table["front"]) == [True, False, False] and list(table["val_top1"]) == [50.0, 10.0, 20.0]
    assert any("hollow: stopped early by ASHA" in caption.value for caption in test.caption)


VIDEO_CONFIG = ModelConfig(frames=4, tubelet_frames=2, depth=2, placement=1, num_classes=4, resize_size=32,
                           image_size=32, patch_size=8)


@pytest.fixture
def video_run(explorer):
    """Beside the explorer's image run, an (untrained) video model of 4-frame clips in
    tubelets of 2, recorded as trained on moving shapes."""
    from tokenlearner import build_model
    from tokenlearner.moving_shapes import moving_shapes

    record = moving_shapes(2, 2, 6, frames=4, seed=1).describe()
    run = RunDirectory(explorer.path.parent / "video-run").create({"model": VIDEO_CONFIG.to_dict(), "data": record})
    run.save_model(build_model(VIDEO_CONFIG))
    run.set_status("finished")
    return run


def video_page() -> AppTest:
    test = app().run()
    test.switch_page("pages/video.py").run()
    return test


def test_video_page_plays_a_clip_with_every_tokens_maps(video_run):
    from tokenlearner.flops import without_tokenlearner

    test = video_page()
    assert not test.exception, test.exception
    assert test.selectbox(key="video_run").value.name == "runs/video-run"
    assert len(test.get("image")) == 2  # the frame with each token's map, and the dominant-token view
    assert any("moves" in markdown.value for markdown in test.markdown)  # the prediction, with its verdict
    assert len(test.get("plotly_chart")) == 1
    test.slider(key="video_frame").set_value(3).run()
    test.button(key="video_play").click().run()
    test.number_input(key="video_clip").set_value(5).run()
    assert not test.exception, test.exception
    assert len(test.get("image")) == 2
    costs = test.dataframe[-1].value
    assert list(costs["MACs per clip (M)"]) == [round(count(VIDEO_CONFIG).macs / 1e6, 1),
                                                round(count(without_tokenlearner(VIDEO_CONFIG)).macs / 1e6, 1)]
    assert list(costs["tokens each block attends over"]) == ["32, 8", "32, 32"]


def test_video_page_replays_how_a_fixed_clips_maps_formed(video_run):
    from tokenlearner import build_model
    from tokenlearner.model import predict_with_maps
    from tokenlearner.moving_shapes import from_record

    val = from_record(video_run.record()["data"], parts=("val",))
    video_run.write_map_images([0, 1], val.val_labels.tolist(), "val_clip")
    for epoch in (0, 1):
        video_run.write_maps(epoch, *predict_with_maps(build_model(VIDEO_CONFIG), val.val_clips))
    test = video_page()
    assert not test.exception, test.exception
    assert "How the maps formed during training" in [header.value for header in test.subheader]
    assert len(test.get("image")) == 3  # the clip's frame, its dominant-token view, the epoch's sheet
    test.select_slider(key="video_epoch").set_value(0).run()
    test.button(key="video_play_epochs").click().run()
    assert not test.exception, test.exception
    captions = [caption for image in test.get("image") for caption in image.captions]
    assert any("a fixed validation clip after epoch 1" in caption for caption in captions)


def test_video_page_takes_a_gif_and_refuses_a_short_one(video_run):
    from test_images import gif_of, numbered_frames

    test = video_page()
    test.radio(key="video_source").set_value("my own GIF").run()
    test.file_uploader(key="video_upload").set_value(("clip.gif", gif_of(numbered_frames(6)), "image/gif")).run()
    assert not test.exception, test.exception
    assert len(test.get("image")) == 2
    test.file_uploader(key="video_upload").set_value(("short.gif", gif_of(numbered_frames(2)), "image/gif")).run()
    assert not test.exception
    assert "has 2 frame(s) and the model takes 4" in test.error[0].value


def test_without_a_video_model_the_video_page_says_how_to_train_one(explorer):
    test = video_page()
    assert not test.exception
    assert "No video model yet" in test.info[0].value
    assert "--data moving-shapes --clips 6000,1000,1000 --preset video-shapes" in test.code[0].value


def test_the_image_pages_leave_video_models_out(video_run):
    """And image models trained on the clips' first frames (the single-frame baseline)."""
    from tokenlearner import build_model

    baseline = ModelConfig(num_classes=4, depth=1, placement=1)
    run = RunDirectory(video_run.path.parent / "single-frame").create(
        {"model": baseline.to_dict(), "data": {**video_run.record()["data"], "first_frame_only": True}})
    run.save_model(build_model(baseline))
    run.set_status("finished")
    test = attention_page()
    assert not test.exception
    assert test.selectbox(key="attention_run").options == ["runs/fuser-run (finished)"]
    assert any("video models are on the Video page" in caption.value for caption in test.caption)
    test.switch_page("pages/compare.py").run()
    assert not test.exception
    test.switch_page("pages/home.py").run()
    assert not test.exception


def test_the_video_page_opens_on_the_shipped_video_model(tmp_path, monkeypatch):
    """No CIFAR-10 needed: the shipped video model's test clips are drawn again, and it
    tells which shape moves."""
    monkeypatch.setenv("TOKENLEARNER_RUNS_DIR", str(tmp_path / "no-runs"))
    monkeypatch.delenv("TOKENLEARNER_DATA_DIR", raising=False)
    test = video_page()
    assert not test.exception, test.exception
    assert test.selectbox(key="video_run").value.name == "checkpoints/video-shapes"
    assert any("moves" in markdown.value and "✓" in markdown.value for markdown in test.markdown)
    assert len(test.get("image")) == 3, "the clip, its dominant-token view and its epochs' maps (shipped with it)"
