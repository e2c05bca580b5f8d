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


def _worker(cpus: int) -> dict:
    import ray

    return {"node": os.uname().nodename, "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
            "cpus": cpus}


class _ScratchRun:
    """`run` trained in a thread (so that its caller can send files while it goes) into a
    scratch folder on this node; `changed()` gives the folder's files new or changed since
    the last call, and leaving the block raises what training raised."""

    def __init__(self, run: GridRun, data_dir: str | None, cpus: int,
                 after_epoch: Callable[[dict], None] | None = None):
        self.run, self.data_dir, self.cpus, self.after_epoch = run, data_dir, cpus, after_epoch
        self.sent: dict[str, tuple[int, int]] = {}
        self.outcome: dict = {}

    def __enter__(self) -> "_ScratchRun":
        import tempfile

        os.environ[CORES_VARIABLE] = str(self.cpus)
        from tokenlearner.cli import import_keras_quietly
        # this node's TOKENLEARNER_DATA_DIR unless given
        data = self.run.data.load(self.run.model, self.run.seed, self.data_dir)
        import_keras_quietly(one_thread_per_op=True)
        from tokenlearner.training import train

        self.scratch = tempfile.TemporaryDirectory(prefix="tokenlearner-run-")
        self.directory = Path(self.scratch.name) / "run"

        def work():
            try:
                self.outcome["summary"] = train(self.run.model, self.run.train, data, self.directory,
                                                after_epoch=self.after_epoch)
            except BaseException as error:  # raised in the caller's thread, on leaving the block
                self.outcome["error"] = error

        self.trainer = threading.Thread(target=work, name="train", daemon=True)
        self.trainer.start()
        return self

    def training(self, seconds: float = POLL_SECONDS) -> bool:
        """Whether training still goes on, after waiting up to `seconds` for it to end."""
        self.trainer.join(seconds)
        return self.trainer.is_alive()

    def changed(self) -> list[tuple[str, bytes]]:
        return list(_changed_files(self.directory, self.sent))

    def __exit__(self, kind, error, traceback) -> None:
        self.scratch.cleanup()
        if kind is None and "error" in self.outcome:
            raise self.outcome["error"]


def train_streaming(run: GridRun, data_dir: str | None, cpus: int):
    """The grid's Ray task: trains `run` and yields {"file": relative path, "data": bytes,
    "worker": {"node", "node_id", "pid", "cpus"}} for each file as it changes; raises what
    training raised."""
    with _ScratchRun(run, data_dir, cpus) as scratch:
        worker = _worker(cpus)
        while True:
            going_on = scratch.training()
            for relative, data_bytes in scratch.changed():
                yield {"file": relative, "data": data_bytes, "worker": worker}
            if not going_on:
                break


class _Mirror:
    """This process's copy of one run directory, written from what its task sends."""

    def __init__(self, run: GridRun, directory: Path, label: str):
        self.run, self.directory, self.label = run, directory, label
        # The driver (the experiment command, which makes every mirror) owns the folder: its status
        # names the driver's process, and the run's record the driver's command, each with where the
        # run trains; a search's sink actor writes through copies of these, made here.
        self.driver, self.command = processes.identity(), sys.argv
        self.attempt, self.worker, self.epochs_reported = 0, None, 0

    def write(self, relative: str, data: bytes, worker: dict) -> None:
        self.worker = worker
        path = Path(relative)
        if path.is_absolute() or ".." in path.parts:
            raise ValueError(f"a worker sent {relative!r}, which is not a path inside its run directory")
        target = self.directory / path
        if relative == "status.json":
            status = json.loads(data.decode("utf-8"))
            write_json(target, {**status, "pid": self.driver["pid"], "process": self.driver, "worker": worker})
            return
        if relative == "config.json":
            record = json.loads(data.decode("utf-8"))
            write_json(target, {**record, "command": self.command, "worker": worker})
            return
        with atomic_path(target) as temporary:
            temporary.write_bytes(data)

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
                mirror.write(item["file"], item["data"], item["worker"])
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


class _SearchSink:
    """The Ray actor, on the driver's node, that writes each sample's run directory from
    what its trial sends (a Tune trial cannot stream results back as a task does)."""

    def __init__(self, mirrors: list[_Mirror]):
        self.mirrors = mirrors

    def begin(self, index: int) -> None:
        """A trial starts: an earlier attempt's folder (its worker died) is moved aside."""
        directory = self.mirrors[index].directory
        if directory.is_dir() and any(directory.iterdir()):
            directory.rename(free_name(directory))
        directory.mkdir(parents=True, exist_ok=True)

    def write(self, index: int, files: list[tuple[str, bytes]], worker: dict) -> bool:
        """Write `files` into sample `index`'s folder; whether a stop was asked for there."""
        mirror = self.mirrors[index]
        for relative, data in files:
            mirror.write(relative, data, worker)
        return RunDirectory(mirror.directory).stop_requested()

    def fail(self, index: int, cause: str) -> None:
        """The trial raised before training could say so (no data on its node, say)."""
        run = RunDirectory(self.mirrors[index].directory)
        if run.status().get("state") != "failed":
            run.set_status("failed", error=cause)


