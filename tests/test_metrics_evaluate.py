"""The evaluation driver: report files, mixed/bad inputs, seeds, batch-size independence, early weight errors."""
import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from cascadekit.metrics.errors import MetricInputError, MissingWeightsError
from cascadekit.metrics.evaluate import evaluate, parse_metrics
from cascadekit.metrics.pixel import psnr_per_image
from metrics_weights import backbone_dir, empty_torch_home  # noqa: F401  (fixtures)


def noisy(x, seed):
    """A stand-in codec: deterministic per (batch seed), adds mild noise."""
    g = torch.Generator().manual_seed(seed)
    return (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)


def per_image_offset(x, seed):
    """Deterministic per image (independent of batching): a brightness offset."""
    return (x * 0.9 + 0.05).clamp(0, 1)


def to_tensor(img):
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255


def rgb(seed, w=64, h=64):
    g = np.random.default_rng(seed)
    return Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def mixed_inputs(tmp_path):
    good = tmp_path / "good.png"
    rgb(1).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    return [
        ("a", rgb(0)),
        ("gray", rgb(2).convert("L")),
        ("rgba", rgb(3).convert("RGBA")),
        ("file", good),
        ("broken", bad),
        ("wide", rgb(4, w=80)),  # another size: its own batch
        ("tensor", torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(5))),
    ]


def test_report_files_and_values(tmp_path, backbone_dir):  # noqa: F811
    out = tmp_path / "report"
    seen = []

    def rec(x, seed, keys):
        seen.append((list(keys), seed))
        return noisy(x, seed)

    res = evaluate(mixed_inputs(tmp_path), rec, out, seed=7, batch_size=3, weights_dir=backbone_dir,
                   metrics="psnr,ssim,lpips", grid_samples=2, progress=False)
    assert res["n_images"] == 6
    assert [s["key"] for s in res["skipped"]] == ["broken"] and "cannot read" in res["skipped"][0]["reason"]
    assert {c["key"] for c in res["converted"]} == {"gray", "rgba"}
    # batches: consecutive same-size images up to 3; seed = seed + index of the batch's first image
    assert seen == [(["a", "gray", "rgba"], 7), (["file"], 10), (["wide"], 11), (["tensor"], 12)]

    data = json.loads((out / "metrics.json").read_text())
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert [r["key"] for r in rows] == ["a", "gray", "rgba", "file", "wide", "tensor"]
    assert rows[4]["width"] == "80"
    psnrs = [float(r["psnr"]) for r in rows]
    assert data["aggregate"]["psnr"]["mean"] == pytest.approx(np.mean(psnrs), rel=1e-12)
    assert data["aggregate"]["psnr"]["count"] == 6
    # per-image PSNR of exactly what the codec saw and returned (gray replicated to RGB, opaque RGBA as RGB)
    batch = torch.stack([to_tensor(rgb(0)), to_tensor(rgb(2).convert("L").convert("RGB")), to_tensor(rgb(3))])
    assert psnrs[:3] == pytest.approx(psnr_per_image(noisy(batch, 7), batch).tolist(), rel=1e-12)
    assert all(0 < float(r["lpips"]) for r in rows) and all(0 < float(r["ssim"]) < 1 for r in rows)
    assert "fid" not in data["aggregate"] and not (out / "fid_stats_original.npz").exists()
    assert data["settings"]["seed"] == 7 and data["settings"]["data_range"] == 1.0
    grids = sorted((out / "grids").glob("*.png"))
    assert len(grids) == 2
    g = Image.open(grids[0])
    assert g.size == (3 * 64 + 8, 64)  # original | reconstruction | heat-map
    html = (out / "index.html").read_text()
    assert "grids/" + grids[0].name in html and "broken" in html and f"{data['aggregate']['psnr']['mean']:.4f}" in html


def test_fid_in_the_report(tmp_path, backbone_dir):  # noqa: F811
    imgs = [(f"k{i}", rgb(i, 32, 32)) for i in range(2)]
    res = evaluate(imgs, noisy, tmp_path / "r", metrics="fid", weights_dir=backbone_dir, progress=False)
    assert res["aggregate"]["fid"] > 0 and set(res["aggregate"]) == {"fid"}
    from cascadekit.metrics.fid import frechet_distance, load_stats

    mu1, s1, n1 = load_stats(tmp_path / "r" / "fid_stats_original.npz")
    mu2, s2, n2 = load_stats(tmp_path / "r" / "fid_stats_reconstruction.npz")
    assert n1 == n2 == 2 and frechet_distance(mu1, s1, mu2, s2) == pytest.approx(res["aggregate"]["fid"])


