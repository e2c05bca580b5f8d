"""Search spaces, their samples and the front, without Ray (tests/test_distributed.py runs a search)."""

import json

import pytest
from conftest import tokenlearner_command

from tokenlearner.experiment import grid_progress, write_plan
from tokenlearner.runs import RunDirectory
from tokenlearner.search import plot_front, read_space, search_table, write_search_results

SPACE = {
    "preset": "keras-io-4-tokens",
    "seed": 3,
    "train": {"epochs": 4},
    "space": {"model": {"depth": [1, 2], "placement": [0, 1, 2], "num_tokens": [2, 4]},
              "train": {"learning_rate": {"log_uniform": [0.0001, 0.01]}}},
    "asha": {"grace_epochs": 1, "reduction_factor": 2},
}


def _space(tmp_path, **changes):
    path = tmp_path / "space.json"
    path.write_text(json.dumps({**SPACE, **changes}))
    return path


def test_samples_are_valid_distinct_and_the_same_from_the_same_seed(tmp_path):
    space = read_space(_space(tmp_path))
    runs = space.samples(10)
    assert [run.name for run in runs] == [f"sample-{i:03d}" for i in range(1, 11)]
    assert all(run.model.placement <= run.model.depth for run in runs), "a placement beyond the depth is drawn again"
    assert len({(run.model, run.train) for run in runs}) == 10
    assert all(0.0001 <= run.train.learning_rate <= 0.01 and run.train.epochs == 4 and run.seed == 3 for run in runs)
    assert space.samples(4) == runs[:4], "a longer search starts with a shorter one's samples"
    assert read_space(_space(tmp_path, seed=4)).samples(4) != runs[:4]


def test_a_space_of_video_models_trains_every_sample_on_its_clips(tmp_path):
    from tokenlearner.datasets import DataChoice

    clips = {"name": "moving-shapes", "clips": [60, 20, 20]}
    space = read_space(_space(tmp_path, preset="video-shapes", data=clips,
                              space={"model": {"frames": [4, 8], "num_tokens": [4, 8]}}))
    assert {run.data for run in space.samples(4)} == {DataChoice("moving-shapes", (60, 20, 20))}
    assert {run.model.frames for run in space.samples(4)} == {4, 8}
    with pytest.raises(ValueError, match="CIFAR-10 holds images and the model takes clips of 8 frames"):
        read_space(_space(tmp_path, preset="video-shapes"))
    with pytest.raises(ValueError, match="data 'video' is not known"):
        read_space(_space(tmp_path, data={"name": "video"}))


def test_a_space_too_small_for_the_samples_says_so(tmp_path):
    space = read_space(_space(tmp_path, space={"model": {"num_tokens": [2, 4]}}))
    assert len(space.samples(2)) == 2
    with pytest.raises(ValueError, match="fewer than 3 distinct valid configs \\(2 found\\)"):
        space.samples(3)


def test_the_built_in_space_searches_the_model_and_recipe_knobs():
    space = read_space("keras_io_search")
    assert space.knobs() == {"model": ["tokenlearner", "num_tokens", "placement", "depth", "fuser"],
                             "train": ["learning_rate", "weight_decay"]}
    assert (space.epochs, space.grace_epochs, space.reduction_factor) == (20, 2, 3)
    assert len(space.samples(32)) == 32


@pytest.mark.parametrize("changes, message", [
    ({"space": {}}, 'a JSON object with a non-empty "space" object'),
    ({"space": {"model": {"tokens": [2]}}}, "space.model.tokens: no such model knob"),
    ({"space": {"train": {"epochs": [1, 2]}}}, "space.train.epochs: fixed by the search"),
    ({"space": {"model": {"depth": []}}}, "an empty list leaves nothing to draw"),
    ({"space": {"train": {"learning_rate": {"log_uniform": [0, 1]}}}}, "log_uniform needs [low, high] with low < high"),
    ({"space": {"train": {"learning_rate": {"normal": [0, 1]}}}}, "give a list of values or"),
    ({"asha": {"grace_epochs": 5}}, "asha.grace_epochs=5 must be from 1 to the epochs (4)"),
    ({"asha": {"reduction_factor": 1}}, "asha.reduction_factor=1 must be at least 2"),
    ({"asha": {"brackets": 2}}, '"asha" may only have'),
    ({"preset": "keras-io-9-tokens"}, "unknown preset"),
    ({"train": {"epochs": 0}}, "epochs=0"),
    ({"budget": 3}, "unknown search key(s) budget"),
])
def test_space_mistakes(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message.replace("(", "\\(").replace(")", "\\)").replace("[", "\\[")):
        read_space(_space(tmp_path, **changes))


