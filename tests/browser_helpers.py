"""A real headless browser for the tests: Playwright driving the system Chromium (Debian's ``chromium``).

Playwright's own browser download is never used; without a system Chromium (or without the playwright
package) the browser tests skip with that reason. ``CASCADEKIT_CHROMIUM`` may name the executable.
"""
from __future__ import annotations

import contextlib
import os
import shutil

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str | None:
    env = os.environ.get("CASCADEKIT_CHROMIUM")
    if env:
        return env if os.path.isfile(env) else None
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


def require_browser() -> str:
    """The Chromium executable, or skip the test saying what is missing."""
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    path = chromium_path()
    if path is None:
        pytest.skip("no system Chromium found (apt-get install chromium, or set CASCADEKIT_CHROMIUM)")
    return path


@contextlib.contextmanager
def browser_page(viewport=(1280, 900)):
    """A fresh page of a headless system Chromium; console errors collected in ``page.errors``."""
    with browser_pages(1, viewport) as (page,):
        yield page


@contextlib.contextmanager
def browser_pages(n: int, viewport=(1280, 900)):
    """``n`` pages (each its own app session, like browser tabs) of one headless system Chromium."""
    from playwright.sync_api import sync_playwright

    exe = require_browser()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            pages = [browser.new_page(viewport={"width": viewport[0], "height": viewport[1]}) for _ in range(n)]
            for page in pages:
                page.errors = []
                page.on("pageerror", lambda e, page=page: page.errors.append(str(e)))
            yield pages
        finally:
            browser.close()


SHOWN_IMAGES = "[...document.images].filter(i => i.checkVisibility())"


def broken_images(page, timeout_ms: int = 30_000) -> list[str]:
    """The src (first 80 characters) of every shown <img> on the page that did not load: lazy ones are made
    eager and each is given ``timeout_ms`` to finish (images in hidden tabs are not shown, so not checked)."""
    page.wait_for_load_state("load")
    page.evaluate(f"{SHOWN_IMAGES}.forEach(i => {{ i.loading = 'eager'; i.scrollIntoView(); }})")
    try:
        page.wait_for_function(f"{SHOWN_IMAGES}.every(i => i.complete)", timeout=timeout_ms)
    except Exception:  # noqa: BLE001 - the ones still loading are reported below
        pass
    return page.evaluate(f"""{SHOWN_IMAGES}.filter(i => !(i.complete && i.naturalWidth > 0))
                            .map(i => (i.getAttribute('src') || '').slice(0, 80))""")
