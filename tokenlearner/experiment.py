"""Grids of configs x seeds, run one after another into one folder, resumable, and
summarised as a results table (mean and standard deviation over seeds).

A grid file is JSON:

    {"seeds": [0, 1, 2],
     "train": {"epochs": 20},                      # training flags shared by every run
     "configs": {"8-tokens": {"preset": "keras-io-8-tokens",
                              "model": {"placement": 2},  # overrides of the preset
                              "train": {"label_smoothing": 0.1}}}}

A grid trains on CIFAR-10 unless it says otherwise: `"data": {"name": "moving-shapes",
"clips": [4000, 1000, 1000]}` (see `datasets.DataChoice`), for every config at the top
level or for one config in its entry; clips are drawn from each run's seed.

Runs go seed by seed (every config's seed 0, then every config's seed 1, ...), so a grid
stopped part-way already has a row for each config. Run `name` with seed `s` goes to
OUT/name/seed_s. A run already finished there is skipped; an unfinished one (killed,
failed or stopped) is moved aside to OUT/name/seed_s.incomplete-N and run again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tokenlearner import processes
from tokenlearner.compare import mean_std, plus_minus, to_csv
from tokenlearner.config import ModelConfig, TrainConfig
from tokenlearner.datasets import DataChoice
from tokenlearner.files import atomic_path, read_json, write_json, write_text
from tokenlearner.flops import count
from tokenlearner.presets import DEFAULT_PRESET, PUBLISHED, preset
from tokenlearner.runs import RunDirectory, RunError, runs_root

BUILT_IN = Path(__file__).parent / "grids"
ENDED = ("finished", "stopped early")  # a run in either state is not trained again


@dataclass(frozen=True)
class GridRun:
    name: str
    seed: int
    model: ModelConfig
    train: TrainConfig
    preset: str
    data: DataChoice = DataChoice()


def read_grid(path: str | os.PathLike) -> list[GridRun]:
    """The runs of a grid file (or of a built-in grid, by name); `ValueError` on any mistake."""
    path = Path(path)
    if not path.exists() and (BUILT_IN / f"{path.name}.json").exists():
        path = BUILT_IN / f"{path.name}.json"
    grid = read_json(path)
    if not isinstance(grid, dict) or not isinstance(grid.get("configs"), dict) or not grid["configs"]:
        hint = (": that is a search space; add --engine ray --search asha --samples N"
                if isinstance(grid, dict) and "space" in grid else "")
        raise ValueError(f"{path}: a grid is a JSON object with a non-empty \"configs\" object{hint}")
    unknown = set(grid) - {"description", "seeds", "train", "data", "configs"}
    if unknown:
        raise ValueError(f"{path}: unknown grid key(s) {', '.join(sorted(unknown))}")
    seeds = grid.get("seeds", [0])
    try:
        default_data = DataChoice.from_dict(grid["data"]) if "data" in grid else DataChoice()
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"{path}: \"seeds\" must be a non-empty list of integers")
    runs = []
    for name, entry in grid["configs"].items():
        if not isinstance(entry, dict) or set(entry) - {"preset", "model", "train", "data"}:
            raise ValueError(f"{path}: config {name!r} may only have \"preset\", \"model\", \"train\" and \"data\"")
        try:
            preset_name = entry.get("preset", DEFAULT_PRESET)
            model = preset(preset_name).replace(**entry.get("model", {}))
            base = {**grid.get("train", {}), **entry.get("train", {})}
            data = DataChoice.from_dict(entry["data"]) if "data" in entry else default_data
            data.check_fits(model)
            runs += [GridRun(name, seed, model, TrainConfig(**{**base, "seed": seed}), preset_name, data)
                     for seed in seeds]
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: config {name!r}: {error}") from None
    return sorted(runs, key=lambda run: seeds.index(run.seed))


PLAN_FILE = "grid.json"


def write_plan(runs: list[GridRun], out: str | os.PathLike, grid: str, engine: str,
               search: dict | None = None) -> Path:
    """OUT/grid.json: the grid's (or search's) runs in order and the process running them,
    so that a reader (the Compare page) can tell the runs waiting for it from those nobody
    will train; a search adds what `SearchSpace.plan` says of it."""
    path = Path(out) / PLAN_FILE
    write_json(path, {"grid": grid, "engine": engine, "process": processes.identity(),
                      "runs": [{"config": run.name, "seed": run.seed} for run in runs],
                      **({"search": search} if search else {})})
    return path


def find_grids(root: str | os.PathLike | None = None) -> list[Path]:
    """The experiment folders directly under `root` (default: the runs folder), newest first."""
    root = Path(root) if root is not None else runs_root()
    found = [folder for folder in root.iterdir() if (folder / PLAN_FILE).is_file()] if root.is_dir() else []
    return sorted(found, key=lambda folder: (folder / PLAN_FILE).stat().st_mtime, reverse=True)


def grid_progress(out: str | os.PathLike) -> list[dict]:
    """One row per run of the grid in OUT/grid.json: config, seed, state (its run's status
    once its training has started; before, "waiting" while the grid's process runs and "not
    started" after), epochs done of how many, test top-1, and its RunDirectory."""
    out = Path(out)
    plan = read_json(out / PLAN_FILE)
    before_start = "waiting" if processes.alive(plan.get("process")) else "not started"
    rows = []
    for entry in plan.get("runs", []):
        directory = RunDirectory(out / str(entry["config"]) / f"seed_{int(entry['seed'])}")
        state = directory.status()["state"] if directory.status_file.is_file() else before_start
        rows.append({"config": entry["config"], "seed": int(entry["seed"]), "state": state,
                     "epochs_done": len(directory.epochs()), "epochs": (directory.progress() or {}).get("epochs"),
                     "test_top1": (directory.summary() or {}).get("test_top1"), "directory": directory})
    return rows


def pending(runs: list[GridRun], out: str | os.PathLike,
            report: Callable[[str], None]) -> list[tuple[GridRun, Path, str]]:
    """The runs still to train, each with its directory and label ("[i/n] name seed s"): a
    run that ended (finished, or stopped early by a search's scheduler) is skipped, an
    unfinished one moved aside; a run that another process is
    training raises a RunError before anything is touched."""
    out = Path(out)
    found = []
    for index, run in enumerate(runs, start=1):
        directory = out / run.name / f"seed_{run.seed}"
        status = RunDirectory(directory).status() if directory.exists() else None
        if status and status.get("state") == "running":
            raise RunError(f"{directory} is being trained by process {status.get('pid')} (another experiment "
                           "on the same --out?): let it finish, or stop it, then run this again")
        found.append((run, directory, f"[{index}/{len(runs)}] {run.name} seed {run.seed}", status))
    todo = []
    for run, directory, label, status in found:
        if status is not None and not any(directory.iterdir()):
            directory.rmdir()  # made for a run that never started (the Ray engine makes them as it submits)
        elif status is not None:
            if status.get("state") in ENDED:
                report(f"{label}: {status['state']} already, skipped")
                continue
            aside = free_name(directory)
            directory.rename(aside)
            report(f"{label}: an unfinished run was there, moved to {aside.name}")
        todo.append((run, directory, label))
    return todo


def run_grid(todo: list[tuple[GridRun, Path, str]], train_one: Callable[[GridRun, Path, str], bool],
             report: Callable[[str], None]) -> bool:
    """Train the runs `pending` left to do, one after another in this process;
    `train_one(run, directory, label)` trains one and says whether it was stopped. A
    stopped run (a signal, or its STOP file) ends the grid there, since a stop is the
    user's; the return value says whether every run finished."""
    for run, directory, label in todo:
        report(f"{label}: training")
        if train_one(run, directory, label):
            report(f"{label}: stopped; the same command resumes the grid, training this run again from the start")
            return False
    return True


def free_name(directory: Path) -> Path:
    """NAME.incomplete-N beside `directory`, the first N not taken."""
    number = 1
    while (candidate := directory.with_name(f"{directory.name}.incomplete-{number}")).exists():
        number += 1
    return candidate


def results(runs: list[GridRun], out: str | os.PathLike) -> list[dict]:
    """One row per config: mean and standard deviation of test top-1/top-5 (percent) over
    its finished seeds, with its cost and, for keras.io presets, the published top-1."""
    rows = []
    for name in dict.fromkeys(run.name for run in runs):
        members = [run for run in runs if run.name == name]
        summaries = []
        for run in members:
            directory = RunDirectory(Path(out) / name / f"seed_{run.seed}")
            summary = directory.summary() if directory.path.exists() else None
            if summary and summary.get("test_top1") is not None:
                summaries.append(summary)
        top1 = [100 * s["test_top1"] for s in summaries]
        top5 = [100 * s["test_top5"] for s in summaries]
        cost = count(members[0].model)
        # The published figure belongs to the preset's exact architecture only.
        same = members[0].model == preset(members[0].preset)
        published = PUBLISHED.get(members[0].preset) if same else None
        rows.append({
            "config": name,
            "seeds": f"{len(summaries)}/{len(members)}",
            **dict(zip(("top1_mean", "top1_std"), mean_std(top1))),
            **dict(zip(("top5_mean", "top5_std"), mean_std(top5))),
            "published_top1": published.top1 if published else None,
            "params": cost.params, "macs": cost.macs, "keras_io_gflops": round(cost.keras_io_gflops, 5),
        })
    return rows


def write_results(rows: list[dict], out: str | os.PathLike) -> tuple[Path, Path]:
    out = Path(out)
    write_text(out / "results.csv", to_csv(rows))
    lines = ["| config | seeds | test top-1 (%) | test top-5 (%) | published top-1 (%) | params | MACs (M) | "
             "keras.io GFLOPs |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['config']} | {row['seeds']} | {plus_minus(row['top1_mean'], row['top1_std'])} | "
            f"{plus_minus(row['top5_mean'], row['top5_std'])} | {row['published_top1'] or ''} | {row['params']:,} | "
            f"{row['macs'] / 1e6:.2f} | {row['keras_io_gflops']} |")
    write_text(out / "results.md", "\n".join(lines) + "\n")
    return out / "results.csv", out / "results.md"


def _label_points(axes, points: list[tuple[str, float, float]], gap: float = 9.0, near: float = 20.0) -> None:
    """Name each (label, x, y) point: a lone point to its right; points less than `near`
    typographic points apart on the x axis (configs of nearly equal MACs) with their labels
    stacked `gap` points apart to the left of the group, a line to each point. Call it once
    the axes' limits and layout are final: it places the labels in points on the page."""
    axes.figure.canvas.draw()
    to_points = 72 / axes.figure.dpi
    placed = [(label, x, y, *(axes.transData.transform((x, y)) * to_points)) for label, x, y in points]
    groups: list[list] = []
    for point in sorted(placed, key=lambda point: point[4]):
        group = next((group for group in groups if any(abs(point[3] - other[3]) < near for other in group)), None)
        if group is None:
            groups.append([point])
        else:
            group.append(point)
    for group in groups:
        if len(group) == 1:
            label, x, y, _, _ = group[0]
            axes.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=7)
            continue
        heights = []  # each label's height on the page, from the lowest point up
        for *_, page_y in group:
            heights.append(max(page_y, heights[-1] + gap) if heights else page_y)
        recentre = sum(point[4] for point in group) / len(group) - sum(heights) / len(heights)
        left = min(point[3] for point in group) - 10
        for (label, x, y, page_x, page_y), height in zip(group, heights, strict=True):
            axes.annotate(label, (x, y), textcoords="offset points", xytext=(left - page_x, height + recentre - page_y),
                          fontsize=7, ha="right", va="center",
                          arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5, "shrinkA": 1, "shrinkB": 3})


