"""A grid on Ray: every config x seed one Ray task with its share of the CPUs, on this
machine (a Ray started for the command) or on a cluster (`address`).

Each task trains into a scratch folder on its own node and streams the run directory's
files back as they change (every `POLL_SECONDS`, and when it ends), and this process
writes them into OUT/name/seed_s, each atomically, as the in-process runner would have.
So the runs come back to `out` when the workers are other machines with their own disks,
a run being trained can be watched (the Compare page) as it goes, and a grid resumes
exactly as in process (tokenlearner/experiment.py). While a run is out, its status.json
names this process, which writes it: if this process is killed the run reads as failed,
and the next call moves it aside and trains it again.

A task whose worker dies (a node lost, a process killed) costs that run only: it is
trained again from the start, up to `RETRIES` more times, and then marked failed; a run
whose training raised (bad data, say) is marked failed at once, since it would again. The
rest of the grid goes on. Each task runs in a fresh worker process with `TOKENLEARNER_CPUS` set
to its share, which sizes TensorFlow's threads and the step's concurrent chunks
(`steps.use_one_thread_per_op`).

Ray is optional (requirements-ray.txt); nothing here is imported by the in-process runner.
"""

from __future__ import annotations

import os
import json
import sys
import threading
from pathlib import Path
from typing import Callable

from tokenlearner import processes
from tokenlearner.experiment import GridRun, free_name
from tokenlearner.files import atomic_path, write_json
from tokenlearner.runs import RunDirectory
from tokenlearner.steps import CORES_VARIABLE

POLL_SECONDS = 1.0
RETRIES = 2
PACKAGE = Path(__file__).parent


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached; the message says which."""


def _changed_files(directory: Path, sent: dict[str, tuple[int, int]]):
    """(path relative to `directory`, bytes) of every file that is new or changed since
    `sent` last saw it; writers' hidden temporaries are left out."""
    if not directory.is_dir():
        return
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        stat = path.stat()
        key = (stat.st_mtime_ns, stat.st_size)
        if sent.get(str(relative)) != key:
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # replaced between the listing and the read: sent next time
                continue
            sent[str(relative)] = key
            yield str(relative), data


def train_streaming(run: GridRun, data_dir: str | None, cpus: int):
    """The Ray task: trains `run` into a scratch folder and yields {"file": relative path,
    "data": bytes, "worker": {"node", "node_id", "pid", "cpus"}} for each file as it
    changes; raises what training raised."""
    import tempfile

    import ray

    os.environ[CORES_VARIABLE] = str(cpus)
    from tokenlearner.cli import import_keras_quietly
    from tokenlearner.data import find_data_dir, load_cifar10

    data = load_cifar10(find_data_dir(data_dir))  # this node's TOKENLEARNER_DATA_DIR unless given
    import_keras_quietly(one_thread_per_op=True)
    from tokenlearner.training import train

    worker = {"node": os.uname().nodename, "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
              "cpus": cpus}
    with tempfile.TemporaryDirectory(prefix="tokenlearner-run-") as scratch:
        directory = Path(scratch) / "run"
        outcome: dict = {}

        def work():
            try:
                outcome["summary"] = train(run.model, run.train, data, directory)
            except BaseException as error:  # handed to the driver below
                outcome["error"] = error

        # Training runs in a thread so that this generator can send files while it goes.
        trainer = threading.Thread(target=work, name="train", daemon=True)
        trainer.start()
        sent: dict[str, tuple[int, int]] = {}
        while trainer.is_alive():
            trainer.join(POLL_SECONDS)
            for relative, data_bytes in _changed_files(directory, sent):
                yield {"file": relative, "data": data_bytes, "worker": worker}
        for relative, data_bytes in _changed_files(directory, sent):
            yield {"file": relative, "data": data_bytes, "worker": worker}
        if "error" in outcome:
            raise outcome["error"]


class _Mirror:
    """This process's copy of one run directory, written from what its task sends."""

    def __init__(self, run: GridRun, directory: Path, label: str):
        self.run, self.directory, self.label = run, directory, label
        self.attempt, self.worker, self.epochs_reported = 0, None, 0

    def write(self, item: dict) -> None:
        self.worker = item["worker"]
        relative = Path(item["file"])
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"a worker sent {item['file']!r}, which is not a path inside its run directory")
        target = self.directory / relative
        # This process writes the folder: its status names this process, and the run's record
        # this command, each with where the run is trained.
        if item["file"] == "status.json":
            status = json.loads(item["data"].decode("utf-8"))
            write_json(target, {**status, "pid": os.getpid(), "process": processes.identity(),
                                "worker": self.worker})
            return
        if item["file"] == "config.json":
            record = json.loads(item["data"].decode("utf-8"))
            write_json(target, {**record, "command": sys.argv, "worker": self.worker})
            return
        with atomic_path(target) as temporary:
            temporary.write_bytes(item["data"])

    def new_epochs(self) -> list[dict]:
        epochs = RunDirectory(self.directory).epochs()
        fresh = epochs[self.epochs_reported:]
        self.epochs_reported = len(epochs)
        return fresh


