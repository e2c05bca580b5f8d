"""A rehearsal of the public demo, run before putting it on the internet: the app started
as a host starts it (provisioned, demo mode, `python -m tokenlearner serve`, the server
on one CPU and the browser on another, a full-size CIFAR-10 folder), then several
visitors at once for a while, each a context of one headless Chromium, doing what
visitors do: the home page, token maps of test images and of uploads (hostile ones
among them), another model, Compare, FLOPs, some pressing Start at the same moment and
one pressing Stop.

It prints what an operator needs to know: how many jobs the simultaneous Starts started
(one is right), the server's peak memory (PSS, so shared pages count once) and its
children's, the time from a page's request to its first picture, and every error a
visitor saw that they did not cause. Numbers only: it asserts nothing. Needs the
development requirements (Playwright) and Chromium.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tokenlearner.app_server import app_server
from tokenlearner.data import META, TEST_BATCH, TRAIN_BATCHES, load_cifar10

FULL_TRAIN_IMAGES, FULL_TEST_IMAGES = 50_000, 10_000
BATCH_PICKLE_PROTOCOL = 3
PICTURE = '[data-testid="stImage"] img, [data-testid="stPlotlyChart"] .main-svg'
# What the server has sent once a picture's element is on the page, before the browser has drawn it.
DELIVERED = '[data-testid="stImage"], [data-testid="stPlotlyChart"]'
# Error boxes a visitor's own action explains: refused uploads, a Start that lost the race.
VISITOR_CAUSED = ("the limit is", "is not a PNG or JPEG", "already running", "exists already")
PAGE_TIMEOUT_MS = 120_000
RACE_NAME = "rehearsal-"


def make_full_size_folder(sample: str | os.PathLike, folder: str | os.PathLike, train_images: int = FULL_TRAIN_IMAGES,
                          test_images: int = FULL_TEST_IMAGES, seed: int = 0) -> Path:
    """A `cifar-10-batches-py` folder of the official format and, by default, the full
    set's size (five training batches of 10,000 and a test batch of 10,000), made from a
    sample of CIFAR-10 by repeating its images with a little noise (+-2 per channel), as a
    host's memory and loading times depend on the size, not on which images they are.
    Pickled as the sample is, pixels as raw bytes (protocol 3): Python 3 at protocol 2
    writes bytes as text that unpickles five times slower and takes 45 MB a batch, where
    the official batches take 31. A folder already made with these sizes is reused."""
    folder, sample_data = Path(folder), load_cifar10(sample)
    sizes = (*[train_images // len(TRAIN_BATCHES)] * len(TRAIN_BATCHES), test_images)
    marker = folder / ".made-from"
    made_from = f"{Path(sample).resolve()} {sizes} {seed} protocol {BATCH_PICKLE_PROTOCOL}"
    if marker.is_file() and marker.read_text() == made_from:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, rows in zip((*TRAIN_BATCHES, TEST_BATCH), sizes, strict=True):
        source_images = sample_data.test_images if name == TEST_BATCH else sample_data.train_images
        source_labels = sample_data.test_labels if name == TEST_BATCH else sample_data.train_labels
        picked = rng.integers(0, len(source_labels), rows)
        noise = rng.integers(-2, 3, (rows, 32, 32, 3), dtype=np.int16)
        images = np.clip(source_images[picked].astype(np.int16) + noise, 0, 255).astype(np.uint8)
        batch = {b"batch_label": name.encode(), b"labels": source_labels[picked].tolist(),
                 b"data": np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(rows, 3072)),
                 b"filenames": [f"rehearsal_{index}.png".encode() for index in range(rows)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=BATCH_PICKLE_PROTOCOL))
    shutil.copyfile(Path(sample) / META, folder / META)
    marker.write_text(made_from)
    return folder


def uploads(folder: Path) -> list[Path]:
    """What visitors upload: a photo-sized JPEG, and two PNGs of a few tens of kB that
    decode to 16 megapixels (16-bit grey, RGBA), which a demo refuses."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    files = {"photo.jpg": Image.fromarray(np.linspace(0, 255, 1200 * 900 * 3).astype(np.uint8).reshape(900, 1200, 3)),
             "grey-16-bit.png": Image.fromarray(np.full((4000, 4000), 1000, np.uint16)),
             "rgba.png": Image.fromarray(np.full((4000, 4000, 4), 99, np.uint8))}
    for name, image in files.items():
        if not (folder / name).exists():
            image.save(folder / name)
    return [folder / name for name in files]


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (children made by any of its threads, and theirs)."""
    found, queue = [], [pid]
    while queue:
        parent = queue.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                for child in map(int, children.read_text().split()):
                    found.append(child)
                    queue.append(child)
    return found


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process `pid` so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class MemoryWatch:
    """Samples the PSS of a process and of its descendants twice a second; keeps the peaks."""

    def __init__(self, pid: int):
        self.pid, self.server_peak_kb, self.children_peak_kb = pid, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def now_kb(self) -> int:
        return _pss_kb(self.pid)

    def _watch(self):
        while not self._stop.wait(0.5):
            self.server_peak_kb = max(self.server_peak_kb, _pss_kb(self.pid))
            self.children_peak_kb = max(self.children_peak_kb, sum(map(_pss_kb, _descendants(self.pid))))


@dataclass
class Observations:
    picture_s: dict[str, list[float]] = field(default_factory=dict)
    delivered_s: list[float] = field(default_factory=list)
    unexpected_errors: list[str] = field(default_factory=list)
    visitor_caused_errors: int = 0
    visits: int = 0
    start_outcomes: list[str] = field(default_factory=list)
    stop_pressed: bool = False

    def picture(self, page: str, seconds: float) -> None:
        self.picture_s.setdefault(page, []).append(seconds)


async def _errors(page, where: str, seen: Observations) -> None:
    exceptions = await page.locator('[data-testid="stException"]').all_inner_texts()
    seen.unexpected_errors += [f"{where}: exception {text[:200]}" for text in exceptions]
    for text in await page.locator('[data-testid="stAlertContentError"]').all_inner_texts():
        if any(cause in text for cause in VISITOR_CAUSED):
            seen.visitor_caused_errors += 1
        else:
            seen.unexpected_errors.append(f"{where}: {text[:200]}")


async def _settle(page) -> None:
    """Until Streamlit has finished the rerun: its status widget gone for a moment."""
    running = page.locator('[data-testid="stStatusWidget"]')
    with contextlib.suppress(Exception):
        await running.wait_for(state="hidden", timeout=PAGE_TIMEOUT_MS)
    await page.wait_for_timeout(300)


PAGE_TITLES = {"": "Home", "train": "Train", "attention": "Attention", "compare": "Compare", "flops": "FLOPs"}


async def _open(page, url: str, path: str, seen: Observations, picture: bool = True) -> None:
    """Go to a page as a visitor does: by the sidebar's navigation once the app is open
    (a link opened afresh the first time), and time it until its first picture shows."""
    started = time.perf_counter()
    link = page.locator('[data-testid="stSidebarNav"] a').filter(has_text=PAGE_TITLES[path])
    if await link.count():
        await link.first.click()
    else:
        await page.goto(f"{url}/{path}")
    if picture:
        await page.locator(DELIVERED).first.wait_for(state="attached", timeout=PAGE_TIMEOUT_MS)
        seen.delivered_s.append(time.perf_counter() - started)
        await page.locator(PICTURE).filter(visible=True).first.wait_for(timeout=PAGE_TIMEOUT_MS)
        seen.picture(path or "home", time.perf_counter() - started)
    await _settle(page)
    seen.visits += 1
    await _errors(page, path or "home", seen)


async def _upload(page, url: str, image: Path, seen: Observations) -> None:
    await _open(page, url, "attention", seen)
    await page.get_by_text("my own image").click()
    await page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(image))
    shown = page.get_by_text("your image", exact=True).or_(page.locator('[data-testid="stAlertContentError"]'))
    await shown.first.wait_for(timeout=PAGE_TIMEOUT_MS)
    await _settle(page)
    await _errors(page, f"upload {image.name}", seen)


async def _other_model(page, url: str, seen: Observations, model: str) -> None:
    """Another model's maps, opened by a shared link (?run=...), as a second model for the server to hold."""
    started = time.perf_counter()
    await page.goto(f"{url}/attention?run={model}")
    await page.locator(PICTURE).filter(visible=True).nth(1).wait_for(timeout=PAGE_TIMEOUT_MS)
    seen.picture("attention", time.perf_counter() - started)
    await _settle(page)
    seen.visits += 1
    await _errors(page, f"attention {model}", seen)


