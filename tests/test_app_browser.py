"""`cascadekit app` in a real browser: Playwright driving the system Chromium against the app on the tiny weights
(127.0.0.1). Each test leaves a screenshot of its tab in $CASCADEKIT_SCREENSHOTS (docs/img/ was made this way)."""
from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the app needs gradio (pip install 'cascadekit[app]')")
from _tiny_weights import tiny_weights_dir  # noqa: E402
from app_helpers import count_generate_steps, fixtures, running_app, started, wait_until  # noqa: E402
from browser_helpers import broken_images, browser_page, browser_pages, require_browser  # noqa: E402

WAIT = 240_000  # ms: a job on 2 busy CPU cores
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    require_browser()
    weights = tiny_weights_dir(tmp_path_factory)
    files = fixtures(tmp_path_factory.mktemp("app_browser"), weights)
    with running_app(weights, files) as (demo, url):
        yield url, files


@pytest.fixture
def page(app_url):
    with browser_page(viewport=(1400, 1000)) as p:
        p.goto(app_url[0])
        p.wait_for_selector("#prompt textarea")
        yield p


def _shot(page, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("CASCADEKIT_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"app_{name}.png"), full_page=True)


def _choose(page, label: str, value: str) -> None:
    box = page.get_by_label(label, exact=True)
    box.click()
    page.locator(f"#{box.get_attribute('aria-controls')} [role=option][aria-label='{value}']").click()


def test_generate_in_the_browser(page, tmp_path):
    assert "TINY RANDOM WEIGHTS" in page.locator("#tiny-banner").inner_text()
    page.locator("#prompt textarea").fill("a lighthouse at dusk")
    _choose(page, "Width", "128")
    _choose(page, "Height", "128")
    page.locator("#generate").click()
    page.wait_for_selector("#result img", timeout=WAIT)
    link = page.locator("#pngs a").first
    link.wait_for(timeout=WAIT)
    png = page.request.get(link.get_attribute("href")).body()
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size == (128, 128)
    params = json.loads(img.text["parameters"])
    assert params["prompt"] == "a lighthouse at dusk" and params["width"] == 128 and params["tiny_weights"]
    assert img.text["prompt"] == "a lighthouse at dusk" and int(img.text["seed"]) == params["seed"]
    assert broken_images(page) == [] and page.errors == []
    _shot(page, "generate", tmp_path)


def test_reconstruct_in_the_browser(page, app_url, tmp_path):
    page.get_by_role("tab", name="Reconstruct").click()
    page.locator("#recon-images input[type=file]").set_input_files(str(app_url[1]["photo"]))
    page.get_by_label("Compare with a second decoder").check()
    page.locator("#reconstruct").click()
    page.wait_for_function("document.querySelectorAll('#recon-grids img').length >= 1", timeout=WAIT)
    page.wait_for_function("document.querySelector('#recon-table').innerText.includes('20 steps')", timeout=WAIT)
    table = page.locator("#recon-table").inner_text()
    assert "photo.png" in table and "Stage B lite, 10 steps" in table
    assert broken_images(page) == []
    _shot(page, "reconstruct", tmp_path)


def test_store_grid_pages_and_decode_in_the_browser(page, tmp_path):
    page.get_by_role("tab", name="Stores").click()
    page.locator("#open-store").click()
    page.wait_for_function("document.querySelectorAll('#store-grid img').length === 12", timeout=WAIT)
    assert "16 ok" in page.locator("#store-info textarea").input_value()
    assert "0 · img000 · caption 0" in page.locator("#store-grid").inner_text()
    page.locator("#next-page").click()
    page.wait_for_function("document.querySelectorAll('#store-grid img').length === 4", timeout=WAIT)
    assert "12 · img012 · caption 12" in page.locator("#store-grid").inner_text()
    page.locator("#store-grid img").first.click()
    page.wait_for_selector("#full-decode img", timeout=WAIT)
    page.wait_for_function("[...document.querySelectorAll('textarea')].some(t => t.value === 'img012: caption 12')",
                           timeout=WAIT)
    assert broken_images(page) == []
    _shot(page, "stores", tmp_path)


def test_broken_upload_is_a_message(page, app_url):
    page.get_by_role("tab", name="Reconstruct").click()
    page.locator("#recon-images input[type=file]").set_input_files(str(app_url[1]["broken"]))
    page.locator("#reconstruct").click()
    msg = page.get_by_text("cannot be used", exact=False).first
    msg.wait_for(timeout=WAIT)
    assert "truncated" in msg.inner_text() and "Traceback" not in page.content()


def test_store_skip_reasons_in_the_browser(page, tmp_path):
    page.get_by_role("tab", name="Stores").click()
    _choose(page, "Store (--store)", "skips.zarr")
    page.locator("#open-store").click()
    page.wait_for_function("document.querySelector('#store-skips').innerText.includes('truncated')", timeout=WAIT)
    assert "cut" in page.locator("#store-skips").inner_text()
    assert "1 skipped" in page.locator("#store-info textarea").input_value()
    _shot(page, "stores_skips", tmp_path)


def _start_generate(page, url: str, prompt: str) -> None:
    page.goto(url)
    page.wait_for_selector("#prompt textarea")
    page.locator("#prompt textarea").fill(prompt)
    _choose(page, "Width", "128")
    _choose(page, "Height", "128")
    page.locator("#generate").click()


def test_cancel_is_per_tab_and_a_closed_tab_frees_its_job(app_url, monkeypatch):
    runs = count_generate_steps(monkeypatch, delay=0.15)  # Generate's 20 default steps: >= 3 s
    with browser_pages(2) as (a, b):
        b.goto(app_url[0])
        _start_generate(a, app_url[0], "tab a")
        wait_until(started(runs, 1))
        b.locator("#cancel-generate").click()  # another tab's Cancel: tab a's job runs on
        a.wait_for_selector("#result img", timeout=WAIT)
        wait_until(lambda: runs[0]["t1"] is not None)
        assert runs[0]["counts"]["Stage C"] == 20
        a.locator("#generate").click()
        wait_until(started(runs, 2))
        a.locator("#cancel-generate").click()  # its own Cancel: stopped at the next step
        wait_until(lambda: runs[1]["t1"] is not None, timeout=30)
        assert runs[1]["counts"]["Stage C"] < 20
        _start_generate(b, app_url[0], "tab b")
        wait_until(started(runs, 3))
        b.close()  # the tab goes away mid-job: its job stops at the next step
        t = time.monotonic()
        wait_until(lambda: runs[2]["t1"] is not None, timeout=30)
        assert runs[2]["counts"]["Stage C"] < 20 and runs[2]["t1"] < t + 10