def test_identity_gives_perfect_scores_and_inf_is_written_as_string(tmp_path, backbone_dir):  # noqa: F811
    imgs = [(f"k{i}", rgb(i)) for i in range(3)]
    res = evaluate(imgs, lambda x: x.clone(), tmp_path / "r", metrics=("psnr", "ssim", "lpips"),
                   weights_dir=backbone_dir, progress=False)
    assert math.isinf(res["aggregate"]["psnr"]["mean"])
    assert res["aggregate"]["ssim"]["mean"] == pytest.approx(1.0, abs=1e-12)
    assert res["aggregate"]["lpips"]["mean"] == 0.0
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["aggregate"]["psnr"]["mean"] == "inf"


def test_results_do_not_depend_on_batch_size(tmp_path):
    imgs = [(f"k{i}", rgb(i)) for i in range(5)]
    r2 = evaluate(imgs, per_image_offset, tmp_path / "b2", metrics="psnr,ssim", batch_size=2, progress=False)
    r5 = evaluate(imgs, per_image_offset, tmp_path / "b5", metrics="psnr,ssim", batch_size=5, progress=False)
    for m in ("psnr", "ssim"):
        assert r2["aggregate"][m]["mean"] == pytest.approx(r5["aggregate"][m]["mean"], rel=1e-12)


def test_max_images_counts_evaluated_images(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    imgs = [("bad", bad)] + [(f"k{i}", rgb(i)) for i in range(4)]
    res = evaluate(imgs, lambda x: x, tmp_path / "r", metrics="psnr", max_images=2, progress=False)
    assert res["n_images"] == 2 and [s["key"] for s in res["skipped"]] == ["bad"]


def test_same_seed_same_numbers(tmp_path):
    imgs = [(f"k{i}", rgb(i)) for i in range(3)]
    a = evaluate(imgs, noisy, tmp_path / "a", seed=3, metrics="psnr", progress=False)
    b = evaluate(imgs, noisy, tmp_path / "b", seed=3, metrics="psnr", progress=False)
    c = evaluate(imgs, noisy, tmp_path / "c", seed=4, metrics="psnr", progress=False)
    assert a["aggregate"] == b["aggregate"] and a["aggregate"] != c["aggregate"]


def test_seed_goes_to_global_rng_when_callable_takes_none(tmp_path):
    imgs = [("k", rgb(0))]
    a = evaluate(imgs, lambda x: (x + 0.05 * torch.randn_like(x)).clamp(0, 1), tmp_path / "a", seed=1,
                 metrics="psnr", progress=False)
    b = evaluate(imgs, lambda x: (x + 0.05 * torch.randn_like(x)).clamp(0, 1), tmp_path / "b", seed=1,
                 metrics="psnr", progress=False)
    assert a["aggregate"] == b["aggregate"]


def test_bad_reconstruction_is_explained(tmp_path):
    imgs = [("k", rgb(0))]
    with pytest.raises(MetricInputError, match="same shape"):
        evaluate(imgs, lambda x: x[..., :32, :32], tmp_path / "r", metrics="psnr", progress=False)
    with pytest.raises(MetricInputError, match="NaN"):
        evaluate(imgs, lambda x: x * float("nan"), tmp_path / "r", metrics="psnr", progress=False)


def test_reconstruct_errors_skip_the_batch(tmp_path):
    imgs = [("small", rgb(0, 32, 32)), ("ok", rgb(1))]

    def picky(x):
        if x.shape[-1] < 64:
            raise RuntimeError("images must be at least 64 pixels wide")
        return x

    res = evaluate(imgs, picky, tmp_path / "r", metrics="psnr", progress=False)
    assert res["n_images"] == 1
    assert res["skipped"] == [{"key": "small", "reason": "reconstruct failed on its batch: RuntimeError: "
                                                         "images must be at least 64 pixels wide"}]


def test_images_too_small_to_measure_are_skipped(tmp_path, backbone_dir):  # noqa: F811
    imgs = [("tiny", rgb(0, 8, 8)), ("ok", rgb(1))]
    res = evaluate(imgs, lambda x: x, tmp_path / "r", metrics="psnr,ssim,lpips", weights_dir=backbone_dir,
                   progress=False)
    assert res["n_images"] == 1 and res["skipped"][0]["key"] == "tiny"
    assert "11" in res["skipped"][0]["reason"]  # the SSIM window


def test_nothing_readable_still_writes_report(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(MetricInputError, match="no image could be evaluated"):
        evaluate([("bad", bad)], lambda x: x, tmp_path / "r", metrics="psnr", progress=False)
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["skipped"][0]["key"] == "bad"


def test_missing_weights_fail_before_reconstructing(tmp_path, empty_torch_home):  # noqa: F811
    called = []
    with pytest.raises(MissingWeightsError, match="alexnet-owt-7be5be79.pth"):
        evaluate([("k", rgb(0))], lambda x: called.append(1) or x, tmp_path / "r", metrics="psnr,lpips",
                 progress=False)
    assert called == []


def test_parse_metrics():
    assert parse_metrics("fid, psnr") == ("psnr", "fid")
    with pytest.raises(MetricInputError, match="unknown"):
        parse_metrics("psnr,mse")
