"""How the app feels: seconds from `streamlit run` to a usable home page, milliseconds to
compute and draw the token maps of 8 images with a model already loaded, and the
server's memory with two models loaded. Needs the development requirements (Playwright)
and Chromium; prints numbers, asserts nothing."""

from __future__ import annotations

import os
import time
from pathlib import Path


def _resident_mb(pid: int) -> float:
    total = 0
    for child in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{child}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total / 1024


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def overlay_ms(run_dirs: list[Path], images, repeats: int = 5) -> float:
    """Median milliseconds to run the model on `images` and draw every token map."""
    import statistics

    from tokenlearner.model import predict_with_maps
    from tokenlearner.overlay import overlay_grid
    from tokenlearner.runs import RunDirectory

    model, config = RunDirectory(run_dirs[0]).load_model()
    predict_with_maps(model, images)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _, maps = predict_with_maps(model, images)
        for layer in maps.values():
            for index, image in enumerate(images):
                overlay_grid(image, layer[index], config.covered_region())
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def measure(chromium: str, run_dirs: list[Path], data_dir: str) -> dict:
    from playwright.sync_api import sync_playwright

    from tokenlearner.app_server import app_server

    env = {**os.environ, "TOKENLEARNER_RUNS_DIR": str(run_dirs[0].parent), "TOKENLEARNER_DATA_DIR": data_dir}
    started = time.time()
    with app_server(env, timeout=120) as (url, server), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(url)
        page.get_by_role("heading", name="TokenLearner Explorer").wait_for(timeout=120_000)
        home_s = time.time() - started
        idle_mb = _resident_mb(server.pid)
        for run_dir in run_dirs[:2]:
            page.goto(f"{url}/attention")
            page.locator('[data-testid="stSelectbox"]').first.click()
            page.get_by_role("option").filter(has_text=f"{run_dir.parent.name}/{run_dir.name} (").click()
            page.locator('[data-testid="stImage"]').first.wait_for(timeout=120_000)
            page.wait_for_timeout(2000)
        browser.close()
        return {"home_usable_s": home_s, "server_mb_idle": idle_mb, "server_mb_two_models": _resident_mb(server.pid)}
