"""FID: Fréchet distance vs scipy, streaming float64 statistics, npz round trip, Inception path, folders."""
import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from cascadekit.metrics.errors import BadWeightsError, MetricInputError, MissingWeightsError
from cascadekit.metrics.fid import (FeatureStats, InceptionFeatures, fid_folders, folder_stats, frechet_distance,
                                    load_stats, save_stats, to_uint8)
from metrics_weights import INCEPTION, backbone_dir, empty_torch_home  # noqa: F401  (fixtures)


def gaussian_features(n, d, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    return rng.standard_normal((n, d)) @ mix + shift


def scipy_fid(f1, f2):
    """The textbook computation, directly with scipy.linalg.sqrtm."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_distance_matches_scipy_sqrtm_on_gaussians():
    f1 = gaussian_features(400, 24, 0)
    f2 = gaussian_features(300, 24, 1, shift=0.3) * 1.5
    s1, s2 = FeatureStats(24), FeatureStats(24)
    s1.update(f1)
    s2.update(f2)
    ours = frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma)
    assert ours == pytest.approx(scipy_fid(f1, f2), rel=1e-9)
    assert ours > 1.0


def test_frechet_distance_diagonal_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-12)
    assert frechet_distance(mu1, np.diag(v1), mu1, np.diag(v1)) == pytest.approx(0.0, abs=1e-12)


def test_frechet_distance_of_identical_statistics_is_never_negative():
    # unclamped, 6 of these 10 seeds give -2e-13..-5e-13 (float64 rounding of tr(s1) + tr(s2) - 2 tr(sqrt(s1 s2)))
    for seed in range(10):
        f = gaussian_features(50, 64, seed) * 3 + 1
        s = FeatureStats(64)
        s.update(f)
        value = frechet_distance(s.mu, s.sigma, s.mu, s.sigma)
        assert 0.0 <= value < 1e-9


def test_frechet_distance_rejects_mismatched_statistics():
    with pytest.raises(MetricInputError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_streaming_stats_equal_numpy_and_do_not_depend_on_batch_size():
    f = gaussian_features(37, 16, 3, shift=100.0)  # large offset: naive sum-of-squares would lose digits
    results = []
    for bs, flush in ((2, 1), (5, 1), (37, 1), (2, 8), (5, 256)):
        s = FeatureStats(16, flush_rows=flush)
        for i in range(0, len(f), bs):
            s.update(torch.from_numpy(f[i:i + bs]))
        results.append(s)
        assert s.n == 37
        assert np.allclose(s.mu, f.mean(0), rtol=0, atol=1e-11)
        assert np.allclose(s.sigma, np.cov(f, rowvar=False), rtol=0, atol=1e-11)
        assert s.mean.dtype == np.float64 and s.comoment.dtype == np.float64
    assert np.allclose(results[0].sigma, results[1].sigma, rtol=0, atol=1e-12)


def test_stats_need_two_samples():
    s = FeatureStats(4)
    s.update(np.ones((1, 4)))
    with pytest.raises(MetricInputError, match="at least 2"):
        s.sigma


def test_save_load_round_trip_and_pytorch_fid_files(tmp_path):
    s = FeatureStats(8)
    s.update(gaussian_features(10, 8, 0))
    p = save_stats(s, tmp_path / "ref.npz")
    mu, sigma, n = load_stats(p)
    assert n == 10 and np.array_equal(mu, s.mu) and np.array_equal(sigma, s.sigma)
    np.savez(tmp_path / "pf.npz", mu=mu, sigma=sigma)  # pytorch-fid layout: only mu and sigma
    assert load_stats(tmp_path / "pf.npz")[2] is None
    np.savez(tmp_path / "bad.npz", mean=mu)
    with pytest.raises(MetricInputError, match="'mu' and 'sigma'"):
        load_stats(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(MetricInputError, match="cannot read"):
        load_stats(tmp_path / "junk.npz")


def test_to_uint8_rounds_like_png_export():
    x = torch.tensor([0.0, 0.6 / 255, 1.49 / 255, 1.51 / 255, 1.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert to_uint8(x)[0, 0, 0].tolist() == [0, 1, 1, 2, 255]
    with pytest.raises(MetricInputError, match=r"\[0,1\]"):
        to_uint8(x * 2 - 1)


@pytest.fixture(scope="module")
def inception(backbone_dir):  # noqa: F811
    return InceptionFeatures(weights_dir=backbone_dir)


def test_inception_identical_sets_give_zero_and_different_sets_do_not(inception, backbone_dir, tmp_path):  # noqa: F811
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 48, 48, generator=g)
    b = (a * 0.5 + 0.4).clamp(0, 1)
    for name, imgs in (("a", a), ("b", b)):  # the same images as 8-bit PNG files
        (tmp_path / name).mkdir()
        for i, x in enumerate(to_uint8(imgs)):
            Image.fromarray(x.permute(1, 2, 0).numpy()).save(tmp_path / name / f"{i}.png")
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG not really")

    fa = inception(a)  # tensors, one batch of 3
    assert fa.shape == (3, 2048) and fa.dtype == torch.float64
    sa = FeatureStats()
    sa.update(fa)
    skipped = []
    sb = folder_stats(tmp_path / "b", inception, batch_size=2, skipped=skipped)  # files, batches of 2 + 1
    assert sb.n == 3 and [s[0].endswith("broken.png") for s in skipped] == [True]
    scale = np.trace(sa.sigma)
    assert abs(frechet_distance(sa.mu, sa.sigma, sa.mu, sa.sigma)) < 1e-9 * scale
    fid_ab = frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)
    assert fid_ab > 1e-3 * scale

    # the same number as torch-fidelity's own FID pipeline (same weights file, its eigvals-based formula)
    import torch_fidelity

    class Images(torch.utils.data.Dataset):
        def __init__(self, x):
            self.x = to_uint8(x)

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i]

    ref = torch_fidelity.calculate_metrics(
        input1=Images(a), input2=Images(b), fid=True, feature_extractor_weights_path=str(backbone_dir / INCEPTION),
        cuda=False, verbose=False, cache=False, batch_size=3, save_cpu_ram=True)["frechet_inception_distance"]
    assert fid_ab == pytest.approx(ref, rel=1e-6)

    # (`b` went in as PNG files in batches of 2 + 1, torch-fidelity got tensors in one batch of 3: float input is
    # rounded like PNG export, and the statistics do not depend on batching)

    # statistics saved once and used in place of a folder
    save_stats(sa, tmp_path / "a.npz")
    save_stats(sb, tmp_path / "b.npz")
    assert fid_folders(tmp_path / "a.npz", tmp_path / "b.npz") == pytest.approx(fid_ab, rel=1e-12)
    (tmp_path / "one").mkdir()
    (tmp_path / "a" / "0.png").rename(tmp_path / "one" / "0.png")
    with pytest.raises(MetricInputError, match="at least 2 images"):
        fid_folders(tmp_path / "one", tmp_path / "b.npz", weights_dir=backbone_dir)


def test_unreadable_file_without_skip_list_is_an_error(inception, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(MetricInputError, match="broken.png"):
        folder_stats(tmp_path, inception)


def test_inception_missing_and_bad_weights(empty_torch_home, tmp_path, backbone_dir):  # noqa: F811
    with pytest.raises(MissingWeightsError) as e:
        InceptionFeatures()
    assert INCEPTION in str(e.value) and str(empty_torch_home / "hub" / "checkpoints") in str(e.value)
    wd = tmp_path / "wd"
    wd.mkdir()
    torch.save({"fc.weight": torch.zeros(3)}, wd / INCEPTION)
    with pytest.raises(BadWeightsError, match="Inception"):
        InceptionFeatures(weights_dir=wd)
