"""LPIPS: offline loading of locally created backbones, the [-1,1] trap, known answers, missing weights."""
import shutil
import warnings

import lpips
import pytest
import torch

from cascadekit.metrics.errors import BadWeightsError, MetricInputError, MissingWeightsError
from cascadekit.metrics.lpips_metric import LPIPSMetric, linear_weights_path
from metrics_weights import ALEX, VGG, backbone_dir, empty_torch_home  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def alex(backbone_dir):  # noqa: F811
    return LPIPSMetric("alex", weights_dir=backbone_dir)


def images(n=5, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, 3, size, size, generator=g)
    b = (a + 0.15 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    return a, b


def test_identical_is_exactly_zero_and_different_is_positive(alex):
    a, b = images()
    assert alex(a, a).tolist() == [0.0] * 5
    d = alex(b, a)
    assert d.shape == (5,) and d.dtype == torch.float64 and (d > 0).all()


def test_matches_lpips_package_on_minus_one_one_inputs(alex, backbone_dir):  # noqa: F811
    """Our [0,1] API equals the package called correctly ([-1,1]); the package fed [0,1] silently differs."""
    a, b = images(2)
    ours = alex(b, a)
    raw = alex.model  # the lpips.LPIPS network our loader filled
    with torch.no_grad():
        right = raw(b * 2 - 1, a * 2 - 1).reshape(-1).double()
        wrong = raw(b, a).reshape(-1).double()
    assert torch.allclose(ours, right, atol=1e-7)
    assert not torch.allclose(ours, wrong, atol=1e-4)
    # the calibrated linear layers are the ones shipped in the pip package
    shipped = torch.load(linear_weights_path("alex"), map_location="cpu", weights_only=True)
    assert torch.equal(raw.lin0.model[1].weight, shipped["lin0.model.1.weight"])


def test_trunk_weights_come_from_the_file(alex, backbone_dir):  # noqa: F811
    state = torch.load(backbone_dir / ALEX, weights_only=True)
    assert torch.equal(alex.model.net.slice1[0].weight, state["features.0.weight"])
    assert torch.equal(getattr(alex.model.net.slice5, "10").bias, state["features.10.bias"])


def test_minus_one_one_input_is_rejected(alex):
    a, b = images(2)
    with pytest.raises(MetricInputError, match=r"\[0,1\]"):
        alex(b * 2 - 1, a * 2 - 1)
    with pytest.raises(MetricInputError, match="shape"):
        alex(a[:1], a)


def test_too_small_images_are_explained(alex):
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(MetricInputError, match="too small"):
        alex(x, x)


def test_batch_size_independence(alex):
    a, b = images(5)
    whole = alex(b, a)
    parts = torch.cat([alex(b[i:i + 2], a[i:i + 2]) for i in range(0, 5, 2)])
    assert torch.allclose(whole, parts, rtol=1e-5, atol=1e-7)


def test_vgg_variant(backbone_dir):  # noqa: F811
    m = LPIPSMetric("vgg", weights_dir=backbone_dir)
    a, b = images(2, size=64)
    assert m(a, a).tolist() == [0.0, 0.0]
    assert (m(b, a) > 0).all()


def test_found_in_torch_hub_cache(backbone_dir, empty_torch_home):  # noqa: F811
    ckpt = empty_torch_home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    shutil.copy(backbone_dir / ALEX, ckpt / ALEX)
    a, _ = images(1)
    assert LPIPSMetric("alex")(a, a).tolist() == [0.0]


def test_missing_weights_name_the_file_and_folder(empty_torch_home, tmp_path):  # noqa: F811
    with pytest.raises(MissingWeightsError) as e:
        LPIPSMetric("alex")
    msg = str(e.value)
    assert ALEX in msg and str(empty_torch_home / "hub" / "checkpoints") in msg
    wd = tmp_path / "wd"
    wd.mkdir()
    with pytest.raises(FileNotFoundError, match=VGG) as e:
        LPIPSMetric("vgg", weights_dir=wd)
    assert str(wd) in str(e.value)


def test_truncated_or_wrong_weights_are_reported(backbone_dir, tmp_path, empty_torch_home):  # noqa: F811
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / ALEX).write_bytes((backbone_dir / ALEX).read_bytes()[:1000])
    with pytest.raises(BadWeightsError, match="truncated"):
        LPIPSMetric("alex", weights_dir=wd)
    shutil.copy(backbone_dir / VGG, wd / ALEX)  # a VGG file under the AlexNet name
    with pytest.raises(BadWeightsError, match="shape"):
        LPIPSMetric("alex", weights_dir=wd)


def test_no_download_attempted(backbone_dir, monkeypatch):  # noqa: F811
    def fail(*a, **k):
        raise AssertionError("download attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fail)
    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor any deprecation noise from torchvision's pretrained= argument
        m = LPIPSMetric("alex", weights_dir=backbone_dir)
    assert isinstance(m.model, lpips.LPIPS)
