"""A public demo is a security boundary: what a visitor can reach, the library refuses
where the work starts (jobs, stops, downloads, uploads, data folders, the kernel cache),
whatever the widgets show. The laptop keeps everything."""

import io
import itertools
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from tokenlearner import jobs, native, processes
from tokenlearner.config import ModelConfig, TrainConfig
from tokenlearner.datasets import DataChoice
from tokenlearner.flops import count
from tokenlearner.presets import preset
from tokenlearner.data import DataError, datasets_dir, find_data_dir, read_batch
from tokenlearner.files import (
    atomic_path,
    read_json,
    remove_stale_temporaries,
    write_json,
)
from tokenlearner.images import ImageError, read_image
from tokenlearner.jobs import (
    JobError,
    active_job,
    last_job,
    may_stop,
    start_job,
    stop_job,
    tidy_runs,
)
from tokenlearner.limits import Limits, demo_mode
from tokenlearner.runs import RunDirectory, RunError, find_runs

LAPTOP = Limits.current({})
DEMO = Limits.current({"TOKENLEARNER_DEMO": "1"})
SMALL = TrainConfig(epochs=1, limit=100)


REAL_POPEN = subprocess.Popen


class SlowPopen:
    """Stands in for the training process: slow to start, as a real one is, and a live
    process (a `sleep`), so that the job counts as running."""

    started, processes = [], []

    def __init__(self, command, **options):
        time.sleep(0.05)
        process = REAL_POPEN(["sleep", "120"])
        self.pid = process.pid
        SlowPopen.started.append(command)
        SlowPopen.processes.append(process)


@pytest.fixture
def fake_training(monkeypatch):
    SlowPopen.started, SlowPopen.processes = [], []
    monkeypatch.setattr(jobs.subprocess, "Popen", SlowPopen)
    yield SlowPopen.started
    for process in SlowPopen.processes:
        process.kill()
        process.wait()


def test_the_job_runs_below_the_pages_priority(tmp_path, fake_training):
    start_job(ModelConfig(), SMALL, tmp_path, "job", tmp_path, LAPTOP)
    job = SlowPopen.processes[0].pid
    assert os.getpriority(os.PRIO_PROCESS, job) == os.getpriority(os.PRIO_PROCESS, 0) + jobs.JOB_NICENESS


@pytest.mark.parametrize("value, demo", [
    (None, False), ("", False), ("0", False), ("false", False), ("FALSE", False), (" False ", False),
    ("1", True), ("true", True), ("yes", True), ("on", True), ("TRUE", True), ("2", True), ("demo", True),
])
def test_demo_mode_is_on_for_anything_but_unset_empty_0_or_false(value, demo):
    environ = {} if value is None else {"TOKENLEARNER_DEMO": value}
    assert demo_mode(environ) is demo
    assert Limits.current(environ).demo is demo


def test_the_retention_limits_follow_the_environment_and_refuse_nonsense():
    limits = Limits.current({"TOKENLEARNER_DEMO": "1", "TOKENLEARNER_DEMO_MAX_RUNS": "3",
                             "TOKENLEARNER_DEMO_MAX_RUNS_MB": "7"})
    assert (limits.keep_runs, limits.keep_runs_bytes) == (3, 7_000_000)
    assert (DEMO.keep_runs, DEMO.keep_runs_bytes) == (20, 500_000_000)
    with pytest.raises(ValueError, match="TOKENLEARNER_DEMO_MAX_RUNS='-1': use a whole number"):
        Limits.current({"TOKENLEARNER_DEMO": "1", "TOKENLEARNER_DEMO_MAX_RUNS": "-1"})


# Jobs -------------------------------------------------------------------------------------


