"""Training jobs started from the app: each is the command line's `train` in its own
process, writing its run directory; the app keeps only a small lock file, so a reload
or a second tab finds the running job again, and a second job is refused while one runs.

Every session of the app runs on its own thread and a host may run several app
processes, so the check for a running job, the start and the lock file's update happen
under one inter-process lock (`flock`). The limits of `limits.Limits` are enforced here,
not only by the page's widgets.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tokenlearner import processes
from tokenlearner.config import ModelConfig, TrainConfig
from tokenlearner.datasets import DataChoice
from tokenlearner.files import exclusive, read_json, remove_stale_temporaries, write_json
from tokenlearner.flags import config_flags
from tokenlearner.flops import count
from tokenlearner.limits import Limits
from tokenlearner.runs import RunDirectory

LOCK = ".training-job.json"
MUTEX = ".training-job.lock"
REPOSITORY = Path(__file__).resolve().parent.parent
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
JOB_NICENESS = 10


class JobError(RuntimeError):
    """A job cannot be started or stopped; the message says why."""


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


def check_run_name(name: str) -> None:
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name):
        raise JobError(f"{name!r} is not a usable run name: use 1 to 64 letters, digits, '-' and '_', "
                       "starting with a letter or digit")


def within_limits(model_config: ModelConfig, recipe: TrainConfig, data: DataChoice,
                  limits: Limits) -> tuple[TrainConfig, DataChoice]:
    """`recipe` and `data` as a job may run them under `limits`: a `JobError` for more
    epochs, training images or MACs per step than they allow, a clip of a video model
    counting as its frames' images; validation and test passes are capped to theirs."""
    if recipe.epochs > limits.max_epochs:
        raise JobError(f"{recipe.epochs} epochs is over this instance's limit of {limits.max_epochs}")
    per_item = data.images_per_item(model_config)
    if limits.max_step_macs:
        step = recipe.batch_size * count(model_config).macs
        if step > limits.max_step_macs:
            raise JobError(f"a training step of {recipe.batch_size} inputs of this model is {step / 1e9:.0f} G MACs, "
                           f"over this instance's {limits.max_step_macs / 1e9:.0f} G: use a smaller batch, fewer "
                           "frames or a smaller model")
    if limits.max_train_images and data.on_clips:
        # every clip asked for is drawn, whatever `limit` keeps, so the budget is on the clips
        most = limits.max_train_images // per_item
        if data.clips[0] > most:
            each = f", and a clip of {per_item} frames counts as {per_item}" if per_item > 1 else ""
            raise JobError(f"this instance trains on at most {limits.max_train_images:,} images{each}: set the "
                           f"training clips to {most:,} or fewer (asked for {data.clips[0]:,})")
        evaluated = max(1, limits.max_eval_images // per_item)
        data = DataChoice(data.name, (data.clips[0], *(min(n, evaluated) for n in data.clips[1:])))
    elif limits.max_train_images and not 0 < recipe.limit <= limits.max_train_images:
        raise JobError(f"this instance trains on at most {limits.max_train_images:,} images: set the training "
                       f"images to {limits.max_train_images:,} or fewer (asked for {recipe.limit or 'all'})")
    if limits.max_eval_images and not 0 < recipe.eval_limit <= limits.max_eval_images:
        recipe = recipe.replace(eval_limit=limits.max_eval_images)
    return recipe, data


@dataclass(frozen=True)
class StartedJob:
    run: RunDirectory
    owner: str  # a secret that `stop_job` asks for where only the starter may stop the job


def _read_lock(root: Path) -> dict | None:
    """The lock file's record, if it names a run inside `root` (anything else is ignored)."""
    try:
        lock = read_json(root / LOCK)
    except ValueError:
        return None
    if not isinstance(lock, dict) or not isinstance(lock.get("run"), str) or not RUN_NAME.fullmatch(lock["run"]):
        return None
    return lock


def active_job(root: str | os.PathLike) -> RunDirectory | None:
    """The run directory of the job still running under `root`, if any."""
    lock = _read_lock(Path(root))
    if lock is None or not processes.alive(lock.get("process")):
        return None
    run = RunDirectory(Path(root) / lock["run"])
    if run.status().get("state") in ("finished", "stopped", "failed"):
        return None
    return run


def last_job(root: str | os.PathLike) -> RunDirectory | None:
    """The run directory of the most recent job under `root`, running or not."""
    lock = _read_lock(Path(root))
    return RunDirectory(Path(root) / lock["run"]) if lock else None


def start_job(model_config: ModelConfig, recipe: TrainConfig, root: str | os.PathLike, name: str,
              data_dir: str | os.PathLike | None, limits: Limits | None = None,
              data: DataChoice = DataChoice()) -> StartedJob:
    """Start `python -m tokenlearner train` for the configs and `data` in `root/name`
    (`data_dir` is the CIFAR-10 folder, which plain moving shapes do without); `JobError`
    if a job is running, the name is unusable or taken, the data does not fit the model,
    or the job is beyond `limits` (default: the environment's)."""
    from tokenlearner.data import DataError, find_data_dir

    limits = limits or Limits.current()
    check_run_name(name)
    try:
        data.check_fits(model_config)
    except DataError as error:
        raise JobError(str(error)) from None
    recipe, data = within_limits(model_config, recipe, data, limits)
    data_flags = data.flags()
    if data.name != "moving-shapes":
        if data_dir is None:
            raise JobError("training on CIFAR-10 needs its folder, and none was found")
        data_dir = Path(data_dir).resolve()
        if not limits.allow_data_folder_choice:
            try:
                provisioned = find_data_dir().resolve()
            except DataError:
                provisioned = None
            if data_dir != provisioned:
                raise JobError("this instance trains only on the CIFAR-10 folder its operator set up")
        data_flags.append(f"--data-dir={data_dir}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with exclusive(root / MUTEX):
        running = active_job(root)
        if running is not None:
            raise JobError(f"a training job is already running ({running.path.name}): stop it or wait for it to finish")
        tidy_runs(root, limits, room_for_one_more=True)
        run = RunDirectory(root / name)
        # Under the lock no other job can start, and `train` claims the folder exclusively
        # (`RunDirectory.create`), so a name free now is this job's.
        if run.path.exists():
            raise JobError(f"a run named {name!r} exists already: choose another name")
        owner = secrets.token_hex(16)
        with open(root / f".{name}.log", "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "tokenlearner", "train", f"--out={run.path.resolve()}", *data_flags,
                 *config_flags(model_config, recipe)],
                cwd=REPOSITORY, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        with contextlib.suppress(OSError):  # pages the visitors wait for come before the background job
            os.setpriority(os.PRIO_PROCESS, process.pid, JOB_NICENESS)
        write_json(root / LOCK, {"run": name, "process": processes.identity(process.pid),
                                 "owner": hashlib.sha256(owner.encode()).hexdigest()})
    return StartedJob(run, owner)


def may_stop(root: str | os.PathLike, owner: str | None, limits: Limits | None = None) -> bool:
    """Whether the session holding `owner` (the secret `start_job` gave it, or None) may stop
    the running job: any session on a laptop, only the starter's in a demo."""
    limits = limits or Limits.current()
    if limits.anyone_may_stop:
        return True
    lock = _read_lock(Path(root))
    return bool(owner and lock and secrets.compare_digest(hashlib.sha256(owner.encode()).hexdigest(),
                                                          str(lock.get("owner"))))


def stop_job(root: str | os.PathLike, owner: str | None, limits: Limits | None = None) -> RunDirectory:
    """Ask the running job to stop at its next step; `JobError` if none runs or this session may not."""
    run = active_job(root)
    if run is None:
        raise JobError("no training job is running")
    if not may_stop(root, owner, limits):
        raise JobError("only the session that started this job can stop it; it ends by itself within its limits")
    run.request_stop()
    return run


def job_log(run: RunDirectory) -> str:
    """The last lines the job printed (its errors, when it failed before writing a status)."""
    path = run.path.parent / f".{run.path.name}.log"
    return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def start_download(limits: Limits | None = None) -> subprocess.Popen:
    """`python -m tokenlearner download` in its own process, its output in `data.download_log()`;
    `JobError` where `limits` leave the data to the operator or a download runs already."""
    from tokenlearner.data import download_log, download_running

    if not (limits or Limits.current()).allow_download:
        raise JobError("on this instance CIFAR-10 is provided by its operator: it cannot be downloaded from here")
    if download_running():
        raise JobError("CIFAR-10 is being downloaded already: wait for that download to finish")
    log_path = download_log()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "tokenlearner", "download"], cwd=REPOSITORY, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def _size(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file() and not file.is_symlink())


def tidy_runs(root: str | os.PathLike, limits: Limits, room_for_one_more: bool = False) -> list[str]:
    """Remove what killed runs left half-written, and, where `limits` keep only so many
    runs or bytes, the oldest runs beyond them (never one that is training); with
    `room_for_one_more`, keep one run fewer, for the job about to start. Returns the
    names of the runs removed."""
    root = Path(root)
    runs = [path for path in root.iterdir() if path.is_dir() and not path.is_symlink()]
    for run in runs:
        for folder in (run, run / "maps"):
            if folder.is_dir():
                remove_stale_temporaries(folder)
    if not (limits.keep_runs or limits.keep_runs_bytes):
        return []
    removable = sorted((path for path in runs if RUN_NAME.fullmatch(path.name)
                        and RunDirectory(path).status().get("state") != "running"),
                       key=lambda path: path.stat().st_mtime, reverse=True)
    sizes = {path: _size(path) for path in removable}
    total = sum(sizes.values())
    removed = []
    for position, path in reversed(list(enumerate(removable))):
        too_many = limits.keep_runs and position + room_for_one_more >= limits.keep_runs
        too_big = limits.keep_runs_bytes and total > limits.keep_runs_bytes
        if not (too_many or too_big):
            break
        shutil.rmtree(path, ignore_errors=True)
        (root / f".{path.name}.log").unlink(missing_ok=True)
        total -= sizes[path]
        removed.append(path.name)
    return removed
