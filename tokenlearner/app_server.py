"""`streamlit run app.py` on a free localhost port, for the browser test and bench-app."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

REPOSITORY = Path(__file__).resolve().parent.parent


STREAMLIT_RUN = (sys.executable, "-m", "streamlit", "run", "app.py")


def wait_for_health(url: str, process: subprocess.Popen, timeout: float) -> bool:
    """Whether the server at `url` answers /_stcore/health with "ok" within `timeout`
    seconds (False as soon as `process` ends)."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


@contextlib.contextmanager
def app_server(env: dict[str, str], timeout: float = 60,
               launcher: tuple[str, ...] = STREAMLIT_RUN) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start the app with `launcher` (a command that takes Streamlit's server flags, such as
    `python -m tokenlearner serve`), wait until /_stcore/health answers, yield (url,
    process), stop it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tempfile.TemporaryFile()  # not a pipe: nobody reads it while the app runs
    process = subprocess.Popen(
        [*launcher, "--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1",
         "--browser.gatherUsageStats", "false"],
        cwd=REPOSITORY, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_for_health(url, process, timeout):
            process.kill()
            log.seek(0)
            output = log.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"streamlit did not come up at {url}: {output}")
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