async def _race_to_start(page, url: str, name: str, barrier: asyncio.Barrier, seen: Observations) -> str:
    """Press Start at the same moment as the other racers; what the page then said."""
    await _open(page, url, "train", seen, picture=False)
    field = page.get_by_label("run name")
    await field.fill(name)
    await field.press("Enter")
    await page.wait_for_timeout(1000)  # the rerun the new name starts
    await _settle(page)
    with contextlib.suppress(asyncio.BrokenBarrierError):  # a racer that failed before the line: start anyway
        await barrier.wait()
    await page.get_by_role("button", name="Start training").click()
    answer = page.locator('[data-testid="stAlertContentError"]').or_(page.get_by_text("Starting: loading"))
    await answer.first.wait_for(timeout=PAGE_TIMEOUT_MS)
    await _settle(page)
    errors = await page.locator('[data-testid="stAlertContentError"]').all_inner_texts()
    seen.start_outcomes.append(errors[0] if errors else "no error shown")
    await _errors(page, "train", seen)
    return seen.start_outcomes[-1]


async def _press_stop(page, deadline: float, seen: Observations) -> None:
    """Stop the job this visitor started once it shows its Stop button (after its first
    step), watching the job until then, as its starter would, but not past the end."""
    stop = page.get_by_role("button", name="Stop")
    with contextlib.suppress(Exception):
        await stop.wait_for(timeout=max(1.0, deadline - time.time()) * 1000)
        await stop.click()
        seen.stop_pressed = True
        await _settle(page)