def test_four_sessions_pressing_start_at_once_start_one_job(tmp_path, fake_training):
    barrier, outcomes = threading.Barrier(4), []

    def press_start(index):
        barrier.wait()
        try:
            outcomes.append(start_job(ModelConfig(), SMALL, tmp_path, f"job{index}", tmp_path, LAPTOP).run.path.name)
        except JobError as error:
            outcomes.append(str(error))

    threads = [threading.Thread(target=press_start, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    started = [outcome for outcome in outcomes if outcome.startswith("job")]
    assert len(fake_training) == 1 and len(started) == 1, outcomes
    assert sum("already running" in outcome for outcome in outcomes) == 3
    assert active_job(tmp_path).path.name == started[0]


def test_two_trainings_into_one_folder_cannot_both_claim_it(tmp_path):
    barrier, outcomes = threading.Barrier(2), []

    def create():
        barrier.wait()
        try:
            RunDirectory(tmp_path / "same").create({"model": ModelConfig().to_dict()})
            outcomes.append("created")
        except RunError as error:
            outcomes.append(str(error))

    threads = [threading.Thread(target=create) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    refused = [outcome for outcome in outcomes if outcome != "created"]
    assert len(refused) == 1 and ("just taken by another run" in refused[0] or "not empty" in refused[0]), outcomes


@pytest.mark.parametrize("name", ["x" * 65, "x" * 300, "a\0b", ".hidden", "-flag", "a/b", "..", "a b", "**bold**",
                                  "[link](https://example.com)", "naïve", ""])
def test_unusable_run_names_are_refused_before_anything_is_touched(tmp_path, fake_training, name):
    with pytest.raises(JobError, match="is not a usable run name: use 1 to 64 letters"):
        start_job(ModelConfig(), SMALL, tmp_path / "runs", name, tmp_path, LAPTOP)
    assert not fake_training and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["a", "run-20261202-120000", "A_b-9", "download", "x" * 64])
def test_plain_names_are_accepted(tmp_path, fake_training, name):
    assert start_job(ModelConfig(), SMALL, tmp_path, name, tmp_path, LAPTOP).run.path == tmp_path / name


def test_the_job_gets_an_absolute_data_folder_that_cannot_read_as_a_flag(tmp_path, fake_training, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-data").mkdir()
    start_job(ModelConfig(), SMALL, tmp_path / "runs", "job", "-data", LAPTOP)
    assert f"--data-dir={tmp_path / '-data'}" in fake_training[0]
    assert f"--out={tmp_path / 'runs' / 'job'}" in fake_training[0]


@pytest.mark.parametrize("recipe, message", [
    (TrainConfig(epochs=6, limit=100), "6 epochs is over this instance's limit of 5"),
    (TrainConfig(epochs=5, limit=0), "trains on at most 2,000 images"),
    (TrainConfig(epochs=5, limit=2001), "trains on at most 2,000 images"),
])
def test_a_demo_refuses_jobs_beyond_its_limits_whatever_the_page_sent(tmp_path, fake_training, recipe, message):
    with pytest.raises(JobError, match=message):
        start_job(ModelConfig(), recipe, tmp_path, "job", tmp_path, DEMO)
    assert not fake_training


def test_a_demo_caps_the_validation_and_test_passes(tmp_path, fake_training, provisioned):
    start_job(ModelConfig(), TrainConfig(epochs=5, limit=2000), tmp_path / "runs", "job", provisioned, DEMO)
    command = fake_training[0]
    assert command[command.index("--eval-limit") + 1] == "1000"


VIDEO = preset("video-shapes")
SHAPES = DataChoice("moving-shapes", (250, 1000, 1000))


@pytest.mark.parametrize("config, recipe, data, message", [
    (VIDEO, TrainConfig(epochs=5), DataChoice("moving-shapes", (251, 10, 10)),
     "at most 2,000 images, and a clip of 8 frames counts as 8: set the training clips to 250 or fewer"),
    (VIDEO.replace(frames=16), TrainConfig(epochs=5), SHAPES, "set the training clips to 125 or fewer"),
    (VIDEO.replace(tubelet_frames=1, depth=12, placement=11), TrainConfig(epochs=1, batch_size=128), SHAPES,
     "a training step of 128 inputs of this model is 618 G MACs, over this instance's 160 G"),
    (VIDEO, TrainConfig(epochs=6), SHAPES, "6 epochs is over this instance's limit of 5"),
    (VIDEO, TrainConfig(epochs=1, limit=100), DataChoice(), "CIFAR-10 holds images and the model takes clips"),
])
def test_a_demo_counts_a_clip_as_its_frames_and_caps_a_steps_work(tmp_path, fake_training, config, recipe, data,
                                                                   message):
    with pytest.raises(JobError, match=message):
        start_job(config, recipe, tmp_path, "job", None, DEMO, data)
    assert not fake_training


def test_the_demos_step_cap_takes_every_image_model_the_train_pages_controls_make():
    from tokenlearner.ui import MAX_APP_DEPTH, MAX_APP_TOKENS

    largest = 0
    for tokenlearner, fuser, placement in itertools.product(("none", "v1", "v11"), (False, True),
                                                            range(MAX_APP_DEPTH + 1)):
        try:
            config = ModelConfig(depth=MAX_APP_DEPTH, tokenlearner=tokenlearner, num_tokens=MAX_APP_TOKENS,
                                 fuser=fuser, placement=placement)
        except ValueError:
            continue  # a combination the controls do not offer
        largest = max(largest, count(config).macs)
    assert 512 * largest <= DEMO.max_step_macs < 1.05 * 512 * largest, "the batch slider's largest, 512"


def test_a_video_job_draws_its_clips_without_a_data_folder_and_a_demo_caps_its_evaluation(tmp_path, fake_training):
    start_job(VIDEO, TrainConfig(epochs=5), tmp_path, "demo", None, DEMO, SHAPES)
    start_job(VIDEO, TrainConfig(epochs=5), tmp_path / "laptop", "laptop", None, LAPTOP, SHAPES)
    for command, clips in zip(fake_training, ("250,125,125", "250,1000,1000"), strict=True):
        assert command[command.index("--data") + 1] == "moving-shapes"
        assert command[command.index("--clips") + 1] == clips
        assert not any(word.startswith("--data-dir") for word in command)
    baseline = VIDEO.replace(frames=1, tubelet_frames=1)  # a clip's first frame is one image
    start_job(baseline, TrainConfig(epochs=5), tmp_path / "single", "single", None, DEMO,
              DataChoice("moving-shapes", (2000, 1000, 1000)))
    with pytest.raises(JobError, match="training on CIFAR-10 needs its folder"):
        start_job(ModelConfig(), SMALL, tmp_path / "cifar", "cifar", None, LAPTOP)


def test_a_demo_trains_only_on_the_operators_data_folder(tmp_path, fake_training, provisioned):
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "test_batch").write_bytes(b"")
    with pytest.raises(JobError, match="only on the CIFAR-10 folder its operator set up"):
        start_job(ModelConfig(), TrainConfig(epochs=1, limit=100), tmp_path / "runs", "job", other, DEMO)
    start_job(ModelConfig(), TrainConfig(epochs=1, limit=100), tmp_path / "runs", "job", provisioned, DEMO)
    assert len(fake_training) == 1


@pytest.fixture
def provisioned(tmp_path, monkeypatch) -> Path:
    """The data folder a demo's operator set up (its test batch is all `find_data_dir` looks for)."""
    folder = tmp_path / "provisioned"
    folder.mkdir()
    (folder / "test_batch").write_bytes(b"")
    monkeypatch.setenv("TOKENLEARNER_DATA_DIR", str(folder))
    return folder


def test_in_a_demo_only_the_starting_session_may_stop_the_job(tmp_path, fake_training, provisioned):
    owner = start_job(ModelConfig(), SMALL, tmp_path, "job", provisioned, DEMO).owner
    for stranger in (None, "", "0" * 32):
        assert not may_stop(tmp_path, stranger, DEMO)
        with pytest.raises(JobError, match="only the session that started this job can stop it"):
            stop_job(tmp_path, stranger, DEMO)
    assert not (tmp_path / "job" / "STOP").exists()
    assert may_stop(tmp_path, owner, DEMO)
    stop_job(tmp_path, owner, DEMO)
    assert (tmp_path / "job" / "STOP").exists()


def test_on_a_laptop_any_tab_may_stop_the_job(tmp_path, fake_training):
    start_job(ModelConfig(), SMALL, tmp_path, "job", tmp_path, LAPTOP)
    assert may_stop(tmp_path, None, LAPTOP)
    stop_job(tmp_path, None, LAPTOP)
    assert (tmp_path / "job" / "STOP").exists()


def finished_run(root: Path, name: str, size: int = 0, age: float = 0) -> Path:
    run = RunDirectory(root / name).create({"model": ModelConfig().to_dict()})
    run.set_status("finished")
    (run.path / "model.keras").write_bytes(b"\0" * size)
    (root / f".{name}.log").write_text("log")
    stamp = time.time() - age
    os.utime(run.path, (stamp, stamp))
    return run.path


def test_a_demo_keeps_its_newest_runs_within_count_and_bytes(tmp_path):
    for index in range(5):
        finished_run(tmp_path, f"run{index}", size=990_000, age=100 - index)  # run4 is the newest; 1 MB each
    running = finished_run(tmp_path, "training", age=1000)
    RunDirectory(running).set_status("running")  # this process: alive
    limits = Limits.current({"TOKENLEARNER_DEMO": "1", "TOKENLEARNER_DEMO_MAX_RUNS": "4",
                             "TOKENLEARNER_DEMO_MAX_RUNS_MB": "3"})
    assert tidy_runs(tmp_path, limits) == ["run0", "run1"]  # 3 MB left
    assert tidy_runs(tmp_path, limits, room_for_one_more=True) == []
    many = Limits.current({"TOKENLEARNER_DEMO": "1", "TOKENLEARNER_DEMO_MAX_RUNS": "2"})
    assert tidy_runs(tmp_path, many, room_for_one_more=True) == ["run2", "run3"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [".run4.log", ".training.log", "run4", "training"]


def test_a_laptop_keeps_every_run(tmp_path):
    for index in range(3):
        finished_run(tmp_path, f"run{index}", size=1_000_000)
    assert tidy_runs(tmp_path, LAPTOP) == []
    assert len(list(tmp_path.glob("run*"))) == 3


def test_what_a_killed_writer_left_half_written_is_swept_and_a_live_writers_file_kept(tmp_path):
    run = finished_run(tmp_path, "killed")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = run / f".model.{dead.pid}-{processes.identity(os.getpid())['start_ticks']}-0123456789ab.keras"
    stale.write_bytes(b"half")
    with atomic_path(run / "maps" / "epoch_001.npz") as live:  # this process is still writing it
        tidy_runs(tmp_path, LAPTOP)
        assert live.exists()
    assert not stale.exists() and (run / "model.keras").exists()
    assert remove_stale_temporaries(run) == []


def test_a_lock_naming_a_reused_pid_or_a_path_outside_the_runs_folder_is_no_job(tmp_path):
    (tmp_path / "job").mkdir()
    reused = {**processes.identity(), "start_ticks": 1}  # a live pid, but not the process that took the lock
    write_json(tmp_path / jobs.LOCK, {"run": "job", "process": reused})
    assert active_job(tmp_path) is None and last_job(tmp_path).path == tmp_path / "job"
    for escape in ("../elsewhere", str(tmp_path.parent), ".hidden"):
        write_json(tmp_path / jobs.LOCK, {"run": escape, "process": processes.identity()})
        assert active_job(tmp_path) is None and last_job(tmp_path) is None


def test_a_process_is_known_by_its_start_time_not_only_its_pid():
    me = processes.identity()
    assert processes.alive(me)
    assert not processes.alive({**me, "start_ticks": me["start_ticks"] + 1})
    assert not processes.alive({**me, "boot_id": "another boot"})
    assert processes.alive({"pid": os.getpid()})  # an older record: the pid alone
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    record = processes.identity(finished.pid)
    finished.wait()
    assert not processes.alive(record)
    assert not processes.alive(None) and not processes.alive({"pid": True})


def test_a_status_file_of_a_process_that_died_reads_as_failed_even_if_its_pid_is_taken_again(tmp_path):
    run = RunDirectory(tmp_path / "run").create({"model": ModelConfig().to_dict()})
    run.set_status("running")
    assert run.status()["state"] == "running"
    status = read_json(run.status_file)
    status["process"]["start_ticks"] -= 1  # as after a restart: same pid, another process
    write_json(run.status_file, status)
    assert run.status()["state"] == "failed"


# Downloads and data -----------------------------------------------------------------------


def test_a_demo_offers_no_download(monkeypatch):
    with pytest.raises(JobError, match="provided by its operator"):
        jobs.start_download(DEMO)


def test_one_download_at_a_time_on_the_machine(tmp_path, monkeypatch):
    import fcntl

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    lock = datasets_dir() / "cifar-10-download.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(JobError, match="being downloaded already"):
            jobs.start_download(LAPTOP)


def test_a_download_that_waited_for_another_finds_the_data_and_fetches_nothing(tmp_path, monkeypatch):
    from tokenlearner.data import DOWNLOAD_NAME, FOLDER, download

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    present = datasets_dir() / DOWNLOAD_NAME / FOLDER
    present.mkdir(parents=True)
    (present / "test_batch").write_bytes(b"")
    assert download() == present


def test_with_a_read_only_home_the_data_goes_where_keras_puts_it_and_is_found_there(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir(mode=0o500)
    monkeypatch.setattr(os, "access", lambda path, mode: not str(path).startswith(str(home)))  # root may write anyway
    monkeypatch.setattr("tokenlearner.data.tempfile.gettempdir", lambda: str(tmp_path / "tmp"))
    monkeypatch.setenv("KERAS_HOME", str(home / ".keras"))
    monkeypatch.delenv("TOKENLEARNER_DATA_DIR", raising=False)
    fallback = tmp_path / "tmp" / ".keras" / "datasets"
    assert datasets_dir() == fallback
    with pytest.raises(DataError, match=f"the Keras cache: {fallback}"):
        find_data_dir()
    unpacked = fallback / "cifar-10-batches-py-target" / "cifar-10-batches-py"
    unpacked.mkdir(parents=True)
    (unpacked / "test_batch").write_bytes(b"")
    assert find_data_dir() == unpacked


def test_a_file_too_large_to_be_a_batch_is_not_read(tmp_path):
    huge = tmp_path / "data_batch_1"
    with open(huge, "wb") as file:
        file.truncate(65 * 2**20)  # sparse: takes no disk
    with pytest.raises(DataError, match="data_batch_1 is 65 MB: a CIFAR-10 batch is about 31 MB"):
        read_batch(huge)


# Uploads ----------------------------------------------------------------------------------


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_demo_refuses_uploads_above_its_lower_pixel_cap(monkeypatch):
    big = png(Image.new("L", (3000, 3000)))  # 9 MP
    assert read_image(big, LAPTOP.max_upload_pixels).size == (272, 272)  # shrunk by 11, to a side of 256 or more
    monkeypatch.setenv("TOKENLEARNER_DEMO", "1")
    with pytest.raises(ImageError, match="the limit is 8 MP"):
        read_image(big)


MEMORY_PROBE = """
import resource, sys
from tokenlearner.images import read_image, to_model_input
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
to_model_input(read_image(data, 16_000_000))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


@pytest.mark.parametrize("kind", ["16-bit", "rgba"])
def test_a_small_upload_that_decodes_large_costs_about_its_decoded_size(tmp_path, kind):
    """The issue's 38 kB and 69 kB PNGs raised peak memory by 398 and 305 MB: converted at
    full size, in float64. Shrunk first, each costs its decoded size (32 and 64 MB) and
    little more; the bound leaves room for allocator noise, far below the old cost."""
    pixels = np.full((4000, 4000), 1000, np.uint16) if kind == "16-bit" else np.full((4000, 4000, 4), 99, np.uint8)
    path = tmp_path / "upload.png"
    Image.fromarray(pixels).save(path)
    assert path.stat().st_size < 100_000
    rise_mb = int(subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path)], cwd=REPO, capture_output=True,
                                 text=True, check=True).stdout)
    assert rise_mb < 100, f"peak memory rose by {rise_mb} MB"


def test_a_large_jpeg_is_decoded_at_a_fraction_of_its_size():
    buffer = io.BytesIO()
    Image.new("RGB", (4000, 3000), (200, 10, 10)).save(buffer, format="JPEG")
    image = read_image(buffer.getvalue(), LAPTOP.max_upload_pixels)
    assert image.size == (500, 375)  # decoded at 1/8 scale, still over the 256-pixel preview


# The kernel cache -------------------------------------------------------------------------


def test_a_demo_never_compiles_inside_a_request(tmp_path):
    with pytest.raises(native.BuildError, match="build them first"):
        native.build(tmp_path, compile=False)
    assert list(tmp_path.iterdir()) == []
    environment = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "empty-cache"), "TOKENLEARNER_DEMO": "1"}
    described = subprocess.run([sys.executable, "-c", "from tokenlearner import native; print(native.describe())"],
                               cwd=REPO, env=environment, capture_output=True, text=True, check=True).stdout
    assert "Keras' dropout, GELU, LayerNorm and attention (native kernels not built:" in described
    assert "build-kernels" in described and not (tmp_path / "empty-cache" / "tokenlearner").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file another user's needs root")
@pytest.mark.parametrize("change", ["another owner", "group-writable", "world-writable folder"])
def test_a_cached_library_that_someone_else_could_have_written_is_refused(tmp_path, change):
    cache = tmp_path / "cache"
    library = native.library_path(cache)
    cache.mkdir(mode=0o700)
    library.write_bytes(b"not really a library")
    library.chmod(0o755)
    if change == "another owner":
        os.chown(library, 12345, 12345)
    elif change == "group-writable":
        library.chmod(0o775)
    else:
        cache.chmod(0o777)
    with pytest.raises(native.BuildError, match="writable by others, so it is not loaded"):
        native.build(cache)


def test_a_new_kernel_cache_is_private(tmp_path):
    if native.load() is None:
        pytest.skip("no compiler here")
    native.build(tmp_path / "cache")
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700


# The app ----------------------------------------------------------------------------------


def test_the_checkpoints_folder_given_twice_lists_each_checkpoint_once():
    from tokenlearner.runs import CHECKPOINTS_DIR

    once, _ = find_runs(CHECKPOINTS_DIR)
    twice, _ = find_runs(CHECKPOINTS_DIR, Path(os.path.relpath(CHECKPOINTS_DIR)))
    assert [run.name for run in twice] == [run.name for run in once] and len(once) == len([path for path in CHECKPOINTS_DIR.iterdir() if path.is_dir()])
