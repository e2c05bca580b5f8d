"""End to end in a real browser: `streamlit run app.py` on a free localhost port, driven
by Playwright in Debian's Chromium. Screenshots of every page land in test-artifacts/."""

import os
import shutil

import pytest
from conftest import REPO

from tokenlearner.app_server import app_server

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
PAGES = {"": "TokenLearner Explorer", "train": "Train", "attention": "Attention", "compare": "Compare",
         "flops": "FLOPs"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        pytest.skip("no Chromium here: install Debian's chromium package (apt-get install chromium)")
    pytest.importorskip("playwright", reason="pip install playwright (requirements-dev.txt)")
    from cifar_files import make_cifar_folder

    from tokenlearner import ModelConfig, build_model
    from tokenlearner.runs import RunDirectory

    work = tmp_path_factory.mktemp("browser")
    config = ModelConfig()
    run = RunDirectory(work / "runs" / "untrained").create({"model": config.to_dict()})
    run.save_model(build_model(config))
    run.set_status("finished")
    env = {**os.environ, "TOKENLEARNER_RUNS_DIR": str(work / "runs")}
    env.setdefault("TOKENLEARNER_DATA_DIR", str(make_cifar_folder(work / "cifar-10-batches-py")))
    with app_server(env) as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        yield chromium
        chromium.close()


def open_page(browser, url, path):
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    page.goto(f"{url}/{path}")
    page.get_by_role("heading", name=PAGES[path], exact=True).wait_for(timeout=60_000)
    page.wait_for_load_state("networkidle")
    return page


@pytest.mark.parametrize("path", list(PAGES))
def test_every_page_loads_without_an_error(browser, server, path):
    page = open_page(browser, server, path)
    if path in ("", "attention"):  # the shipped checkpoint's maps, drawn over a CIFAR-10 image
        page.locator('[data-testid="stImage"]').first.wait_for(timeout=60_000)
    if path == "":
        page.get_by_role("heading", name="Model zoo", exact=True).wait_for(timeout=60_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"page-{path or 'home'}.png", full_page=True)
    assert page.locator('[data-testid="stException"]').count() == 0
    page.close()


def test_a_slider_moved_in_the_browser_changes_the_macs(browser, server):
    from playwright.sync_api import expect

    page = open_page(browser, server, "flops")
    # by its label, and retried: networkidle can come while Streamlit still streams the page
    macs = page.locator('[data-testid="stMetric"]').filter(has_text="MACs").locator('[data-testid="stMetricValue"]')
    expect(macs).to_have_text("78.07 M", timeout=30_000)
    slider = page.locator('[data-testid="stSlider"]').filter(has_text="tokens").first
    track = slider.locator('[role="group"] > div').first  # the slider's track
    box = track.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.98, box["y"] + box["height"] / 2)  # towards 16 tokens
    expect(macs).not_to_have_text("78.07 M", timeout=30_000)
    page.close()


def test_the_attention_page_shows_overlays(browser, server):
    page = open_page(browser, server, "attention")
    # the second image (the overlays) streams in after the first: wait for it, not count at once
    page.locator('[data-testid="stImage"]').nth(1).wait_for(timeout=60_000)
    assert page.locator('[data-testid="stException"]').count() == 0
    page.close()


def test_a_link_opens_the_page_with_its_config(browser, server):
    from tokenlearner import ModelConfig
    from tokenlearner.flops import count

    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    page.goto(f"{server}/flops?tokens=8&depth=6&placement=2")
    page.get_by_role("heading", name="FLOPs", exact=True).wait_for(timeout=60_000)
    expected = f"{count(ModelConfig(num_tokens=8, depth=6, placement=2)).macs / 1e6:.2f} M"
    page.wait_for_function(f"""() => document.querySelector('[data-testid="stMetricValue"]')?.innerText === "{expected}" """,
                           timeout=30_000)
    assert "tokens=8" in page.url and "depth=6" in page.url
    page.close()


def test_bench_app_measures_the_shipped_checkpoints_as_the_readme_says(cifar_dir):
    """The README's app benchmark, on two shipped checkpoints (the runs folder is then
    checkpoints/ itself, which the model picker must list once)."""
    from conftest import tokenlearner_command

    if not os.path.exists(CHROMIUM):
        pytest.skip("no Chromium here: install Debian's chromium package (apt-get install chromium)")
    result = tokenlearner_command("bench-app", "--runs", "checkpoints/v1-4-tokens", "checkpoints/v11-8-tokens",
                                  "--data-dir", str(cifar_dir), "--chromium", CHROMIUM, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("token maps of 8 images, model loaded: ") and lines[0].endswith("(forward pass and "
                                                                                             "drawing every map)")
    assert lines[1].startswith("streamlit run -> home page usable: ")
    assert lines[2].startswith("server memory: ") and lines[2].endswith("MB with 2 models loaded")