def _search_trial(config: dict, runs: list[GridRun], sink, data_dir: str | None, cpus: int) -> None:
    """A Tune trial: trains sample `config["sample"]`, sending its files to `sink` as they
    change and reporting each epoch's validation top-1 to Tune, whose ASHA scheduler may end
    it there. Training waits at the end of each epoch until the epoch's files have reached
    the driver and Tune has taken the report, so a run ended at epoch k holds k epochs. The
    last epoch is reported once the run has ended (tested, every file sent), since Tune ends
    a trial at its horizon. A training error is not raised: the run's status says it, and
    Tune's retries are kept for workers that die."""
    import queue

    import ray
    from ray import tune

    index = config["sample"]
    run = runs[index]
    ray.get(sink.begin.remote(index))
    ended_epochs: queue.Queue = queue.Queue()
    go_on = threading.Semaphore(0)

    def after_epoch(record: dict) -> None:
        ended_epochs.put(record)
        go_on.acquire()

    def report(record: dict) -> None:
        tune.report({"epoch": record["epoch"], "val_top1": record["val_top1"], "val_loss": record["val_loss"]})

    worker, held = _worker(cpus), []
    try:
        with _ScratchRun(run, data_dir, cpus, after_epoch) as scratch:
            while scratch.training(0):
                try:
                    record = ended_epochs.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    record = None
                if ray.get(sink.write.remote(index, scratch.changed(), worker)):
                    RunDirectory(scratch.directory).request_stop()  # the driver's copy has a STOP file
                if record is not None:
                    if record["complete"] and record["epoch"] < run.train.epochs:
                        report(record)  # where ASHA may end this trial
                    else:
                        held.append(record)
                    go_on.release()
            ray.get(sink.write.remote(index, scratch.changed(), worker))
        for record in held:
            if record["complete"]:
                report(record)
    except Exception as error:  # the run's own status says it, unless training never began
        ray.get(sink.fail.remote(index, _cause(error)))


def run_search_on_ray(todo: list[tuple[GridRun, Path, str]], epochs: int, grace_epochs: int,
                      reduction_factor: int, data_dir: str | None, cpus_per_run: int, address: str | None,
                      report: Callable[[str], None], retries: int = RETRIES) -> bool:
    """Train the samples `experiment.pending` left to do as Tune trials of `cpus_per_run`
    CPUs each under ASHA (validation top-1 at epochs grace_epochs x reduction_factor^k,
    up to `epochs`), mirroring their run directories here; a sample ASHA ends is marked
    "stopped early". True unless the user stopped the search (Ctrl-C) or a sample (its STOP
    file)."""
    import tempfile

    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not todo:
        return True
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Ctrl-C ends the command as it ends a grid
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # whose tables print at any verbosity: the lines below say what happens
    connect(address)
    mirrors = [_Mirror(run, directory, label) for run, directory, label in todo]
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    sink = ray.remote(_SearchSink).options(num_cpus=0, scheduling_strategy=here).remote(mirrors)
    ended_early: set[int] = set()

    class EndingEarly(ASHAScheduler):
        """ASHA, marking the samples it ends before their last epoch."""

        def on_trial_result(self, controller, trial, result):
            action = super().on_trial_result(controller, trial, result)
            if action == self.STOP and result["epoch"] < epochs:
                index = trial.config["sample"]
                ended_early.add(index)
                run = RunDirectory(mirrors[index].directory)
                run.set_status("stopped early", epoch=result["epoch"], worker=run.status().get("worker"))
            return action

    class Progress(tune.Callback):
        """Says what happens to each sample (Tune's own tables are off); called after the scheduler."""

        def on_trial_start(self, iteration, trials, trial, **info):
            report(f"{mirrors[trial.config['sample']].label}: training")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            label = mirrors[trial.config["sample"]].label
            report(f"{label}: epoch {result['epoch']}: val top-1 {result['val_top1']:.3f}")
            if trial.config["sample"] in ended_early:
                report(f"{label}: stopped early by ASHA after epoch {result['epoch']}: its val top-1 is below the best "
                       f"1/{reduction_factor} of those that reached that epoch")

        def on_trial_complete(self, iteration, trials, trial, **info):
            if trial.config["sample"] not in ended_early:
                _report_end(mirrors[trial.config["sample"]], report)

        def on_trial_recover(self, iteration, trials, trial, **info):
            mirror = mirrors[trial.config["sample"]]
            mirror.attempt += 1
            report(f"{mirror.label}: its worker died ({_cause(trial.get_error())}); training it again "
                   f"(attempt {mirror.attempt + 1} of {retries + 1})")

        def on_trial_error(self, iteration, trials, trial, **info):
            mirror = mirrors[trial.config["sample"]]
            cause = _cause(trial.get_error())
            RunDirectory(mirror.directory).set_status("failed", error=cause)
            report(f"{mirror.label}: failed ({cause}), after {mirror.attempt + 1} attempts; the search goes on "
                   "without it")

    trainable = tune.with_resources(
        tune.with_parameters(_search_trial, runs=[mirror.run for mirror in mirrors], sink=sink, data_dir=data_dir,
                             cpus=cpus_per_run),
        {"cpu": cpus_per_run})
    try:
        with tempfile.TemporaryDirectory(prefix="tokenlearner-tune-") as scratch:  # Tune's own records
            tune.Tuner(
                trainable, param_space={"sample": tune.grid_search(list(range(len(mirrors))))},
                tune_config=tune.TuneConfig(
                    metric="val_top1", mode="max", reuse_actors=False,
                    scheduler=EndingEarly(time_attr="epoch", max_t=epochs, grace_period=grace_epochs,
                                          reduction_factor=reduction_factor)),
                run_config=tune.RunConfig(name="search", storage_path=scratch, verbose=0, callbacks=[Progress()],
                                          failure_config=tune.FailureConfig(max_failures=retries)),
            ).fit()
    except KeyboardInterrupt:
        for mirror in mirrors:
            if RunDirectory(mirror.directory).status().get("state") == "running":
                RunDirectory(mirror.directory).set_status("stopped")
                report(f"{mirror.label}: stopped; the same command resumes the search, training it again from the "
                       "start")
        return False
    finally:
        ray.shutdown()
    return not any(RunDirectory(mirror.directory).status().get("state") == "stopped" for mirror in mirrors)
