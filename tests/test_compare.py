"""Runs side by side: the table, the Pareto front, the CSV exports and the keras.io table."""

import pytest

from tokenlearner.config import ModelConfig
from tokenlearner.runs import RunDirectory


@pytest.fixture
def two_runs(tmp_path):
    """A TokenLearner run with two epochs, and a cheaper, more accurate baseline."""
    run = RunDirectory(tmp_path / "runs" / "fuser-run").create({"model": ModelConfig(fuser=True, placement=3).to_dict()})
    run.set_status("finished")
    run.write_summary({"test_top1": 0.40, "test_top5": 0.9, "best_val_top1": 0.41, "train_seconds": 60})
    for epoch in (1, 2):
        run.append_epoch({"epoch": epoch, "loss": 2.0 / epoch, "top1": 0.2 * epoch, "top5": 0.5, "val_loss": 2.1,
                          "val_top1": 0.2 * epoch, "val_top5": 0.6})
    cheaper = ModelConfig(tokenlearner="none", depth=2, placement=2)
    other = RunDirectory(tmp_path / "runs" / "baseline").create({"model": cheaper.to_dict(), "train": {"epochs": 2}})
    other.write_summary({"test_top1": 0.45, "test_top5": 0.92, "best_val_top1": 0.44, "train_seconds": 30})
    other.set_status("finished")
    return run, other


def test_pareto_front_and_exports(two_runs):
    from tokenlearner.compare import epochs_csv, pareto_front, runs_table
    from tokenlearner.runs import find_runs

    runs, _ = find_runs(two_runs[0].path.parent)
    rows = runs_table(runs)
    # the baseline is both cheaper (depth 2) and more accurate: it alone is on the front
    assert pareto_front(rows) == ["runs/baseline"]
    rows.append({**rows[0], "run": "runs/bigger-better", "test_top1": 60.0, "macs_m": 500.0})
    assert sorted(pareto_front(rows)) == ["runs/baseline", "runs/bigger-better"]
    lines = epochs_csv(runs).splitlines()
    assert lines[0].startswith("run,epoch,loss") and len(lines) == 3


def test_the_keras_io_table_sets_our_grid_means_beside_the_published_ones(tmp_path):
    from tokenlearner.compare import keras_io_table
    from tokenlearner.config import TrainConfig
    from tokenlearner.presets import PRESETS
    from tokenlearner.runs import RunDirectory, find_grid_runs

    def finished(path, config, recipe, top1):
        run = RunDirectory(path).create({"model": config.to_dict(), "train": recipe.to_dict()})
        run.write_summary({"test_top1": top1})
        run.set_status("finished")

    for seed, top1 in enumerate((0.35, 0.37)):
        finished(tmp_path / "tables" / "8-tokens" / f"seed_{seed}", PRESETS["keras-io-8-tokens"],
                 TrainConfig(seed=seed), top1)
    finished(tmp_path / "tables" / "8-tokens" / "seed_2.incomplete-1", PRESETS["keras-io-8-tokens"], TrainConfig(), 0.9)
    finished(tmp_path / "recipes" / "8-tokens" / "seed_0", PRESETS["keras-io-8-tokens"],
             TrainConfig(epochs=120, mixup_alpha=0.8), 0.51)
    runs = find_grid_runs(tmp_path)
    assert sorted(run.name for run in runs) == [f"{tmp_path.name}/recipes/8-tokens/seed_0",
                                                f"{tmp_path.name}/tables/8-tokens/seed_0",
                                                f"{tmp_path.name}/tables/8-tokens/seed_1"]
    rows = {row["configuration"]: row for row in keras_io_table(runs, published_runs=runs[1:2])}
    eight = rows["TokenLearner v1.0, 8 tokens"]
    assert eight["published top-1 (%)"] == 56.55 and eight["published runs"] == 5
    assert rows["TokenLearner v1.1, 4 groups, 8 tokens"]["published runs"] == 1
    assert eight["docs/results.md, keras.io recipe (%)"] == "35.00 (1 run)"
    assert eight["ours, keras.io recipe (%)"] == "36.00 ± 1.41 (2 runs)"
    assert eight["ours, best other recipe (%)"] == f"51.00 ({tmp_path.name}/recipes/8-tokens/seed_0)"
    assert rows["TokenLearner v1.0, 4 tokens"]["ours, keras.io recipe (%)"] == "-"
