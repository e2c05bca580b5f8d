import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "reference" / "keras_io_reference.py"


def tokenlearner_command(*args: str, **options) -> subprocess.CompletedProcess:
    """`python -m tokenlearner ARGS` as a user runs it: this interpreter, from the
    repository's root, its output captured as text; `options` go to `subprocess.run`."""
    return subprocess.run([sys.executable, "-m", "tokenlearner", *args], cwd=REPO, capture_output=True, text=True,
                          **options)


# The longest files first: pytest-xdist hands files out in collection order (pytest.ini: --no-loadscope-reorder,
# whose default would order them by their number of tests), so no worker is left with a long file at the end while
# the other waits. Measured with --junitxml; the rest follow in pytest's order.
LONGEST_FIRST = ("test_browser.py", "test_distributed.py", "test_checkpoints.py", "test_app.py", "test_training.py",
                 "test_hosting.py", "test_keras_io.py", "test_steps.py", "test_benchmark.py", "test_native.py")


def pytest_collection_modifyitems(items):
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order


@pytest.fixture(scope="session")
def reference_script() -> Path:
    if not REFERENCE.is_file():
        pytest.skip(f"the keras.io reference is not at {REFERENCE}")
    return REFERENCE


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    configured = os.environ.get("TOKENLEARNER_DATA_DIR")
    if not configured or not Path(configured).is_dir():
        pytest.skip("TOKENLEARNER_DATA_DIR does not point at a cifar-10-batches-py folder")
    return Path(configured)


@pytest.fixture(autouse=True)
def _streamlit_error_details():
    """A demo's app.py hides error details through Streamlit's process-wide config; the
    next test in this worker gets the setting back."""
    if "streamlit" not in sys.modules:
        yield
        return
    import streamlit

    saved = streamlit.get_option("client.showErrorDetails")
    yield
    streamlit.set_option("client.showErrorDetails", saved)