def connect(address: str | None) -> None:
    """Start a Ray for this command (`address` None) or join the cluster at `address`,
    with usage statistics off and this package shipped to every node."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--engine ray needs Ray: pip install -r requirements-ray.txt") from None
    try:
        ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                 runtime_env={"py_modules": [str(PACKAGE)], "excludes": ["__pycache__", "*.so"]})
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = f"reach a Ray cluster at {address}" if address else "start Ray on this machine"
        raise RayUnavailable(f"cannot {where}: {error}") from None


def run_grid_on_ray(todo: list[tuple[GridRun, Path, str]], data_dir: str | None, cpus_per_run: int,
                    address: str | None, report: Callable[[str], None], retries: int = RETRIES) -> bool:
    """Train the runs `experiment.pending` left to do as Ray tasks of `cpus_per_run` CPUs
    each, mirroring their run directories here. True when every one ended by itself; False
    when the user stopped the grid (Ctrl-C: the runs out there are marked stopped) or a run
    (its STOP file: that run alone is cancelled and marked stopped, the others go on)."""
    import ray

    connect(address)
    task = ray.remote(max_calls=1, max_retries=0)(train_streaming).options(num_cpus=cpus_per_run)
    active: dict = {}
    stopped: list[_Mirror] = []

    def submit(mirror: _Mirror) -> None:
        mirror.directory.mkdir(parents=True, exist_ok=True)
        active[task.remote(mirror.run, data_dir, cpus_per_run)] = mirror

    try:
        for run, directory, label in todo:
            submit(_Mirror(run, directory, label))
            report(f"{label}: waiting for {cpus_per_run} CPU{'s' if cpus_per_run > 1 else ''}")
        while active:
            for generator, mirror in list(active.items()):
                if RunDirectory(mirror.directory).stop_requested():  # the run's STOP file (the app's Stop button)
                    ray.cancel(generator, force=True)
                    del active[generator]
                    RunDirectory(mirror.directory).set_status("stopped")
                    stopped.append(mirror)
                    report(f"{mirror.label}: stopped; the same command trains it again from the start")
            if not active:
                break
            ready, _ = ray.wait(list(active), num_returns=1, timeout=POLL_SECONDS)
            for generator in ready:
                mirror = active[generator]
                try:
                    item = ray.get(next(generator))
                except StopIteration:
                    del active[generator]
                    _report_end(mirror, report)
                    continue
                except Exception as error:  # the task raised, or its worker died
                    del active[generator]
                    _failed(mirror, error, retries, submit, report)
                    continue
                first = mirror.worker is None
                mirror.write(item)
                if first:
                    report(f"{mirror.label}: training on {mirror.worker['node']} (node {mirror.worker['node_id'][:8]}, "
                           f"process {mirror.worker['pid']})")
                for epoch in mirror.new_epochs():
                    report(f"{mirror.label}: epoch {epoch['epoch']}: loss {epoch['loss']:.4f}  "
                           f"val top-1 {epoch['val_top1']:.3f}")
    except KeyboardInterrupt:
        for generator, mirror in active.items():
            ray.cancel(generator, force=True)
            RunDirectory(mirror.directory).set_status("stopped")
            report(f"{mirror.label}: stopped; the same command resumes the grid, training it again from the start")
        return False
    finally:
        ray.shutdown()
    return not stopped


def _report_end(mirror: _Mirror, report: Callable[[str], None]) -> None:
    summary = RunDirectory(mirror.directory).summary() or {}
    if summary.get("test_top1") is not None:
        report(f"{mirror.label}: finished, test top-1 {summary['test_top1']:.4f}")
    else:
        report(f"{mirror.label}: ended as {RunDirectory(mirror.directory).status().get('state')}")


def _failed(mirror: _Mirror, error: Exception, retries: int, submit: Callable[[_Mirror], None],
            report: Callable[[str], None]) -> None:
    import ray

    cause = _cause(error)
    if mirror.worker:
        where = f" on {mirror.worker['node']}"
    elif isinstance(error, ray.exceptions.RayTaskError):
        where = f" on {error.ip} (process {error.pid})"
    else:
        where = ""
    worker_died = not isinstance(error, ray.exceptions.RayTaskError)
    if worker_died and mirror.attempt < retries:
        mirror.attempt += 1
        if any(mirror.directory.iterdir()):
            mirror.directory.rename(free_name(mirror.directory))
        report(f"{mirror.label}: failed{where} ({cause}); training it again "
               f"(attempt {mirror.attempt + 1} of {retries + 1})")
        mirror.worker, mirror.epochs_reported = None, 0
        submit(mirror)
        return
    RunDirectory(mirror.directory).set_status("failed", error=cause)
    attempts = f", after {mirror.attempt + 1} attempts" if worker_died else ""
    report(f"{mirror.label}: failed{where} ({cause}){attempts}; the grid goes on without it")


def _cause(error: Exception) -> str:
    """One line for a task's failure: the training error's own, or how the worker died."""
    import ray

    if isinstance(error, ray.exceptions.RayTaskError) and error.cause is not None:
        error = error.cause
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else 'no message'}"
