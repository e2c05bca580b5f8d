"""The one tested way to host the demo: the Dockerfile's steps run here as far as this
machine allows (no Docker daemon: its provisioning command on the shared CIFAR-10 instead
of the download, and its server command), and the rehearsal at reduced size."""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from conftest import REPO, tokenlearner_command

from tokenlearner.app_server import wait_for_health
from tokenlearner.runs import CHECKPOINTS_DIR

DOCKERFILE = (REPO / "Dockerfile").read_text()


def instructions(keyword: str) -> list[str]:
    """The Dockerfile's instructions of one kind, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line[len(keyword) + 1:].strip() for line in joined.splitlines() if line.startswith(keyword + " ")]


def test_the_container_runs_as_a_user_in_demo_mode_with_what_packages_txt_and_requirements_txt_name():
    users = instructions("USER")
    assert users and users[-1] not in ("root", "0"), "the server must not run as root"
    environment = " ".join(instructions("ENV"))
    assert "TOKENLEARNER_DEMO=1" in environment and "TOKENLEARNER_RUNS_DIR=/home/" in environment
    runs = " ".join(instructions("RUN"))
    assert "packages.txt apt-get install" in runs and "pip install --no-cache-dir -r /tmp/requirements.txt" in runs
    assert (REPO / "packages.txt").read_text().split() == ["g++"]
    assert DOCKERFILE.index("USER explorer") < DOCKERFILE.index("RUN python -m tokenlearner provision"), \
        "provisioned as the user who serves, so the kernels and data land in that user's caches"


def test_the_dockerfiles_provisioning_runs_here_on_the_shared_sample(cifar_dir, tmp_path):
    """`docker build` runs `provision --download`; here the download cannot happen, so the
    same command runs on the shared sample, with a fresh kernel cache as in a new image."""
    provisioning = next(command for command in instructions("RUN") if "tokenlearner provision" in command)
    command = shlex.split(provisioning.replace("--download", f"--data-dir {cifar_dir}"))
    assert command[:3] == ["python", "-m", "tokenlearner"]
    environment = {**os.environ, "TOKENLEARNER_DEMO": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = tokenlearner_command(*command[3:], env=environment, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "native dropout, GELU, LayerNorm and attention kernels" in result.stdout
    shipped = len([path for path in CHECKPOINTS_DIR.iterdir() if path.is_dir()])
    assert f"{shipped} shipped checkpoints load" in result.stdout and "ready:" in result.stdout
    assert list((tmp_path / "cache" / "tokenlearner" / "native").glob("kernels-*.so"))


def test_provisioning_names_what_is_missing(tmp_path):
    result = tokenlearner_command("provision", "--data-dir", str(tmp_path / "none"), timeout=300)
    assert result.returncode == 2 and result.stderr.startswith("error: no CIFAR-10 found"), result.stderr


def test_the_dockerfiles_server_command_serves_the_app(tmp_path):
    command = shlex.split(instructions("CMD")[0].replace('"$PORT"', "$PORT"))
    port = 28000 + os.getpid() % 1000
    command = [str(port) if part == "$PORT" else part for part in command]
    command = [part if part != "0.0.0.0" else "127.0.0.1" for part in command]
    environment = {**os.environ, "TOKENLEARNER_DEMO": "1", "TOKENLEARNER_RUNS_DIR": str(tmp_path / "runs")}
    server = subprocess.Popen([sys.executable, *command[1:]], cwd=REPO, env=environment, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        assert wait_for_health(f"http://127.0.0.1:{port}", server, timeout=120), "the server did not come up"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_the_rehearsal_runs_small_and_starts_one_job_from_simultaneous_starts(cifar_dir, tmp_path):
    chromium = "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.skip("no Chromium here: install Debian's chromium package (apt-get install chromium)")
    pytest.importorskip("playwright", reason="pip install playwright (requirements-dev.txt)")
    result = tokenlearner_command("rehearse", "--sessions", "2", "--seconds", "8", "--train-images", "2000",
                                  "--test-images", "500", "--data-dir", str(cifar_dir), "--work", str(tmp_path),
                                  "--chromium", chromium, "--json", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout)
    assert measured["simultaneous_starts"] == 2 and measured["jobs_started_by_simultaneous_starts"] == 1
    assert measured["unexpected_errors"] == []
    assert measured["first_overlay_s"] > 0 and measured["server_peak_pss_mb"] > 0 and measured["visits"] >= 2
    assert not list(tmp_path.glob("runs-*")), "the rehearsal's runs are removed"


def test_a_full_size_folder_is_made_in_the_official_format_from_a_sample(cifar_dir, tmp_path):
    from tokenlearner.data import load_cifar10
    from tokenlearner.rehearsal import make_full_size_folder

    folder = make_full_size_folder(cifar_dir, tmp_path / "cifar-10-batches-py", train_images=1000, test_images=300)
    data = load_cifar10(folder)
    assert data.train_images.shape == (1000, 32, 32, 3) and data.test_images.shape == (300, 32, 32, 3)
    sample = load_cifar10(cifar_dir)
    assert set(data.train_labels) <= set(sample.train_labels) and data.class_names == sample.class_names
    # Pixels as raw bytes, as in the sample and the official batches, not as text.
    assert (folder / "test_batch").stat().st_size < 1.05 * 300 * 3072
    modified = (folder / "test_batch").stat().st_mtime_ns
    make_full_size_folder(cifar_dir, folder, train_images=1000, test_images=300)
    assert (folder / "test_batch").stat().st_mtime_ns == modified, "made once, then reused"


def test_a_demo_without_data_fetches_it_once_in_the_background(monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    import tokenlearner.hosting

    started = []
    monkeypatch.setattr(tokenlearner.hosting, "provision_in_background", lambda: started.append(1) or True)
    monkeypatch.setenv("TOKENLEARNER_DEMO", "1")
    test = AppTest.from_file("../app.py", default_timeout=60).run()
    assert not test.exception
    assert "still being set up" in test.info[0].value and started


def test_provisioning_in_the_background_is_not_started_where_the_data_is(cifar_dir, monkeypatch):
    import tokenlearner.hosting

    launched = []
    monkeypatch.setattr(tokenlearner.hosting.subprocess, "Popen", lambda *args, **kwargs: launched.append(args))
    monkeypatch.setattr(tokenlearner.hosting, "_provisioning", None)
    monkeypatch.setenv("TOKENLEARNER_DATA_DIR", str(cifar_dir))
    assert tokenlearner.hosting.provision_in_background() is False and not launched


def test_the_warm_up_loads_what_the_first_page_shows(explorer_runs, monkeypatch):
    from tokenlearner import hosting, ui

    loaded = []
    original = ui.load_run_model
    monkeypatch.setattr(ui, "load_run_model", lambda path, modified: loaded.append(path) or original(path, modified))
    hosting.warm_up()
    assert loaded == [str(explorer_runs / "model.keras")]


@pytest.fixture
def explorer_runs(tmp_path, monkeypatch):
    from tokenlearner import ModelConfig, build_model
    from tokenlearner.runs import RunDirectory

    monkeypatch.setattr("tokenlearner.runs.CHECKPOINTS_DIR", tmp_path / "no-checkpoints")
    monkeypatch.setenv("TOKENLEARNER_RUNS_DIR", str(tmp_path / "runs"))
    run = RunDirectory(tmp_path / "runs" / "only").create({"model": ModelConfig().to_dict()})
    run.save_model(build_model(ModelConfig()))
    run.set_status("finished")
    return run.path


def test_serve_passes_streamlits_flags_through(monkeypatch):
    from tokenlearner import cli

    received = []
    monkeypatch.setattr("tokenlearner.hosting.serve", received.append)
    assert cli.main(["serve", "--server.port", "9999", "--server.headless", "true"]) == 0
    assert received == [["--server.port", "9999", "--server.headless", "true"]]
    with pytest.raises(SystemExit):
        cli.main(["flops", "--server.port", "1"])


def test_a_demo_server_hides_error_details_from_its_first_request(monkeypatch):
    import streamlit.web.cli

    from tokenlearner import hosting

    started = []
    monkeypatch.setattr(hosting, "warm_up", lambda: None)
    monkeypatch.setattr(streamlit.web.cli, "main", lambda args, prog_name: started.append(args))
    monkeypatch.setenv("TOKENLEARNER_DEMO", "1")
    hosting.serve(["--server.port", "9999"])
    assert started[0][2:] == ["--client.showErrorDetails", "none", "--server.port", "9999"]
    monkeypatch.setenv("TOKENLEARNER_DEMO", "0")
    hosting.serve([])
    assert started[1][2:] == []
