"""Runs side by side: a table, the accuracy/cost Pareto front, CSV exports, deletion."""

from __future__ import annotations

import csv
import io
import shutil
import statistics
from pathlib import Path

from tokenlearner.config import TrainConfig
from tokenlearner.flops import count
from tokenlearner.limits import Limits
from tokenlearner.presets import PRESETS, PUBLISHED
from tokenlearner.runs import RunError, RunInfo, runs_root


def runs_table(runs: list[RunInfo]) -> list[dict]:
    """One row per run: its knobs, status, test and best validation accuracy, and cost."""
    rows = []
    for run in runs:
        summary, config = run.summary or {}, run.config
        cost = count(config)
        recipe = run.directory.record().get("train", {})
        rows.append({
            "run": run.name,
            "state": run.state,
            "TokenLearner": config.tokenlearner,
            "tokens": config.num_tokens if config.tokenlearner != "none" else None,
            "placement": config.placement if config.tokenlearner != "none" else None,
            "fuser": config.fuser,
            "depth": config.depth,
            "epochs": recipe.get("epochs"),
            "seed": recipe.get("seed"),
            "test_top1": _percent(summary.get("test_top1")),
            "test_top5": _percent(summary.get("test_top5")),
            "best_val_top1": _percent(summary.get("best_val_top1")),
            "params": cost.params,
            "macs_m": round(cost.macs / 1e6, 2),
            "keras_io_gflops": round(cost.keras_io_gflops, 5),
            "train_minutes": round(summary["train_seconds"] / 60, 1) if summary.get("train_seconds") else None,
        })
    return rows


def keras_io_table(runs: list[RunInfo], published_runs: list[RunInfo] = ()) -> list[dict]:
    """The keras.io results table beside ours: for each of its rows, the test top-1 under
    the keras.io recipe (mean ± std over the runs of that exact config, any seed) of the
    project's published grid (`published_runs`, docs/results.md) and of `runs`, and the
    best of `runs` with any other recipe."""
    rows = []
    for name in PUBLISHED:
        config = PRESETS[name]
        plain, other = _split_by_recipe(runs, config)
        best = max(other, key=lambda run: run.summary["test_top1"], default=None)
        rows.append({
            "configuration": PUBLISHED[name].description,
            "published top-1 (%)": PUBLISHED[name].top1,
            "published runs": PUBLISHED[name].runs,
            "docs/results.md, keras.io recipe (%)": _mean_std(_split_by_recipe(published_runs, config)[0]),
            "ours, keras.io recipe (%)": _mean_std(plain),
            "ours, best other recipe (%)": f"{100 * best.summary['test_top1']:.2f} ({best.name})" if best else "-",
            "published GFLOPs": PUBLISHED[name].gflops,
            "MACs (M)": round(count(config).macs / 1e6, 2),
        })
    return rows


def _split_by_recipe(runs: list[RunInfo], config) -> tuple[list[RunInfo], list[RunInfo]]:
    """The finished runs of exactly `config`: those under the keras.io recipe (any seed), and the rest."""
    plain, other = [], []
    for run in runs:
        if run.config == config and run.summary and run.summary.get("test_top1"):
            try:
                recipe = run.directory.train_config().replace(seed=0)
            except RunError:
                recipe = None
            (plain if recipe == TrainConfig() else other).append(run)
    return plain, other


def _mean_std(runs: list[RunInfo]) -> str:
    values = [100 * run.summary["test_top1"] for run in runs]
    if not values:
        return "-"
    return f"{plus_minus(*mean_std(values))} ({len(values)} run{'s' if len(values) > 1 else ''})"


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation to two places; None where there are too few values."""
    mean = round(statistics.fmean(values), 2) if values else None
    return mean, round(statistics.stdev(values), 2) if len(values) > 1 else None


def plus_minus(mean: float | None, std: float | None) -> str:
    """`mean ± std` as the tables show it: "-" without a mean, the mean alone without a spread."""
    if mean is None:
        return "-"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def for_display(rows: list[dict]) -> list[dict]:
    """`rows` for `st.dataframe`, whose grid writes "None" into a missing cell: a column
    with a missing value (a model without TokenLearner has no tokens) becomes text, its
    missing cells empty."""
    gaps = {key for row in rows for key, value in row.items() if value is None}
    return [{key: ("" if value is None else str(value)) if key in gaps else value for key, value in row.items()}
            for row in rows]


def _percent(value):
    return round(100 * value, 2) if value is not None else None


def pareto_front(rows: list[dict], accuracy: str = "test_top1", cost: str = "macs_m") -> list[str]:
    """Names of the runs no other run beats on both accuracy (higher) and cost (lower)."""
    scored = [row for row in rows if row.get(accuracy) is not None]
    front = []
    for row in scored:
        dominated = any(
            other[accuracy] >= row[accuracy] and other[cost] <= row[cost]
            and (other[accuracy] > row[accuracy] or other[cost] < row[cost])
            for other in scored
        )
        if not dominated:
            front.append(row["run"])
    return front


def to_csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def epochs_csv(runs: list[RunInfo]) -> str:
    """Every epoch of every run, one row each, for spreadsheets and plotting tools."""
    return to_csv([{"run": run.name, **epoch} for run in runs for epoch in run.directory.epochs()])


def _why_not_deletable(run: RunInfo) -> str | None:
    if not Limits.current().allow_delete:
        return "runs cannot be deleted on this instance"
    if run.directory.path.resolve().parent != runs_root().resolve():
        return f"{run.name} is not in the runs folder: only trained runs can be deleted"
    if run.directory.status().get("state") == "running":
        return f"{run.name} is still training: stop it first"
    return None


def deletable(runs: list[RunInfo]) -> list[RunInfo]:
    """The runs `delete_run` would delete: trained runs in the runs folder, not training now."""
    return [run for run in runs if _why_not_deletable(run) is None]


def delete_run(run: RunInfo) -> None:
    """Remove a run directory from the runs folder; shipped checkpoints and running jobs are refused."""
    problem = _why_not_deletable(run)
    if problem:
        raise ValueError(problem)
    path = run.directory.path.resolve()
    shutil.rmtree(path)
    log = path.parent / f".{path.name}.log"
    if log.exists():
        Path(log).unlink()
