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
