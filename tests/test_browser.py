"""End to end in a real browser: `streamlit run app.py` on free localhost ports, driven by
Playwright in Debian's Chromium, on a laptop's screen (1366x768) and a phone's (390x844).
Two fresh servers, one with CIFAR-10 and one without, are each opened first by a shared
link. Screenshots of every page land in test-artifacts/: look at them."""

import os
import shutil
import time

import pytest
from conftest import REPO

from tokenlearner.app_server import app_server

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
LAPTOP = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}
PAGES = {"": "TokenLearner Explorer", "train": "Train", "attention": "Attention", "compare": "Compare",
         "flops": "FLOPs", "video": "Video"}
NAVIGATION = ["Home", "Train", "Attention", "Compare", "FLOPs", "Video"]  # app.py's, not Streamlit's own of pages/
MAIN_PICTURE = ".st-key-main_picture"
# The first links the fresh servers are opened by: two models side by side; a model's knobs.
SIDE_BY_SIDE = "attention?run=checkpoints/v11-8-tokens&compare=checkpoints/v1-8-tokens"
LINKED_CONFIG = {"tokens": 8, "depth": 6, "placement": 2}


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip("no Chromium here: install Debian's chromium package (apt-get install chromium)")
    pytest.importorskip("playwright", reason="pip install playwright (requirements-dev.txt)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        yield chromium
        chromium.close()


BUSY = """() => {
    const app = document.querySelector('[data-test-script-state]');
    const shown = selector => [...document.querySelectorAll(selector)].some(element => element.offsetParent !== null);
    return !app || app.getAttribute('data-test-script-state') !== 'notRunning'
        || shown('[data-testid="stStatusWidget"]') || shown('[data-testid="stSpinner"]')
        || shown('[data-testid="stSkeleton"]') || shown('[data-stale="true"]');
}"""


def settle(page, quiet_s: float = 2.0, timeout_s: float = 120.0) -> None:
    """Until the script has stopped, with no running indicator, spinner, placeholder or
    stale element shown, for `quiet_s` seconds on end."""
    deadline, quiet_since = time.time() + timeout_s, time.time()
    while time.time() < deadline:
        if page.evaluate(BUSY):
            quiet_since = time.time()
        elif time.time() - quiet_since >= quiet_s:
            return
        page.wait_for_timeout(200)
    raise AssertionError(f"{page.url} was still running after {timeout_s:.0f} s")


def open_page(browser, url: str, path: str, viewport=LAPTOP):
    page = browser.new_page(viewport=viewport)
    page.goto(f"{url}/{path}", timeout=90_000)
    page.get_by_role("heading", name=PAGES[path.split("?")[0]], exact=True).wait_for(timeout=90_000)
    settle(page)
    return page


def first_visit(page) -> dict:
    """What a link opened first on a fresh server shows: its navigation and layout."""
    return {
        # each link's text is its icon's name, then its title
        "navigation": [text.splitlines()[-1] for text in page.locator('[data-testid="stSidebarNav"] a').all_inner_texts()],
        "main width": page.locator('[data-testid="stMainBlockContainer"]').bounding_box()["width"],
        "exceptions": page.locator('[data-testid="stException"]').count(),
        "text": page.locator('[data-testid="stMain"]').inner_text(),
        "url": page.url,
    }


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png")


@pytest.fixture(scope="module")
def with_data(browser, tmp_path_factory):
    """A server with CIFAR-10 ($TOKENLEARNER_DATA_DIR, else a small generated folder), the
    shipped checkpoints, one untrained run to delete and an untrained video model of
    moving shapes; opened first by SIDE_BY_SIDE."""
    from cifar_files import make_cifar_folder

    from tokenlearner import ModelConfig, build_model
    from tokenlearner.moving_shapes import moving_shapes
    from tokenlearner.runs import RunDirectory

    work = tmp_path_factory.mktemp("with-data")
    config = ModelConfig()
    run = RunDirectory(work / "runs" / "untrained").create({"model": config.to_dict()})
    run.save_model(build_model(config))
    run.set_status("finished")
    video = ModelConfig(frames=8, tubelet_frames=2, num_classes=4, resize_size=32, image_size=32, patch_size=8,
                        tokenlearner="v11", num_tokens=8, placement=1)
    clips = moving_shapes(1, 1, 4, frames=8, parts=("test",)).describe()
    run = RunDirectory(work / "runs" / "untrained-video").create({"model": video.to_dict(), "data": clips})
    run.save_model(build_model(video))
    run.set_status("finished")
    env = {**os.environ, "TOKENLEARNER_RUNS_DIR": str(work / "runs")}
    env.setdefault("TOKENLEARNER_DATA_DIR", str(make_cifar_folder(work / "cifar-10-batches-py")))
    with app_server(env) as (url, _):
        page = open_page(browser, url, SIDE_BY_SIDE)
        screenshot(page, "first-link-side-by-side")
        yield {"url": url, "first visit": first_visit(page), "runs": work / "runs"}
        page.close()


@pytest.fixture(scope="module")
def without_data(browser, tmp_path_factory):
    """A server with no CIFAR-10 anywhere it looks and no runs of its own; opened first by
    a link to the Train page with LINKED_CONFIG."""
    work = tmp_path_factory.mktemp("without-data")
    env = {name: value for name, value in os.environ.items() if name != "TOKENLEARNER_DATA_DIR"}
    env.update(TOKENLEARNER_RUNS_DIR=str(work / "runs"), KERAS_HOME=str(work / "keras"))
    with app_server(env) as (url, _):
        link = "train?" + "&".join(f"{name}={value}" for name, value in LINKED_CONFIG.items())
        page = open_page(browser, url, link)
        screenshot(page, "first-link-train")
        yield {"url": url, "first visit": first_visit(page), "drawing": drawing_file(work)}
        page.close()


def drawing_file(folder):
    from tokenlearner.images import example_drawing

    path = folder / "drawing.png"
    example_drawing().save(path)
    return path


def test_a_link_opened_first_on_a_fresh_server_shows_the_app(with_data, without_data):
    from tokenlearner import ModelConfig
    from tokenlearner.flops import count

    for server in (with_data, without_data):
        seen = server["first visit"]
        assert seen["navigation"] == NAVIGATION, seen["navigation"]
        assert seen["main width"] > 900, "app.py's wide layout"
        assert seen["exceptions"] == 0
    macs = count(ModelConfig(num_tokens=8, depth=6, placement=2)).macs
    assert f"{macs / 1e6:.2f} M MACs" in without_data["first visit"]["text"], "the link's knobs are applied"
    assert all(f"{name}={value}" in without_data["first visit"]["url"] for name, value in LINKED_CONFIG.items())
    side_by_side = with_data["first visit"]["text"]
    assert "checkpoints/v11-8-tokens:" in side_by_side and "checkpoints/v1-8-tokens:" in side_by_side, \
        "both models' predictions, side by side"


def in_view(page, viewport) -> None:
    """The page's main picture is drawn and wholly inside the screen."""
    picture = page.locator(MAIN_PICTURE)
    picture.wait_for(timeout=60_000)
    box = picture.bounding_box()
    assert box["height"] > 100, f"the main picture is empty ({box})"
    assert box["y"] >= 0 and box["y"] + box["height"] <= viewport["height"], f"not wholly in view: {box}"
    assert box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"], f"not wholly in view: {box}"
    drawn = page.evaluate(f"""() => {{
        const picture = document.querySelector('{MAIN_PICTURE}');
        const images = [...picture.querySelectorAll('img')];
        return {{images: images.length, loaded: images.every(image => image.complete && image.naturalWidth > 0),
                 charts: picture.querySelectorAll('.main-svg').length}};
    }}""")
    assert drawn["images"] + drawn["charts"] > 0 and drawn["loaded"], drawn


# Compare and FLOPs read no CIFAR-10 (their pictures come from run records and counts): with data only.
WITHOUT_DATA = ["", "train", "attention"]


@pytest.mark.parametrize("setting, path", [("with_data", path) for path in PAGES]
                         + [("without_data", path) for path in WITHOUT_DATA])
def test_each_pages_main_picture_is_in_view_on_a_laptop_and_the_page_fits_a_phone(request, browser, setting, path):
    """And with CIFAR-10, the same page on a phone: no exception, nothing wider than the screen."""
    server = request.getfixturevalue(setting)
    page = open_page(browser, server["url"], path)
    if setting == "without_data" and path == "attention":  # the uploaded image's maps, the upload control in view
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(server["drawing"]))
        page.get_by_text("your image", exact=True).wait_for(timeout=60_000)
        settle(page)
        uploader = page.locator('[data-testid="stFileUploader"]').bounding_box()
        assert uploader["y"] + uploader["height"] <= LAPTOP["height"]
    screenshot(page, f"laptop-{setting.replace('_', '-')}-{path or 'home'}")
    in_view(page, LAPTOP)
    assert page.locator('[data-testid="stException"]').count() == 0
    if setting == "with_data":
        page.set_viewport_size(PHONE)  # the layout follows in the browser; the script does not run again
        settle(page)
        screenshot(page, f"phone-{path or 'home'}")
        widths = page.evaluate("""() => [document.documentElement.scrollWidth,
                                         document.querySelector('[data-testid="stMain"]').scrollWidth]""")
        assert max(widths) <= PHONE["width"], f"wider than the phone: {widths}"
        assert page.locator('[data-testid="stException"]').count() == 0
    page.close()