def plot_accuracy_vs_macs(tables: dict[str, list[dict]], path: str | os.PathLike, title: str) -> Path:
    """A PNG of test top-1 (mean ± std over seeds) against MACs, one series per entry of
    `tables` (label -> `results` rows), with the published keras.io top-1 of each preset
    row as hollow markers. Needs matplotlib (requirements-dev.txt)."""
    figure, axes = new_figure()
    published, points = {}, []
    for (label, rows), marker in zip(tables.items(), "osD^v"):
        shown = [row for row in rows if row["top1_mean"] is not None]
        axes.errorbar([row["macs"] / 1e6 for row in shown], [row["top1_mean"] for row in shown],
                      yerr=[row["top1_std"] or 0 for row in shown], fmt=marker, capsize=3, label=label)
        for row in shown:
            points.append((row["config"], row["macs"] / 1e6, row["top1_mean"]))
            if row["published_top1"] is not None:
                published[row["macs"]] = row["published_top1"]
    if published:
        axes.scatter([macs / 1e6 for macs in published], list(published.values()), facecolors="none",
                     edgecolors="gray", label="keras.io, published (full CIFAR-10)")
    finish_axes(axes, max([x for _, x, _ in points] + [macs / 1e6 for macs in published], default=1),
                "test top-1 (%)", title)
    _label_points(axes, points)  # last: it needs the final axis limits and layout
    return save_figure(figure, path)


def new_figure():
    """A figure and axes of the results' size; matplotlib is in requirements-dev.txt only."""
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("the figure needs matplotlib: pip install -r requirements-dev.txt") from None
    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot.subplots(figsize=(7.5, 4.8), dpi=120)


def finish_axes(axes, largest_macs_m: float, ylabel: str, title: str) -> None:
    """MACs from zero (so they compare as ratios, with room for labels on both sides), the
    labels, grid and legend, and the final layout."""
    axes.set_xlim(0, 1.15 * largest_macs_m)
    axes.set_xlabel("multiply-accumulates per image (M)")
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    axes.figure.tight_layout()


def save_figure(figure, path: str | os.PathLike) -> Path:
    from matplotlib import pyplot

    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    pyplot.close(figure)
    return path
