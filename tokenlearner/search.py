"""Searches: configs drawn from a space of model and recipe knobs, trained on Ray with
Tune's ASHA scheduler ending poor runs early (tokenlearner/distributed.py), and
summarised as the Pareto front of validation top-1 against MACs.

A search-space file is JSON:

    {"description": "...",
     "preset": "keras-io-4-tokens",                  # what every sample starts from
     "seed": 0,                                      # draws the samples; every sample trains with it
     "train": {"epochs": 20},                        # training flags shared by every sample
     "data": {"name": "cifar10"},                    # optional, as in a grid (datasets.DataChoice)
     "space": {"model": {"num_tokens": [4, 8, 16]},  # a list: one of its values
               "train": {"learning_rate": {"log_uniform": [0.0003, 0.003]}}},  # or a range
     "asha": {"grace_epochs": 2, "reduction_factor": 3}}

Sample i is the i-th config drawn from the file's seed that the model accepts and that
was not drawn before (a placement beyond the depth is drawn again), so every sample is
a distinct, valid config, and the first N samples of a longer search are those of a
shorter one: `--samples 8` on the folder of a `--samples 4` search trains 4 more.
Sample i trains into OUT/sample-i/seed_S, a run directory like any other.

ASHA (asynchronous successive halving) looks at each run's validation top-1 at epochs
grace_epochs x reduction_factor^k and ends a run whose value is below the best
1/reduction_factor of those that reached that epoch before it; such a run is "stopped
early". The front is drawn from the runs that trained every epoch: a run ended at epoch
2 is not comparable with one trained for 20, and ASHA ended it for ranking low.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenlearner.compare import pareto_front, to_csv
from tokenlearner.config import ModelConfig, TrainConfig
from tokenlearner.datasets import DataChoice
from tokenlearner.experiment import BUILT_IN, PLAN_FILE, GridRun, finish_axes, new_figure, save_figure
from tokenlearner.files import read_json, write_text
from tokenlearner.flops import count
from tokenlearner.presets import DEFAULT_PRESET, preset

SCHEDULERS = ("asha",)
RANGES = ("uniform", "log_uniform")
# Fixed by the search itself: epochs is ASHA's horizon, seed the file's.
UNSEARCHABLE = {"train": ("epochs", "seed")}
MAX_DRAWS_PER_SAMPLE = 200


@dataclass(frozen=True)
class SearchSpace:
    description: str
    preset: str
    seed: int
    train: dict
    space: dict  # {"model": {knob: values or range}, "train": {...}}
    grace_epochs: int = 1
    reduction_factor: int = 2
    data: DataChoice = DataChoice()

    @property
    def epochs(self) -> int:
        return TrainConfig(**self.train).epochs

    def knobs(self) -> dict[str, list[str]]:
        return {part: list(self.space.get(part, {})) for part in ("model", "train")}

    def samples(self, number: int) -> list[GridRun]:
        """The first `number` samples, named sample-01, sample-02, ... (a `ValueError` when
        the space holds fewer distinct valid configs than that)."""
        rng = np.random.default_rng(self.seed)
        base_model, base_train = preset(self.preset), TrainConfig(**{**self.train, "seed": self.seed})
        width = max(3, len(str(number)))
        runs, seen = [], set()
        while len(runs) < number:
            for _ in range(MAX_DRAWS_PER_SAMPLE):
                drawn = {part: {knob: _draw(spec, rng) for knob, spec in self.space.get(part, {}).items()}
                         for part in ("model", "train")}
                try:
                    model, train = base_model.replace(**drawn["model"]), base_train.replace(**drawn["train"])
                    self.data.check_fits(model)
                except ValueError:
                    continue  # a combination the model does not take (placement beyond depth, say)
                if (model, train) not in seen:
                    break
            else:
                raise ValueError(f"the space holds fewer than {number} distinct valid configs "
                                 f"({len(runs)} found): widen it or ask for fewer samples")
            seen.add((model, train))
            runs.append(GridRun(f"sample-{len(runs) + 1:0{width}d}", self.seed, model, train, self.preset,
                                self.data))
        return runs

    def plan(self, samples: int) -> dict:
        """What OUT/grid.json says of the search, for readers without the space file."""
        return {"scheduler": "asha", "samples": samples, "knobs": self.knobs(), "epochs": self.epochs,
                "grace_epochs": self.grace_epochs, "reduction_factor": self.reduction_factor}


def _draw(spec, rng: np.random.Generator):
    if isinstance(spec, list):
        value = spec[int(rng.integers(len(spec)))]
        return tuple(value) if isinstance(value, list) else value  # mlp_units
    (kind, (low, high)), = spec.items()
    value = rng.uniform(low, high) if kind == "uniform" else math.exp(rng.uniform(math.log(low), math.log(high)))
    return float(f"{value:.3g}")  # readable in tables and names, and still a continuous draw


def read_space(path: str | os.PathLike) -> SearchSpace:
    """The search space of a file (or of a built-in one, by name); `ValueError` on any mistake."""
    path = Path(path)
    if not path.exists() and (BUILT_IN / f"{path.name}.json").exists():
        path = BUILT_IN / f"{path.name}.json"
    spec = read_json(path)
    if not isinstance(spec, dict) or not isinstance(spec.get("space"), dict) or not spec["space"]:
        hint = ": that is a grid; leave out --search" if isinstance(spec, dict) and "configs" in spec else ""
        raise ValueError(f"{path}: a search space is a JSON object with a non-empty \"space\" object{hint}")
    unknown = set(spec) - {"description", "preset", "seed", "train", "data", "space", "asha"}
    if unknown:
        raise ValueError(f"{path}: unknown search key(s) {', '.join(sorted(unknown))}")
    if set(spec["space"]) - {"model", "train"}:
        raise ValueError(f"{path}: \"space\" may only have \"model\" and \"train\"")
    fields = {"model": {f.name for f in dataclasses.fields(ModelConfig)},
              "train": {f.name for f in dataclasses.fields(TrainConfig)}}
    for part, knobs in spec["space"].items():
        if not isinstance(knobs, dict):
            raise ValueError(f"{path}: space.{part} must be an object of knob: values")
        for knob, values in knobs.items():
            where = f"{path}: space.{part}.{knob}"
            if knob not in fields[part]:
                raise ValueError(f"{where}: no such {part} knob; choose from {', '.join(sorted(fields[part]))}")
            if knob in UNSEARCHABLE.get(part, ()):
                raise ValueError(f"{where}: fixed by the search (epochs is ASHA's horizon, the seed the file's)")
            _check_values(values, where)
    asha = spec.get("asha", {})
    if not isinstance(asha, dict) or set(asha) - {"grace_epochs", "reduction_factor"}:
        raise ValueError(f"{path}: \"asha\" may only have \"grace_epochs\" and \"reduction_factor\"")
    seed = spec.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"{path}: \"seed\" must be a non-negative integer")
    try:
        space = SearchSpace(str(spec.get("description", "")), spec.get("preset", DEFAULT_PRESET), seed,
                            dict(spec.get("train", {})), spec["space"], **asha,
                            data=DataChoice.from_dict(spec["data"]) if "data" in spec else DataChoice())
        space.data.check_fits(preset(space.preset))
        epochs = TrainConfig(**space.train).epochs
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from None
    for name in ("grace_epochs", "reduction_factor"):
        value = getattr(space, name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{path}: asha.{name} must be an integer")
    if not 1 <= space.grace_epochs <= epochs:
        raise ValueError(f"{path}: asha.grace_epochs={space.grace_epochs} must be from 1 to the epochs ({epochs})")
    if space.reduction_factor < 2:
        raise ValueError(f"{path}: asha.reduction_factor={space.reduction_factor} must be at least 2")
    return space


def _check_values(values, where: str) -> None:
    if isinstance(values, list):
        if not values:
            raise ValueError(f"{where}: an empty list leaves nothing to draw")
        return
    if not isinstance(values, dict) or len(values) != 1 or next(iter(values)) not in RANGES:
        raise ValueError(f"{where}: give a list of values or {{\"uniform\": [low, high]}} or "
                         "{\"log_uniform\": [low, high]}")
    (kind, bounds), = values.items()
    if (not isinstance(bounds, list) or len(bounds) != 2 or not all(isinstance(b, (int, float)) for b in bounds)
            or not bounds[0] < bounds[1] or (kind == "log_uniform" and bounds[0] <= 0)):
        raise ValueError(f"{where}: {kind} needs [low, high] with low < high" + (" and low > 0" if kind == "log_uniform"
                                                                                 else ""))


def is_search(out: str | os.PathLike) -> bool:
    """Whether the experiment in OUT (its grid.json) is a search."""
    return "search" in read_json(Path(out) / PLAN_FILE)


def search_table(out: str | os.PathLike, progress: list[dict]) -> list[dict]:
    """One row per sample of the search in OUT (`progress`: its `grid_progress` rows),
    cheapest first: its drawn knobs, state, epochs trained, best validation top-1 and test
    top-1 (percent), MACs, and whether it is on the front (validation top-1 against MACs,
    among runs that trained every epoch)."""
    knobs = read_json(Path(out) / PLAN_FILE)["search"]["knobs"]
    rows = []
    for sample in progress:
        directory = sample["directory"]
        started = directory.config_file.is_file()
        record = directory.record() if started else {}
        cost = count(directory.model_config()) if started else None
        best = max((epoch["val_top1"] for epoch in directory.epochs()), default=None)
        rows.append({
            "run": sample["config"],
            **{knob: record.get(part, {}).get(knob) for part in ("model", "train") for knob in knobs[part]},
            "state": sample["state"],
            "epochs": sample["epochs_done"],
            "val_top1": None if best is None else round(100 * best, 2),
            "test_top1": None if sample["test_top1"] is None else round(100 * sample["test_top1"], 2),
            "macs_m": round(cost.macs / 1e6, 2) if cost else None,
            "params": cost.params if cost else None,
        })
    front = set(pareto_front([row for row in rows if row["state"] == "finished"], accuracy="val_top1"))
    for row in rows:
        row["front"] = row["run"] in front
    return sorted(rows, key=lambda row: (row["macs_m"] is None, row["macs_m"] or 0, row["run"]))


def write_search_results(rows: list[dict], out: str | os.PathLike) -> tuple[Path, Path]:
    """OUT/search.csv (every sample) and OUT/front.md (the front, then how the samples ended)."""
    out = Path(out)
    write_text(out / "search.csv", to_csv(rows))
    knobs = [key for key in rows[0] if key not in ("run", "state", "epochs", "val_top1", "test_top1", "macs_m",
                                                    "params", "front")] if rows else []
    lines = ["| run | " + " | ".join(knobs) + " | MACs (M) | val top-1 (%) | test top-1 (%) |",
             "|---|" + "---|" * len(knobs) + "---:|---:|---:|"]
    for row in (row for row in rows if row["front"]):
        lines.append(f"| {row['run']} | " + " | ".join(str(row[knob]) for knob in knobs)
                     + f" | {row['macs_m']:.2f} | {row['val_top1']:.2f} | {_or_blank(row['test_top1'])} |")
    states = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    lines += ["", f"{len(rows)} samples: " + ", ".join(f"{number} {state}" for state, number in states.items())
              + ". The front: validation top-1 against MACs among the runs that trained every epoch; "
                "every sample is in search.csv."]
    write_text(out / "front.md", "\n".join(lines) + "\n")
    return out / "search.csv", out / "front.md"


def _or_blank(value) -> str:
    return "" if value is None else f"{value:.2f}"


def plot_front(rows: list[dict], path: str | os.PathLike, title: str) -> Path:
    """A PNG of validation top-1 against MACs: every sample that trained an epoch (hollow:
    stopped early), the front joined by a line. Needs matplotlib (requirements-dev.txt)."""
    figure, axes = new_figure()
    trained = [row for row in rows if row.get("val_top1") is not None]
    for label, chosen, style in (
            ("trained every epoch", [row for row in trained if row["state"] == "finished"], {"color": "C0"}),
            ("stopped early by ASHA", [row for row in trained if row["state"] == "stopped early"],
             {"facecolors": "none", "edgecolors": "C1"}),
            ("failed or stopped", [row for row in trained if row["state"] not in ("finished", "stopped early")],
             {"marker": "x", "color": "0.5"})):
        if chosen:
            axes.scatter([row["macs_m"] for row in chosen], [row["val_top1"] for row in chosen], label=label, **style)
    front = sorted((row for row in trained if row["front"]), key=lambda row: row["macs_m"])
    axes.plot([row["macs_m"] for row in front], [row["val_top1"] for row in front], ":", color="C0",
              label="Pareto front")
    for row in front:
        axes.annotate(row["run"], (row["macs_m"], row["val_top1"]), textcoords="offset points", xytext=(5, 4),
                      fontsize=7)
    finish_axes(axes, max((row["macs_m"] for row in trained), default=1), "best validation top-1 (%)", title)
    return save_figure(figure, path)
