"""Run directories: everything a training run needs to be reproduced, inspected live and
loaded later. Shipped checkpoints use the same layout, so one loader serves both.

    config.json     model config, training config, data source and size, package versions,
                    which dropout, GELU, LayerNorm and attention kernels ran
    status.json     running | finished | stopped | failed (with the error) | stopped early
                    (a search's scheduler ended it), pid, times
    progress.json   the latest step: epoch, step, images/s, ETA (rewritten every few seconds)
    metrics.jsonl   one JSON line per finished epoch
    maps/           images.json (which validation images) and epoch_NNN.npz, the learned-token
                    maps of those images after each epoch
    model.keras     the weights with the best validation accuracy so far
    metrics.json    the final summary (test top-1/top-5, params, MACs, speed, ...)
    STOP            created by whoever wants the run to stop at its next step

Every file is written atomically (temporary file, then rename), so a run killed at any
moment leaves only complete files.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokenlearner import processes
from tokenlearner.config import ModelConfig, TrainConfig
from tokenlearner.data import CLASS_NAMES
from tokenlearner.files import atomic_path, read_json, write_json, write_text

STATES = ("running", "finished", "stopped", "failed", "stopped early")


class RunError(ValueError):
    """A folder that is not a (complete) run directory; the message says what is wrong."""


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in ("keras", "tensorflow", "numpy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


class RunDirectory:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    config_file = property(lambda self: self.path / "config.json")
    status_file = property(lambda self: self.path / "status.json")
    progress_file = property(lambda self: self.path / "progress.json")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    summary_file = property(lambda self: self.path / "metrics.json")
    model_file = property(lambda self: self.path / "model.keras")
    maps_dir = property(lambda self: self.path / "maps")
    stop_file = property(lambda self: self.path / "STOP")

    # Writing ---------------------------------------------------------------------------

    def require_new(self) -> "RunDirectory":
        """This directory, if nothing is in it yet; a RunError otherwise."""
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise RunError(f"{self.path} already exists and is not empty: choose a new run directory")
        return self

    def create(self, record: dict[str, Any]) -> "RunDirectory":
        """Make the directory (it must not hold anything yet) and write config.json. The
        directory is claimed exclusively: of two processes creating one run, one fails."""
        self.require_new()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.path.mkdir()
        except FileExistsError:
            pass  # an empty folder (require_new allows one): whoever claims config.json below has it
        try:
            os.close(os.open(self.config_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            raise RunError(f"{self.path} was just taken by another run: choose a new run directory") from None
        write_json(self.config_file, {**record, "versions": package_versions()})
        return self

    def set_status(self, state: str, **details: Any) -> None:
        if state not in STATES:
            raise ValueError(f"state={state!r}: choose one of {STATES}")
        previous = self._read_optional(self.status_file) or {}
        now = time.time()
        write_json(self.status_file, {"state": state, "pid": os.getpid(), "process": processes.identity(),
                                      "started": previous.get("started", now), "updated": now, **details})

    def write_progress(self, **progress: Any) -> None:
        write_json(self.progress_file, {**progress, "time": time.time()})

    def append_epoch(self, metrics: dict[str, Any]) -> None:
        lines = self.metrics_file.read_text() if self.metrics_file.exists() else ""
        write_text(self.metrics_file, lines + json.dumps(metrics) + "\n")

    def write_map_images(self, indices: list[int], labels: list[int], source: str = "train_batch") -> None:
        """Which images the per-epoch maps are of: indices into the training batches, or
        (`source="val_clip"`) into the drawn validation clips (the pixels stay in the
        dataset; a run directory never copies images)."""
        write_json(self.maps_dir / "images.json", {f"{source}_indices": indices, "labels": labels})

    def write_maps(self, epoch: int, probabilities: np.ndarray, maps: dict[str, np.ndarray]) -> None:
        with atomic_path(self.maps_dir / f"epoch_{epoch:03d}.npz") as temporary:
            np.savez_compressed(temporary, probabilities=probabilities.astype("float16"),
                                **{name: value.astype("float16") for name, value in maps.items()})

    def save_model(self, model) -> None:
        with atomic_path(self.model_file) as temporary:
            model.save(temporary)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.summary_file, summary)

    def stop_requested(self) -> bool:
        return self.stop_file.exists()

    def request_stop(self) -> None:
        write_text(self.stop_file, "stop\n")

    # Reading ---------------------------------------------------------------------------

    def require_existing(self) -> "RunDirectory":
        """This directory, if it is a run directory (a readable config.json with a model);
        a RunError saying what is wrong otherwise."""
        self.record()
        return self

    def record(self) -> dict[str, Any]:
        """config.json, which makes a folder a run directory."""
        if not self.path.is_dir():
            raise RunError(f"{self.path} is not a folder")
        if not self.config_file.is_file():
            raise RunError(f"{self.path} is not a run directory (it has no config.json)")
        try:
            record = read_json(self.config_file)
        except ValueError as error:
            raise RunError(str(error)) from None
        if not isinstance(record, dict) or "model" not in record:
            raise RunError(f"{self.config_file} has no \"model\" entry: it is not a tokenlearner run config")
        return record

    def model_config(self) -> ModelConfig:
        record = self.record()
        try:
            return ModelConfig.from_dict(record["model"])
        except (TypeError, ValueError) as error:
            raise RunError(f"{self.config_file}: {error}") from None

    def train_config(self) -> TrainConfig:
        """The recipe the run was trained with (fields added since read as their defaults)."""
        record = self.record()
        if "train" not in record:
            raise RunError(f"{self.config_file} has no \"train\" entry: the run was not trained here "
                           "(an import or a hand-made folder)")
        try:
            return TrainConfig.from_dict(record["train"])
        except (TypeError, ValueError) as error:
            raise RunError(f"{self.config_file}: {error}") from None

    def class_names(self) -> list[str]:
        """The class names of the data the run was trained on (CIFAR-10's where it does not say)."""
        return self.record().get("data", {}).get("class_names", list(CLASS_NAMES))

    def status(self) -> dict[str, Any]:
        """The run's status; a run whose process died without saying so reads as failed."""
        status = self._read_optional(self.status_file) or {"state": "unknown"}
        if status.get("state") == "running" and not processes.alive(status.get("process") or status):
            status = {**status, "state": "failed", "error": "the training process ended without finishing"}
        return status

    def progress(self) -> dict[str, Any] | None:
        return self._read_optional(self.progress_file)

    def epochs(self) -> list[dict[str, Any]]:
        if not self.metrics_file.exists():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]

    def summary(self) -> dict[str, Any] | None:
        return self._read_optional(self.summary_file)

    def map_epochs(self) -> list[int]:
        return sorted(int(p.stem.split("_")[1]) for p in self.maps_dir.glob("epoch_*.npz"))

    def maps(self, epoch: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        with np.load(self.maps_dir / f"epoch_{epoch:03d}.npz") as saved:
            arrays = {name: saved[name].astype("float32") for name in saved.files}
        return arrays.pop("probabilities"), arrays

    def map_images(self) -> dict[str, list[int]]:
        return read_json(self.maps_dir / "images.json")

    def load_model(self):
        """(model, config) of the best weights so far; `RunError` says what is missing or broken."""
        from tokenlearner.model import load_model

        config = self.model_config()
        if not self.model_file.is_file():
            raise RunError(f"{self.path} has no model.keras: the run has not saved a model yet")
        return load_model(self.model_file), config

    def _read_optional(self, path: Path) -> dict[str, Any] | None:
        try:
            return read_json(path)
        except ValueError:
            return None


RUNS_ENV = "TOKENLEARNER_RUNS_DIR"
CHECKPOINTS_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
# The project's own experiment grids, published in docs/results.md as GRID/CONFIG/seed_N
# records (config, status and metrics; not their models).
PUBLISHED_GRIDS_DIR = CHECKPOINTS_DIR.parent / "docs" / "results"


def runs_root() -> Path:
    """Where the app and the command line put new runs: $TOKENLEARNER_RUNS_DIR, else ./runs."""
    return Path(os.environ.get(RUNS_ENV, "runs"))


@dataclass(frozen=True)
class RunInfo:
    name: str  # "checkpoints/<folder>" or "runs/<folder>"
    directory: RunDirectory
    config: ModelConfig
    state: str
    summary: dict[str, Any] | None
    has_model: bool

    @property
    def on_clips(self) -> bool:
        """Trained on clips of moving shapes (a video model, or its single-frame baseline):
        the image pages, which show CIFAR-10, leave it out."""
        return self.directory.record().get("data", {}).get("kind") == "moving_shapes"


def find_runs(*roots: str | os.PathLike) -> tuple[list[RunInfo], list[str]]:
    """The run directories directly inside `roots` (default: the shipped checkpoints and the
    runs folder), newest first within each root, and a message for each folder that looks
    like a run but cannot be read."""
    roots = roots or (CHECKPOINTS_DIR, runs_root())
    found, problems = [], []
    # The same folder given twice (the runs folder pointed at checkpoints/) is listed once.
    for root in {Path(root).resolve(): Path(root) for root in roots}.values():
        if not root.is_dir():
            continue
        folders = sorted((p for p in root.iterdir() if (p / "config.json").exists()),
                         key=lambda p: p.stat().st_mtime, reverse=True)
        for folder in folders:
            run = RunDirectory(folder)
            try:
                config = run.model_config()
            except RunError as error:
                problems.append(str(error))
                continue
            found.append(RunInfo(f"{root.name}/{folder.name}", run, config, run.status().get("state", "unknown"),
                                 run.summary(), run.model_file.is_file()))
    return found, problems


def find_checkpoints() -> tuple[list[RunInfo], list[str]]:
    """The shipped checkpoints, as `find_runs` reads them."""
    return find_runs(CHECKPOINTS_DIR)


def find_grid_runs(root: str | os.PathLike | None = None) -> list[RunInfo]:
    """The finished runs of experiment grids under `root` (default: the runs folder), laid
    out as `root/GRID/CONFIG/seed_N`; the zoo leaves them out, the keras.io table uses them."""
    root = Path(root) if root is not None else runs_root()
    found = []
    for folder in sorted(root.glob("*/*/seed_*")) if root.is_dir() else []:
        run = RunDirectory(folder)
        # seed_N.incomplete-M holds a run the experiment runner set aside and ran again
        if not folder.name.removeprefix("seed_").isdigit() or run.status().get("state") != "finished":
            continue
        try:
            config = run.model_config()
        except RunError:
            continue
        found.append(RunInfo(str(folder.relative_to(root.parent)), run, config, "finished", run.summary(),
                             run.model_file.is_file()))
    return found