async def _visitor(browser, url: str, runs: Path, index: int, deadline: float,
                   race: tuple[asyncio.Barrier, float] | None, images: list[Path], second_model: str,
                   seen: Observations) -> None:
    context = await browser.new_context(viewport={"width": 1366, "height": 768})
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    page = await context.new_page()
    actions = [lambda: _open(page, url, "", seen), lambda: _open(page, url, "attention", seen),
               lambda: _upload(page, url, images[index % len(images)], seen), lambda: _open(page, url, "compare", seen),
               lambda: _other_model(page, url, seen, second_model), lambda: _open(page, url, "flops", seen)]
    step = index
    try:
        if race is not None:
            barrier, start_after = race
            await asyncio.sleep(start_after)
            try:
                await _race_to_start(page, url, f"{RACE_NAME}{index}", barrier, seen)
            except Exception as error:
                barrier.abort()  # the others press Start anyway, and say so
                seen.unexpected_errors.append(f"visitor {index}, Start: {type(error).__name__}: "
                                              f"{str(error).splitlines()[0][:200]}")
            if (runs / f".{RACE_NAME}{index}.log").exists():  # this visitor's Start is the one that started a job
                await _press_stop(page, deadline, seen)
        while time.time() < deadline:
            try:
                await actions[step % len(actions)]()
            except Exception as error:  # a page that never showed what it should is an error the visitor saw
                seen.unexpected_errors.append(f"visitor {index}, action {step % len(actions)}: "
                                              f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
            step += 1
    finally:
        await context.close()


async def _first_overlay_s(browser, url: str) -> float:
    """Seconds from the first request to /attention to its first token overlay (its first picture)."""
    context = await browser.new_context(viewport={"width": 1366, "height": 768})
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    page = await context.new_page()
    started = time.perf_counter()
    await page.goto(f"{url}/attention")
    await page.locator('[data-testid="stImage"] img').first.wait_for(timeout=PAGE_TIMEOUT_MS)
    seconds = time.perf_counter() - started
    await context.close()
    return seconds


async def _drive(url: str, runs: Path, chromium: str, sessions: int, seconds: float, images: list[Path],
                 second_model: str, seen: Observations) -> float:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        first_overlay_s = await _first_overlay_s(browser, url)
        racers = min(3, sessions)
        barrier, deadline = asyncio.Barrier(racers), time.time() + seconds
        await asyncio.gather(*(
            _visitor(browser, url, runs, index, deadline, (barrier, min(5.0, seconds / 4)) if index < racers else None,
                     images, second_model, seen)
            for index in range(sessions)))
        await browser.close()
    return first_overlay_s


def _pin(pid_or_self: int, cpu: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setaffinity(pid_or_self, {cpu})


def rehearse(sample: str | os.PathLike, chromium: str, sessions: int = 8, seconds: float = 60,
             train_images: int = FULL_TRAIN_IMAGES, test_images: int = FULL_TEST_IMAGES,
             work: str | os.PathLike | None = None, second_model: str = "checkpoints/v11-8-tokens",
             report=print) -> dict:
    """Provision a demo on a folder made from `sample` (`make_full_size_folder`), serve it
    and drive `sessions` visitors for `seconds`; returns the measurements."""
    work = Path(work) if work else Path(tempfile.gettempdir()) / "tokenlearner-rehearsal"
    report(f"making a CIFAR-10 folder of {train_images:,} + {test_images:,} images in {work}")
    data = make_full_size_folder(sample, work / "cifar-10-batches-py", train_images, test_images)
    images = uploads(work / "uploads")
    runs = Path(tempfile.mkdtemp(prefix="runs-", dir=work))
    env = {**os.environ, "TOKENLEARNER_DEMO": "1", "TOKENLEARNER_DATA_DIR": str(data),
           "TOKENLEARNER_RUNS_DIR": str(runs)}
    report("provisioning: python -m tokenlearner provision")
    subprocess.run([sys.executable, "-m", "tokenlearner", "provision", "--data-dir", str(data)], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    server_cpu, browser_cpu = cpus[0], cpus[-1]
    launcher = (sys.executable, "-m", "tokenlearner", "serve")
    if shutil.which("taskset") and len(cpus) > 1:
        launcher = ("taskset", "-c", str(server_cpu), *launcher)
    seen = Observations()
    saved_affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    report(f"serving on CPU {server_cpu}, {sessions} visitors on CPU {browser_cpu} for {seconds:.0f} s")
    try:
        with app_server(env, timeout=180, launcher=launcher) as (url, server), MemoryWatch(server.pid) as memory:
            _pin(0, browser_cpu)  # this process, and the browser it starts
            server_cpu_start, wall_start = cpu_seconds(server.pid), time.perf_counter()
            try:
                first_overlay_s = asyncio.run(
                    _drive(url, runs, chromium, sessions, seconds, images, second_model, seen))
            finally:
                if saved_affinity:
                    os.sched_setaffinity(0, saved_affinity)
            server_busy = (cpu_seconds(server.pid) - server_cpu_start) / (time.perf_counter() - wall_start)
            server_end_kb = memory.now_kb()
            # What start_job makes before it starts a job: each log is one job started.
            jobs_started = len(list(runs.glob(".*.log")))  # only the race starts jobs
            _end_jobs(runs)
    finally:
        shutil.rmtree(runs, ignore_errors=True)
    pictures = [value for values in seen.picture_s.values() for value in values]
    return {
        "sessions": sessions, "seconds": seconds, "train_images": train_images, "test_images": test_images,
        "first_overlay_s": first_overlay_s,
        "jobs_started_by_simultaneous_starts": jobs_started,
        "simultaneous_starts": len(seen.start_outcomes), "start_outcomes": seen.start_outcomes,
        "stop_pressed": seen.stop_pressed,
        "server_cpu_busy": server_busy,
        "server_peak_pss_mb": memory.server_peak_kb / 1024, "server_end_pss_mb": server_end_kb / 1024,
        "children_peak_pss_mb": memory.children_peak_kb / 1024,
        "picture_p50_s": statistics.median(pictures) if pictures else None,
        "picture_p95_s": _percentile(pictures, 95), "pictures": len(pictures), "visits": seen.visits,
        "delivered_p50_s": statistics.median(seen.delivered_s) if seen.delivered_s else None,
        "delivered_p95_s": _percentile(seen.delivered_s, 95),
        "picture_p50_s_by_page": {page: statistics.median(values) for page, values in seen.picture_s.items()},
        "visitor_caused_errors": seen.visitor_caused_errors, "unexpected_errors": seen.unexpected_errors,
    }


def _percentile(values: list[float], percent: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(percent / 100 * (len(ordered) - 1))))]


def _end_jobs(runs: Path) -> None:
    """End the job the rehearsal started, wherever it is (before its first step it reads no STOP file)."""
    import signal

    from tokenlearner import processes
    from tokenlearner.files import read_json
    from tokenlearner.jobs import LOCK

    with contextlib.suppress(ValueError, OSError):
        process = read_json(runs / LOCK)["process"]
        if processes.alive(process):
            os.kill(process["pid"], signal.SIGTERM)


def summary_lines(result: dict) -> list[str]:
    by_page = ", ".join(f"{page} {value:.2f}" for page, value in result["picture_p50_s_by_page"].items())
    lines = [
        f"{result['sessions']} visitors for {result['seconds']:.0f} s on a folder of {result['train_images']:,} + "
        f"{result['test_images']:,} images: {result['visits']} page visits, {result['pictures']} pictures",
        f"first token overlay on the fresh server: {result['first_overlay_s']:.1f} s after the request",
        f"simultaneous Starts: {result['simultaneous_starts']}, jobs started: "
        f"{result['jobs_started_by_simultaneous_starts']}; Stop pressed: {'yes' if result['stop_pressed'] else 'no'}",
        f"server CPU busy {100 * result['server_cpu_busy']:.0f}% of the time (its own core; the browser has the "
        "other, so on one core the visitors' rendering adds to the times below)",
        f"server PSS: peak {result['server_peak_pss_mb']:.0f} MB, {result['server_end_pss_mb']:.0f} MB at the end "
        f"(two models loaded); its children (the training job): peak {result['children_peak_pss_mb']:.0f} MB",
    ]
    if result["picture_p50_s"] is not None:
        lines.append(f"time to a page's first picture: p50 {result['picture_p50_s']:.2f} s, p95 "
                     f"{result['picture_p95_s']:.2f} s (p50 by page: {by_page}); to its element arriving from "
                     f"the server: p50 {result['delivered_p50_s']:.2f} s, p95 {result['delivered_p95_s']:.2f} s")
    lines.append(f"errors: {len(result['unexpected_errors'])} the visitors did not cause, "
                 f"{result['visitor_caused_errors']} they did (refused uploads, a Start that lost the race)")
    lines += [f"  {error}" for error in result["unexpected_errors"][:20]]
    return lines
