"""Training jobs started from the app: each is the command line's `train` in its own
process, writing its run directory; the app keeps only a small lock file, so a reload
or a second tab finds the running job again, and a second job is refused while one runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tokenlearner.config import ModelConfig, TrainConfig
from tokenlearner.files import read_json, write_json
from tokenlearner.runs import RunDirectory, process_alive

LOCK = ".training-job.json"
REPOSITORY = Path(__file__).resolve().parent.parent


class JobError(RuntimeError):
    """A job cannot be started; the message says why."""


# The recipe fields the Train page has controls for; a preset brings the others along.
RECIPE_CONTROLS = ("epochs", "batch_size", "learning_rate", "seed", "limit")


def recipe_from_controls(base: TrainConfig, **controls) -> TrainConfig:
    """`base` (a preset's recipe) with the page's controls applied; a warm-up that fewer
    epochs leave no room for is shortened."""
    if set(controls) - set(RECIPE_CONTROLS):
        raise ValueError(f"the Train page controls only {', '.join(RECIPE_CONTROLS)}")
    return base.replace(**controls, warmup_epochs=min(base.warmup_epochs, controls.get("epochs", base.epochs) - 1))


def recipe_beyond_controls(recipe: TrainConfig) -> dict:
    """The fields of `recipe` that the page has no control for and that differ from the
    keras.io recipe, so the page can say what a preset carries along."""
    keras_io = TrainConfig()
    return {name: value for name, value in recipe.to_dict().items()
            if name not in RECIPE_CONTROLS and value != getattr(keras_io, name)}


def active_job(root: str | os.PathLike) -> RunDirectory | None:
    """The run directory of the job still running under `root`, if any."""
    try:
        lock = read_json(Path(root) / LOCK)
    except ValueError:
        return None
    run = RunDirectory(lock["run"])
    if not process_alive(lock.get("pid")) or run.status().get("state") in ("finished", "stopped", "failed"):
        return None
    return run


def last_job(root: str | os.PathLike) -> RunDirectory | None:
    """The run directory of the most recent job under `root`, running or not."""
    try:
        return RunDirectory(read_json(Path(root) / LOCK)["run"])
    except (ValueError, KeyError):
        return None


def start_job(model: ModelConfig, train: TrainConfig, root: str | os.PathLike, name: str,
              data_dir: str) -> RunDirectory:
    """Start `python -m tokenlearner train` for the configs in `root/name`; `JobError` if a
    job is running or the name is taken."""
    from tokenlearner.cli import config_flags

    root = Path(root)
    running = active_job(root)
    if running is not None:
        raise JobError(f"a training job is already running ({running.path.name}): stop it or wait for it to finish")
    if not name or "/" in name or name.startswith("."):
        raise JobError(f"{name!r} is not a usable run name: use letters, digits, '-' and '_'")
    run = RunDirectory(root / name)
    if run.path.exists():
        raise JobError(f"a run named {name!r} exists already: choose another name")
    root.mkdir(parents=True, exist_ok=True)
    log = open(root / f".{name}.log", "wb")  # noqa: SIM115  (handed to the child process)
    with log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tokenlearner", "train", "--out", str(run.path.resolve()), "--data-dir", data_dir,
             *config_flags(model, train)],
            cwd=REPOSITORY, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    write_json(root / LOCK, {"pid": process.pid, "run": str(run.path.resolve())})
    return run


def job_log(run: RunDirectory) -> str:
    """The last lines the job printed (its errors, when it failed before writing a status)."""
    path = run.path.parent / f".{run.path.name}.log"
    return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def start_download(root: str | os.PathLike) -> subprocess.Popen:
    """`python -m tokenlearner download` in its own process, its output in root/.download.log."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".download.log", "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "tokenlearner", "download"], cwd=REPOSITORY, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