def test_clicking_a_run_on_compare_opens_it_on_attention(browser, with_data):
    from playwright.sync_api import expect

    page = open_page(browser, with_data["url"], "compare")
    chart = page.locator(MAIN_PICTURE).locator('[data-testid="stPlotlyChart"]')
    runs = chart.locator(".scatterlayer .trace").filter(has=page.locator(".textpoint"))
    labels = [text.text_content() for text in runs.locator(".textpoint").all()]  # SVG text has no innerText
    target = "checkpoints/v1-4-tokens"
    assert target in labels, labels
    runs.locator("path.point").nth(labels.index(target)).click(force=True)
    page.wait_for_url("**/attention?**", timeout=60_000)
    expect(page.get_by_role("combobox", name="model")).to_have_value(f"{target} (finished)", timeout=60_000)
    assert "run=checkpoints%2Fv1-4-tokens" in page.url or "run=checkpoints/v1-4-tokens" in page.url
    settle(page)
    screenshot(page, "compare-click-opened-attention")
    assert page.locator('[data-testid="stException"]').count() == 0
    page.close()


def test_deleting_a_run_asks_in_a_dialog_first(browser, with_data):
    page = open_page(browser, with_data["url"], "compare")
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.locator('[data-testid="stSelectbox"]').filter(has_text="delete a run").click()
    page.get_by_role("option", name="runs/untrained").click()
    settle(page)
    sidebar.get_by_role("button", name="Delete...").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Delete runs/untrained and all its files for good?").wait_for(timeout=30_000)
    screenshot(page, "compare-delete-dialog")
    assert (with_data["runs"] / "untrained").exists(), "nothing is deleted before the dialog's button"
    dialog.get_by_role("button", name="Delete for good").click()
    deadline = time.time() + 30
    while (with_data["runs"] / "untrained").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert not (with_data["runs"] / "untrained").exists()
    settle(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    page.close()


def test_the_sliders_on_screen_follow_a_preset_and_the_data_chosen(browser, with_data):
    """AppTest sees the script's values; only a browser shows what a reset widget displays
    (before ui.starting_at, the sliders kept their old values over the preset's)."""
    page = open_page(browser, with_data["url"], "train")
    page.get_by_role("combobox", name="start from").click()
    page.get_by_role("option", name="keras-io-8-tokens", exact=True).click()
    settle(page)
    thumbs = page.locator('[data-testid="stSliderThumbValue"]')
    assert thumbs.all_inner_texts()[:3] == ["4", "8", "3"], "depth, tokens, placement"
    page.get_by_text("clips of moving shapes (video)").click()
    settle(page)
    # the shipped video checkpoint's model and recipe: depth, tokens, placement, frames, epochs, batch, learning rate
    assert thumbs.all_inner_texts() == ["4", "8", "1", "8", "8", "64", "0.0003"]
    assert page.locator('[data-testid="stException"]').count() == 0
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
