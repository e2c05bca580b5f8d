"""experiment --engine ray: a real local Ray, real training at reduced size."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from cifar_files import make_cifar_folder
from conftest import REPO, tokenlearner_command
from test_experiment import GRID

from tokenlearner.distributed import _changed_files

pytest.importorskip("ray")


def _metrics(out, run):
    summary = json.loads((out / run / "metrics.json").read_text())
    epochs = [json.loads(line) for line in (out / run / "metrics.jsonl").read_text().splitlines()]
    return summary, epochs


# GRID, one seed, with a video model on moving shapes in place of its baseline: clips are drawn
# on each worker from the run's seed, and a grid's runs may train on different data.
GRID_WITH_CLIPS = {**GRID, "seeds": [0], "configs": {
    "clips": {"preset": "video-shapes", "model": {"frames": 4, "depth": 1, "placement": 1, "num_tokens": 2},
              "data": {"name": "moving-shapes", "clips": [32, 16, 16]}},
    "tokens": GRID["configs"]["tokens"]}}


@pytest.mark.slow
def test_a_grid_on_ray_gives_the_in_process_metrics_and_retries_a_run_whose_worker_was_killed(tmp_path):
    data = make_cifar_folder(tmp_path / "cifar-10-batches-py", rows_per_batch=16, test_rows=20)
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(GRID_WITH_CLIPS))
    in_process, on_ray = tmp_path / "in_process", tmp_path / "on_ray"

    local = tokenlearner_command("experiment", str(grid), "--out", str(in_process), "--data-dir", str(data))
    assert local.returncode == 0, local.stderr

    driver = subprocess.Popen([sys.executable, "-m", "tokenlearner", "experiment", str(grid), "--out", str(on_ray),
                               "--data-dir", str(data), "--engine", "ray", "--cpus-per-run", "1"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    status_file, killed = on_ray / "tokens" / "seed_0" / "status.json", None
    deadline = time.time() + 240
    while killed is None and driver.poll() is None and time.time() < deadline:
        try:
            status = json.loads(status_file.read_text())
        except (FileNotFoundError, ValueError):
            time.sleep(0.05)
            continue
        assert status["pid"] == driver.pid, "the folder's status names the driver, which writes it"
        killed = status["worker"]["pid"]
        os.kill(killed, signal.SIGKILL)
    stdout, stderr = driver.communicate(timeout=240)
    assert driver.returncode == 0, stderr
    assert killed is not None, "the run's worker was never seen"
    assert "[2/2] tokens seed 0: failed" in stdout and "training it again (attempt 2 of 3)" in stdout
    assert (on_ray / "tokens" / "seed_0.incomplete-1").is_dir(), "the killed attempt is kept aside"

    assert json.loads((on_ray / "clips" / "seed_0" / "config.json").read_text())["data"]["kind"] == "moving_shapes"
    for run in ("clips/seed_0", "tokens/seed_0"):
        (ours, our_epochs), (theirs, their_epochs) = _metrics(on_ray, run), _metrics(in_process, run)
        for key in ("test_top1", "test_top5", "test_loss", "best_val_top1"):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-6), (run, key)
        for key in ("loss", "top1", "val_loss", "val_top1"):
            assert our_epochs[0][key] == pytest.approx(their_epochs[0][key], abs=1e-6), (run, key)
        assert sorted(p.name for p in (on_ray / run).rglob("*")) == sorted(p.name for p in (in_process / run).rglob("*"))
        record = json.loads((on_ray / run / "config.json").read_text())
        assert record["command"][1:3] == ["experiment", str(grid)] and record["worker"]["pid"] > 0
        assert json.loads((on_ray / run / "status.json").read_text())["state"] == "finished"
    assert (on_ray / "results.md").read_text() == (in_process / "results.md").read_text()



@pytest.mark.slow
def test_a_runs_stop_file_cancels_that_run_on_ray(tmp_path):
    data = make_cifar_folder(tmp_path / "cifar-10-batches-py", rows_per_batch=16, test_rows=20)
    grid, out = tmp_path / "grid.json", tmp_path / "out"
    grid.write_text(json.dumps({**GRID, "seeds": [0], "train": {"epochs": 50, "batch_size": 32},
                                "configs": {"tokens": GRID["configs"]["tokens"]}}))
    driver = subprocess.Popen([sys.executable, "-m", "tokenlearner", "experiment", str(grid), "--out", str(out),
                               "--data-dir", str(data), "--engine", "ray"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = out / "tokens" / "seed_0"
    deadline = time.time() + 240
    while not (run / "metrics.jsonl").exists() and driver.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    (run / "STOP").write_text("stop\n")  # what the app's Stop button writes
    stdout, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 0, stderr
    assert "[1/1] tokens seed 0: stopped; the same command trains it again from the start" in stdout
    assert json.loads((run / "status.json").read_text())["state"] == "stopped"
    assert len((run / "metrics.jsonl").read_text().splitlines()) < 50 and not (out / "results.md").exists()

# Two samples that learn (each class is a colour of its own), then one whose learning rate leaves it where it
# started: ASHA's cutoff at epoch 1 is the median of the samples that reached it before.
SEARCH = {"seed": 3, "train": {"epochs": 2, "batch_size": 16},
          "space": {"model": {"depth": [1], "placement": [1], "num_tokens": [1, 2, 4, 8]},
                    "train": {"learning_rate": [0.003, 0.000001]}},
          "asha": {"grace_epochs": 1, "reduction_factor": 2}}


@pytest.mark.slow
def test_a_search_stops_poor_samples_early_and_ends_with_a_front(tmp_path):
    from tokenlearner.search import read_space

    data = make_cifar_folder(tmp_path / "cifar-10-batches-py", rows_per_batch=32, test_rows=20, colours=True)
    space_file, out = tmp_path / "space.json", tmp_path / "out"
    space_file.write_text(json.dumps(SEARCH))
    samples = read_space(space_file).samples(3)
    assert [run.train.learning_rate for run in samples] == [0.003, 0.003, 0.000001]
    # Two CPUs a sample on two cores: one at a time, in order, so ASHA sees them in that order.
    command = ["experiment", str(space_file), "--out", str(out), "--data-dir", str(data), "--engine", "ray",
               "--cpus-per-run", "2", "--search", "asha", "--samples", "3"]
    result = tokenlearner_command(*command, timeout=400)
    assert result.returncode == 0, result.stderr
    states = {run.name: json.loads((out / run.name / "seed_3" / "status.json").read_text()) for run in samples}
    early = [name for name, status in states.items() if status["state"] == "stopped early"]
    assert "sample-003" in early, (states, result.stdout)
    for name in early:
        assert f"{name} seed 3: stopped early by ASHA after epoch 1" in result.stdout
        assert len((out / name / "seed_3" / "metrics.jsonl").read_text().splitlines()) == 1
        assert states[name]["worker"]["cpus"] == 2, "where it trained is kept"
    finished = [name for name, status in states.items() if status["state"] == "finished"]
    assert "sample-001" in finished
    for name in finished:
        assert json.loads((out / name / "seed_3" / "metrics.json").read_text())["test_top1"] is not None
    front = (out / "front.md").read_text()
    on_front = [line.split(" | ")[0].strip("| ") for line in front.split("\n\n")[0].splitlines()[2:]]
    assert on_front and set(on_front) <= set(finished), front
    assert "3 samples: " in front and (out / "front.png").read_bytes().startswith(b"\x89PNG")
    assert len((out / "search.csv").read_text().splitlines()) == 4
    plan = json.loads((out / "grid.json").read_text())
    assert plan["search"]["knobs"] == {"model": ["depth", "placement", "num_tokens"], "train": ["learning_rate"]}

    again = tokenlearner_command(*command, timeout=120)  # every sample ended: nothing to train, the same front
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already, skipped") == 3 and (out / "front.md").read_text() == front


def test_only_new_or_changed_files_are_sent_and_temporaries_never(tmp_path):
    (tmp_path / "maps").mkdir()
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "maps" / "epoch_000.npz").write_bytes(b"maps")
    (tmp_path / ".metrics.123-456-abcdefabcdef.jsonl").write_text("half a file")
    sent = {}
    assert dict(_changed_files(tmp_path, sent)) == {"config.json": b"{}", "maps/epoch_000.npz": b"maps"}
    assert list(_changed_files(tmp_path, sent)) == []
    (tmp_path / "config.json").write_text('{"a": 1}')
    assert dict(_changed_files(tmp_path, sent)) == {"config.json": b'{"a": 1}'}
    assert list(_changed_files(tmp_path / "not yet made", {})) == []


@pytest.mark.parametrize("flags, message", [
    (["--address", "127.0.0.1:6379"], "--address, --cpus-per-run and --search go with --engine ray"),
    (["--cpus-per-run", "2"], "--address, --cpus-per-run and --search go with --engine ray"),
    (["--engine", "ray", "--cpus-per-run", "0"], "--cpus-per-run 0: a run needs at least 1 CPU"),
])
def test_ray_flags_are_checked_before_anything_starts(tmp_path, flags, message):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(GRID))
    result = tokenlearner_command("experiment", str(grid), "--out", str(tmp_path / "out"), *flags)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def two_node_cluster(tmp_path):
    """A Ray head and a second node on this machine, one CPU each, the second with its own
    temporary folder as another machine would have, both with token authentication (which
    a second node needs here) and each reading the data from its own TOKENLEARNER_DATA_DIR.
    `ray stop --force` at the end stops every Ray on the machine: this file's tests run one
    after another (pytest-xdist keeps a file on one worker)."""
    import tempfile

    data = make_cifar_folder(tmp_path / "cifar-10-batches-py", rows_per_batch=16, test_rows=20)
    ray_command = os.path.join(os.path.dirname(sys.executable), "ray")
    environment = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
                   "TOKENLEARNER_DATA_DIR": str(data)}
    address = f"127.0.0.1:{_free_port()}"
    second_temp = tempfile.mkdtemp(prefix="ray-second-", dir="/tmp")  # short: Ray's socket paths have a limit
    nodes = [[ray_command, "start", "--head", f"--port={address.split(':')[1]}", "--num-cpus=1",
              "--include-dashboard=false", "--disable-usage-stats"],
             [ray_command, "start", f"--address={address}", "--num-cpus=1", f"--temp-dir={second_temp}"]]
    try:
        for node in nodes:  # started from elsewhere, so their workers get the package from the driver
            started = subprocess.run(node, cwd="/tmp", env=environment, capture_output=True, text=True, timeout=120)
            assert started.returncode == 0, started.stderr
        yield address, environment
    finally:
        subprocess.run([ray_command, "stop", "--force"], env=environment, capture_output=True, timeout=120)


@pytest.mark.slow
def test_a_grid_on_two_nodes_comes_back_to_out_and_resumes_after_the_driver_is_killed(tmp_path, two_node_cluster):
    from tokenlearner.runs import RunDirectory

    address, environment = two_node_cluster
    grid, out = tmp_path / "grid.json", tmp_path / "out"
    grid.write_text(json.dumps(GRID))
    command = [sys.executable, "-m", "tokenlearner", "experiment", str(grid), "--out", str(out), "--engine", "ray",
               "--address", address]
    driver = subprocess.Popen(command, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    deadline = time.time() + 240
    def finished():
        return any('"finished"' in path.read_text() for path in out.glob("*/seed_*/status.json"))

    while not finished() and driver.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    driver.kill()
    driver.communicate(timeout=60)
    states = {path.parent.relative_to(out).as_posix(): RunDirectory(path.parent).status()["state"]
              for path in out.glob("*/seed_*/status.json")}
    assert "finished" in states.values() and set(states.values()) <= {"finished", "failed"}, states

    resumed = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    finished_before = [run for run, state in states.items() if state == "finished"]
    assert resumed.stdout.count("finished already, skipped") == len(finished_before)
    if len(finished_before) < len(states):
        assert "an unfinished run was there, moved to" in resumed.stdout
    nodes = set()
    for run in ("baseline/seed_0", "tokens/seed_0", "baseline/seed_1", "tokens/seed_1"):
        status = json.loads((out / run / "status.json").read_text())
        assert status["state"] == "finished" and json.loads((out / run / "metrics.json").read_text())["test_top1"] >= 0
        assert status["worker"]["cpus"] == 1
        nodes.add(status["worker"]["node_id"])
    assert len(nodes) == 2, "both nodes trained runs, and the runs came back from both"
    assert "| baseline | 2/2 |" in (out / "results.md").read_text()


def test_without_ray_the_engine_says_how_to_install_it(monkeypatch):
    from tokenlearner.distributed import RayUnavailable, connect

    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray imports
    with pytest.raises(RayUnavailable, match="pip install -r requirements-ray.txt"):
        connect(None)
