"""`compare_reports` / `cascadekit compare`: bootstrap means, paired differences, image-set checks, CLI."""
import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cascadekit.cli.main import main
from cascadekit.metrics.compare_reports import CompareSettings, bootstrap_mean, compare_reports
from cascadekit.metrics.errors import MetricInputError
from cascadekit.metrics.evaluate import evaluate


def _images(n, seed=0, sizes=((48, 64), (64, 48), (64, 64))):
    g = torch.Generator().manual_seed(seed)
    return [(f"img{i:02d}", torch.rand(3, *sizes[i % len(sizes)], generator=g)) for i in range(n)]


def _noisy(sigma):
    def rec(x, seed):
        g = torch.Generator().manual_seed(seed)
        return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return rec


def _report(tmp_path, name, sigma, images):
    out = tmp_path / name
    evaluate(images, _noisy(sigma), out, metrics="psnr,ssim", progress=False, grid_samples=4, worst_k=2)
    return out


@pytest.fixture(scope="module")
def two_reports(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reports")
    imgs = _images(9)
    return _report(tmp, "light", 0.02, imgs), _report(tmp, "heavy", 0.1, imgs), imgs


def _psnr_column(folder):
    with open(folder / "per_image.csv", newline="") as f:
        return {r["key"]: float(r["psnr"]) for r in csv.DictReader(f)}


def test_means_intervals_and_paired_differences(two_reports, tmp_path):
    light, heavy, _ = two_reports
    s = compare_reports([light, heavy], tmp_path / "cmp", settings=CompareSettings(n_boot=500))
    a, b = _psnr_column(light), _psnr_column(heavy)
    assert s["n_images_compared"] == 9 and s["baseline"] == "light" and s["metrics"] == ["psnr", "ssim"]
    m = s["means"]["psnr"]["light"]
    assert m["mean"] == pytest.approx(np.mean(list(a.values())))
    assert m["low"] < m["mean"] < m["high"]
    d = s["paired_differences"]["psnr"]["heavy"]
    assert d["mean"] == pytest.approx(np.mean([b[k] - a[k] for k in a]))
    assert d["high"] < 0 and d["worse"] == 9 and d["better"] == 0  # more noise: lower PSNR on every image
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["paired_differences"]["psnr"]["heavy"]["n"] == 9
    with open(tmp_path / "cmp" / "compare_per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and float(rows[0]["psnr[heavy]-[light]"]) == pytest.approx(b[rows[0]["key"]] - a[rows[0]["key"]])
    grids = sorted(p.name for p in (tmp_path / "cmp" / "grids").iterdir())
    assert len(grids) == 8 and grids[0].startswith("0000_0_img00") and grids[1].startswith("0000_1_img00")


def test_bootstrap_interval_has_the_normal_width():
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, 400)
    s = bootstrap_mean(x, CompareSettings(n_boot=4000), np.random.default_rng(0))
    half = 1.96 * x.std() / np.sqrt(x.size)
    assert s["low"] < x.mean() < s["high"]
    assert (s["high"] - s["low"]) / 2 == pytest.approx(half, rel=0.1)
    s = bootstrap_mean(np.array([1.0, np.inf, 3.0]), CompareSettings(n_boot=50), np.random.default_rng(0))
    assert s["mean"] == 2.0 and s["n"] == 2 and s["n_nonfinite"] == 1


def test_different_image_sets_refused_unless_intersect(two_reports, tmp_path):
    light, _, imgs = two_reports
    other = _report(tmp_path, "fewer", 0.05, imgs[:5] + [("extra", torch.rand(3, 64, 64))])
    with pytest.raises(MetricInputError, match="different image sets.*--intersect"):
        compare_reports([light, other], tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()
    s = compare_reports([light, other], tmp_path / "cmp", settings=CompareSettings(intersect=True, n_boot=100))
    assert s["n_images_compared"] == 5 and s["intersect"]
    with pytest.raises(MetricInputError, match="not an evaluation report"):
        compare_reports([light, tmp_path], tmp_path / "cmp2")
    with pytest.raises(MetricInputError, match="one of the reports"):
        compare_reports([light, other], light, settings=CompareSettings(intersect=True))


def test_cli_compare(two_reports, tmp_path):
    light, heavy, imgs = two_reports
    out = tmp_path / "cmp"
    run = CliRunner().invoke
    r = run(main, ["compare", str(light), str(heavy), "--out", str(out), "--label", "a", "--label", "b",
                   "--bootstrap", "200"])
    assert r.exit_code == 0, r.output
    assert "PSNR  b - a: -" in r.output and (out / "index.html").is_file()
    assert json.loads((out / "compare.json").read_text())["reports"][1]["label"] == "b"
    r = run(main, ["compare", str(light), str(heavy), "--out", str(out)])
    assert r.exit_code == 2 and "--overwrite" in r.output
    other = _report(tmp_path, "other", 0.05, imgs[:4])
    r = run(main, ["compare", str(light), str(other), "--out", str(out), "--overwrite"])
    assert r.exit_code == 2 and "error: the reports evaluated different image sets" in r.output
    assert json.loads((out / "compare.json").read_text())["reports"][1]["label"] == "b"  # not removed
    r = run(main, ["compare", str(light), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "two or more" in r.output
    r = run(main, ["compare", str(light), str(heavy), "--label", "a", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--label" in r.output
