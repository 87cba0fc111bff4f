"""The HTML reports in a real headless browser (system Chromium through Playwright): the evaluation report and
the comparison page render, every image they reference loads, and the per-image table sorts on click."""
import pytest
import torch

from browser_helpers import broken_images, browser_page, require_browser
from cascadekit.metrics.compare_reports import CompareSettings, compare_reports
from cascadekit.metrics.evaluate import evaluate


def _rec(sigma):
    def rec(x, seed):
        g = torch.Generator().manual_seed(seed)
        return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return rec


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    require_browser()
    tmp = tmp_path_factory.mktemp("browser_reports")
    g = torch.Generator().manual_seed(0)
    imgs = [(f"photo_{i}", torch.rand(3, 32 + 16 * (i % 3), 48, generator=g)) for i in range(7)]
    a = evaluate(imgs, _rec(0.03), tmp / "a", metrics="psnr,ssim", progress=False, grid_samples=3, worst_k=3)
    evaluate(imgs, _rec(0.1), tmp / "b", metrics="psnr,ssim", progress=False, grid_samples=3, worst_k=3)
    assert a["n_images"] == 7
    return tmp


def test_evaluate_report_renders_and_sorts(reports):
    with browser_page() as page:
        page.goto((reports / "a" / "index.html").as_uri())
        assert page.locator("h1").inner_text() == "cascadekit evaluation"
        assert broken_images(page) == []
        srcs = page.evaluate("[...document.images].map(i => i.getAttribute('src'))")
        assert sum(s.startswith("data:image/png") for s in srcs) == 4  # histogram + size/aspect per metric
        assert sum(s.startswith("data:image/jpeg") for s in srcs) == 6  # 3 worst per metric
        assert sum(s.startswith("grids/") for s in srcs) == 3
        table = page.locator("table.sortable")
        assert table.locator("tbody tr").count() == 7
        psnr_col = ["index", "key", "width", "height", "psnr", "ssim"].index("psnr")
        table.locator("th").nth(psnr_col).click()
        shown = [float(v) for v in table.locator(f"tbody tr td:nth-child({psnr_col + 1})").all_inner_texts()]
        assert shown == sorted(shown) and len(shown) == 7
        table.locator("th").nth(psnr_col).click()
        again = [float(v) for v in table.locator(f"tbody tr td:nth-child({psnr_col + 1})").all_inner_texts()]
        assert again == sorted(shown, reverse=True)
        worst = page.locator("h3", has_text="PSNR: the 3 images with the lowest values")
        assert worst.count() == 1
        assert page.errors == []


def test_compare_page_renders_with_every_image(reports, tmp_path):
    s = compare_reports([reports / "a", reports / "b"], tmp_path / "cmp", settings=CompareSettings(n_boot=200))
    with browser_page() as page:
        page.goto((tmp_path / "cmp" / "index.html").as_uri())
        assert page.locator("h1").inner_text() == "cascadekit report comparison"
        assert broken_images(page) == []
        srcs = page.evaluate("[...document.images].map(i => i.getAttribute('src'))")
        assert sum(u.startswith("grids/") for u in srcs) == 6  # 3 images x 2 reports, side by side
        assert sum(u.startswith("data:image/png") for u in srcs) == len(s["metrics"])
        assert "b − a" in page.content() and page.errors == []