def test_a_grid_is_not_a_space_and_a_space_not_a_grid(tmp_path):
    from test_experiment import GRID

    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(GRID))
    with pytest.raises(ValueError, match="that is a grid; leave out --search"):
        read_space(grid)
    result = tokenlearner_command("experiment", str(_space(tmp_path)), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "that is a search space; add --engine ray --search asha --samples N" in \
        result.stderr


@pytest.mark.parametrize("flags, message", [
    (["--search", "asha", "--samples", "4"], "--address, --cpus-per-run and --search go with --engine ray"),
    (["--engine", "ray", "--search", "asha"], "--search and --samples go together"),
    (["--engine", "ray", "--samples", "4"], "--search and --samples go together"),
    (["--engine", "ray", "--search", "asha", "--samples", "0"], "--samples 0: draw at least 1 config"),
    (["--engine", "ray", "--search", "asha", "--samples", "13"], "fewer than 13 distinct valid configs (10 found)"),
])
def test_search_flags_are_checked_before_anything_starts(tmp_path, flags, message):
    discrete = {"model": {"depth": [1, 2], "placement": [0, 1, 2], "num_tokens": [2, 4]}}  # 10 valid configs
    result = tokenlearner_command("experiment", str(_space(tmp_path, space=discrete)), "--out", str(tmp_path / "out"),
                                  *flags, timeout=60)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def _sample_run(out, run, state, val_top1s, test_top1=None):
    """What a search leaves in OUT/name/seed_s: its record, epochs, status and summary."""
    directory = RunDirectory(out / run.name / f"seed_{run.seed}").create(
        {"model": run.model.to_dict(), "train": run.train.to_dict()})
    for epoch, value in enumerate(val_top1s, start=1):
        directory.append_epoch({"epoch": epoch, "val_top1": value, "complete": True})
    directory.set_status(state)
    if test_top1 is not None:
        directory.write_summary({"test_top1": test_top1})


def test_the_front_is_drawn_from_the_runs_that_trained_every_epoch(tmp_path):
    from tokenlearner.flops import count

    space = read_space(_space(tmp_path))
    runs = space.samples(5)
    out = tmp_path / "out"
    write_plan(runs, out, "space.json", "ray", search=space.plan(5))
    macs = {run.name: count(run.model).macs for run in runs}
    cheapest, dearest = min(macs, key=macs.get), max(macs, key=macs.get)
    by_name = {run.name: run for run in runs}
    others = [name for name in macs if name not in (cheapest, dearest)]
    _sample_run(out, by_name[cheapest], "finished", [0.2, 0.3, 0.3, 0.4], test_top1=0.38)
    _sample_run(out, by_name[dearest], "finished", [0.3, 0.5, 0.6, 0.7], test_top1=0.66)
    _sample_run(out, by_name[others[0]], "stopped early", [0.9])  # high, but after one epoch: not comparable
    _sample_run(out, by_name[others[1]], "finished", [0.1, 0.1, 0.2, 0.2], test_top1=0.2)

    rows = search_table(out, grid_progress(out))
    by_run = {row["run"]: row for row in rows}
    assert [row["run"] for row in rows if row["front"]] == [cheapest, dearest]
    assert by_run[others[0]]["state"] == "stopped early" and not by_run[others[0]]["front"]
    assert by_run[dearest]["val_top1"] == 70.0 and by_run[dearest]["test_top1"] == 66.0
    assert by_run[others[2]]["state"] == "waiting" and by_run[others[2]]["macs_m"] is None
    assert [row["macs_m"] for row in rows if row["macs_m"] is not None] == sorted(
        row["macs_m"] for row in rows if row["macs_m"] is not None)
    assert set(space.knobs()["model"]) <= set(by_run[cheapest]) and by_run[cheapest]["learning_rate"] > 0

    csv_path, front_path = write_search_results(rows, out)
    assert len(csv_path.read_text().splitlines()) == 6
    front = front_path.read_text()
    assert f"| {cheapest} |" in front and f"| {dearest} |" in front and f"| {others[0]} |" not in front
    assert "5 samples: " in front and "1 stopped early" in front and "1 waiting" in front
    assert plot_front(rows, out / "front.png", "the front").read_bytes().startswith(b"\x89PNG")


def test_the_space_file_docs_distributed_shows_is_one(tmp_path):
    import re

    from conftest import REPO

    shown = re.findall(r"```json\n(.*?)```", (REPO / "docs" / "distributed.md").read_text(), flags=re.S)
    assert len(shown) == 1
    path = tmp_path / "space.json"
    path.write_text(shown[0])
    assert len(read_space(path).samples(9)) == 9
