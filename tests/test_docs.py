"""The README and docs/ show code that runs: each `python` block, as written, in a fresh
Python from the repository's root."""

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCKS = [(page, block) for page in PAGES
          for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)]


@pytest.mark.parametrize("page, block", BLOCKS, ids=lambda value: getattr(value, "name", None) or "block")
def test_python_blocks_run_as_written(page, block):
    result = subprocess.run([sys.executable, "-c", block], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert result.returncode == 0, f"{page.name}: {result.stderr[-2000:]}"


def test_the_readmes_library_block_hands_back_what_its_comments_say():
    block = next(block for page, block in BLOCKS if page.name == "README.md")
    check = "\nprint(probabilities.shape, {name: value.shape for name, value in maps.items()})\n"
    result = subprocess.run([sys.executable, "-c", block + check], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert result.stdout.strip().splitlines()[-1] == "(2, 10) {'token_learner': (2, 8, 8, 8)}"


COMMAND = re.compile(r"python -m tokenlearner ([^`|#\n\\]*)")
# What the docs write in place of a value, and a value of that kind.
PLACEHOLDERS = {"NAME": "keras-io-4-tokens", "RUN_A": "checkpoints/v1-4-tokens", "RUN_B": "checkpoints/v11-8-tokens",
                "D": "data", "DIR": "out", "W.weights.h5": "w.weights.h5", "P.npz": "p.npz"}
SHOWN = sorted({match.strip() for page in PAGES
                for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S)
                for match in COMMAND.findall(block.replace("\\\n", " "))})


@pytest.mark.parametrize("command", SHOWN)
def test_every_command_the_docs_show_is_one_the_command_line_takes(command):
    """Each command a `bash` block shows, its optional parts ([...]) included and placeholders filled,
    parses with the real parser: a renamed command or flag fails here. Running them is
    each command's own test's job (train, evaluate, predict, experiment, ship, bench,
    flops, import-keras-io, provision, serve, rehearse, bench-app, build-kernels; the cards'
    commands: tests/test_checkpoints.py)."""
    from tokenlearner.cli import build_parser

    words = [PLACEHOLDERS.get(word, word) for word in re.sub(r"[\[\]]", " ", command).split()
             if word not in ("model", "training", "flags", "streamlit")]
    if words and words[0] == "serve":  # its other flags are Streamlit's
        words = words[:1]
    build_parser().parse_args(words)


def test_build_kernels_reports_what_the_model_runs():
    from conftest import tokenlearner_command

    result = tokenlearner_command("build-kernels", timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("built ") and "the model runs " in result.stdout


def test_the_video_train_commands_shown_train_the_video_grids_two_runs():
    """docs/video.md's and the Video page's command give the shipped video checkpoint's
    model, recipe and clips (the `video_shapes` grid's first run, checked against the
    checkpoint in tests/test_experiment.py, whose card command tests/test_checkpoints.py runs
    at reduced size); docs/results.md's single-frame command gives the grid's second run."""
    from tokenlearner.cli import _data_choice, build_parser
    from tokenlearner.experiment import read_grid
    from tokenlearner.flags import model_config, train_config

    video, single = read_grid("video_shapes")
    page = re.search(r'TRAIN_COMMAND = \((.*?)\)\n', (REPO / "pages" / "video.py").read_text(), re.S).group(1)
    shown = {"docs/video.md": next(c for c in SHOWN if c.startswith("train --out runs/video ")),
             "pages/video.py": "".join(re.findall(r'"(.*?)"', page)).removeprefix("python -m tokenlearner "),
             "docs/results.md": next(c for c in SHOWN if c.startswith("train --out runs/single-frame "))}
    for where, command in shown.items():
        args = build_parser().parse_args(command.split())
        expected = single if "single-frame" in command else video
        assert (model_config(args), train_config(args).replace(seed=0), _data_choice(args)) == \
            (expected.model, expected.train, expected.data), where
