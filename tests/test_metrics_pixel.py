"""PSNR/SSIM: closed-form and scikit-image agreement, per-image means, batch-size independence, bad input."""
import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity
from torchmetrics.image import PeakSignalNoiseRatio

from cascadekit.metrics.errors import MetricInputError
from cascadekit.metrics.pixel import mean_of, psnr_per_image, ssim_per_image


def pair(n=5, h=32, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(n, 3, h, w, generator=g)
    noise = torch.randn(n, 3, h, w, generator=g) * torch.linspace(0.02, 0.2, n).view(n, 1, 1, 1)
    return (target + noise).clamp(0, 1), target


def test_psnr_constant_offset_matches_closed_form():
    target = torch.rand(2, 3, 16, 16) * 0.8 + 0.1
    for d in (0.01, 0.05):
        preds = target + d
        expected = 10 * math.log10(1.0 / d**2)
        assert psnr_per_image(preds, target, data_range=1.0) == pytest.approx([expected] * 2, abs=1e-4)
    # the same images on a 0..255 scale give the same PSNR only when data_range says so
    assert psnr_per_image((target + 0.05) * 255, target * 255, data_range=255.0) == pytest.approx(
        [10 * math.log10(1 / 0.05**2)] * 2, abs=1e-4)


def test_psnr_identical_is_inf():
    x = torch.rand(1, 3, 8, 8)
    assert math.isinf(psnr_per_image(x, x)[0])


@pytest.mark.parametrize("backend", ["scipy", "torchmetrics"])
def test_ssim_matches_scikit_image(backend):
    preds, target = pair(3)
    ours = ssim_per_image(preds, target, data_range=1.0, backend=backend)
    for i in range(3):
        ref = structural_similarity(
            target[i].permute(1, 2, 0).double().numpy(), preds[i].permute(1, 2, 0).double().numpy(),
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=2)
        assert float(ours[i]) == pytest.approx(ref, abs=1e-9)
    assert ssim_per_image(target, target, backend=backend).tolist() == pytest.approx([1.0] * 3, abs=1e-12)


def test_mean_of_per_image_values_and_batch_size_independence():
    preds, target = pair(5)
    whole = psnr_per_image(preds, target)
    chunks = torch.cat([psnr_per_image(preds[i:i + 2], target[i:i + 2]) for i in range(0, 5, 2)])
    assert torch.allclose(whole, chunks, rtol=0, atol=1e-9)
    s_whole = ssim_per_image(preds, target)
    s_chunks = torch.cat([ssim_per_image(preds[i:i + 2], target[i:i + 2]) for i in range(0, 5, 2)])
    assert torch.allclose(s_whole, s_chunks, rtol=0, atol=1e-12)
    # the aggregate is the mean of per-image PSNRs, which is not what torchmetrics' pooled default reports
    pooled = float(PeakSignalNoiseRatio(data_range=1.0)(preds, target))
    assert mean_of(whole) == pytest.approx(float(whole.mean()), abs=1e-9)
    assert abs(mean_of(whole) - pooled) > 0.5


@pytest.mark.parametrize("fn", [psnr_per_image, ssim_per_image])
def test_bad_input_is_rejected(fn):
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(MetricInputError, match="data_range"):
        fn(x * 255, x)  # 0..255 data with data_range 1
    with pytest.raises(MetricInputError, match="shape"):
        fn(x, x[:1])
    with pytest.raises(MetricInputError, match=r"\(B,3,H,W\)"):
        fn(x[:, :1], x[:, :1])


def test_ssim_rejects_tiny_images():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(MetricInputError, match="11"):
        ssim_per_image(x, x)


def test_mean_of_empty_is_nan():
    assert np.isnan(mean_of([]))
