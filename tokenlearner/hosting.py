"""Running the explorer for the public: what a host does once when it is set up
(`provision`), and the server with the first visitor's wait taken beforehand (`serve`).

A fresh Streamlit server answers its health check before it has run any page, so the
first visitor would wait for TensorFlow's import, the model's load and its first call
inside their request. `serve` does that work before the server starts.
docs/hosting.md says how each host uses these.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from tokenlearner.data import DataError, download, find_data_dir, load_cifar10
from tokenlearner.limits import Limits

REPOSITORY = Path(__file__).resolve().parent.parent


def provision(data_dir: str | os.PathLike | None = None, fetch: bool = False,
              report=print) -> Path:
    """Everything a public instance needs before its first visitor: the native kernels
    compiled (a demo never compiles inside a request), CIFAR-10 in place and readable
    (downloaded into the Keras cache with `fetch`, else `data_dir` or where
    `find_data_dir` looks), and the shipped checkpoints loading. Reports each to
    `report` and returns the CIFAR-10 folder; a `DataError` or `BuildError` says what is
    missing."""
    from tokenlearner import native
    from tokenlearner.runs import find_checkpoints

    native.build()
    report(f"the model runs {native.describe()}")
    folder = (download() if fetch else find_data_dir(data_dir)).resolve()
    data = load_cifar10(folder, train_images=False)
    report(f"CIFAR-10: {len(data.train_labels):,} training and {len(data.test_labels):,} test images in {folder}")
    checkpoints, problems = find_checkpoints()
    if problems:
        raise DataError("shipped checkpoints that cannot be read: " + "; ".join(problems))
    for info in checkpoints:
        info.directory.load_model()
    report(f"{len(checkpoints)} shipped checkpoints load")
    return folder


_PROVISIONING = threading.Lock()
_provisioning: subprocess.Popen | None = None


def provision_in_background() -> bool:
    """For hosts with no build step (Streamlit Community Cloud): where this demo has no
    CIFAR-10 yet, run `provision --download` in its own process, once per server process
    (concurrent downloads wait for each other: `data.download`). True while it runs."""
    global _provisioning
    with _PROVISIONING:
        if _provisioning is None:
            try:
                find_data_dir()
                return False
            except DataError:
                _provisioning = subprocess.Popen(
                    [sys.executable, "-m", "tokenlearner", "provision", "--download"], cwd=REPOSITORY,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                    start_new_session=True)
        return _provisioning.poll() is None


def warm_up() -> None:
    """What the first visitor's pages would otherwise do inside their request: import
    TensorFlow, load the kernels, read CIFAR-10 into the app's cache, load the model the
    pages show first and run it once. Anything missing is left for the pages to report."""
    import numpy as np

    from tokenlearner import native, ui
    from tokenlearner.gallery import showcase
    from tokenlearner.model import predict_with_maps
    from tokenlearner.runs import find_runs

    native.load()
    try:
        ui.cifar10(str(find_data_dir(None)))
    except DataError:
        pass
    runs, _ = find_runs()
    with_model = [run for run in runs if run.has_model]
    first = showcase(with_model) or (with_model[0] if with_model else None)
    if first is not None:
        model = ui.load_run_model(str(first.directory.model_file), first.directory.model_file.stat().st_mtime)
        predict_with_maps(model, np.zeros((1, *first.config.input_shape), np.uint8))


def serve(streamlit_args: list[str]) -> None:
    """`streamlit run app.py STREAMLIT_ARGS` (Streamlit's own command line), in a demo
    after `warm_up`: the server answers its health check only once the first visitor's
    page has nothing heavy left to do, and hosts wait for that check before sending
    anyone. On a laptop the first page loads what it needs, as `streamlit run` does."""
    from streamlit.web import cli as streamlit_cli

    if Limits.current().demo:
        _warm_up_quietly()
        # app.py hides error details too, but a link opened first on a fresh server runs its
        # page without app.py (Streamlit's older pages/ navigation): hide them from the start.
        streamlit_args = ["--client.showErrorDetails", "none", *streamlit_args]
    streamlit_cli.main(["run", str(REPOSITORY / "app.py"), *streamlit_args], prog_name="streamlit")


def _warm_up_quietly() -> None:
    try:
        warm_up()
    except Exception as error:  # the pages report the same problem to whoever opens them
        print(f"warm-up stopped: {type(error).__name__}: {error}", flush=True)
