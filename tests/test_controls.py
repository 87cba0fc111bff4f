"""The controls: Canny (map + resize split), inpainting control and masks, super-resolution latents, training masks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import load_golden
from PIL import Image

from cascadekit.codec.errors import InputError
from cascadekit.generator.controls import (
    canny,
    canny_from_map,
    canny_map,
    inpaint_control,
    load_mask,
    outpaint_mask,
    sr_control,
    sr_from_latents,
    sr_latents,
)
from cascadekit.generator.train_masks import random_masks


def test_canny_is_map_then_resize_and_binary_at_224():
    _, _, inputs, _ = load_golden("extensions/canny_filter")
    x = inputs["images"]
    m = canny_map(x)
    assert m.shape == (2, 224, 224) and m.dtype == torch.uint8 and set(m.unique().tolist()) <= {0, 255}
    assert torch.equal(canny_from_map(m, x.shape[-2:]), canny(x))
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        canny(torch.rand(1, 1, 8, 8))


def test_inpaint_control_sets_masked_pixels_to_one():
    img = torch.rand(2, 3, 6, 8) * 0.5
    mask = torch.zeros(1, 1, 6, 8, dtype=torch.bool)
    mask[..., 2:4, 3:6] = True
    c = inpaint_control(img, mask)
    assert c.shape == (2, 4, 6, 8)
    assert torch.all(c[:, :3, 2:4, 3:6] == 1) and torch.equal(c[:, :3, 0], img[:, :, 0])
    assert torch.equal(c[:, 3:], mask.float().expand(2, -1, -1, -1))
    with pytest.raises(InputError, match="mask is 4x6 pixels but the image is 8x6"):
        inpaint_control(img, torch.zeros(1, 1, 6, 4, dtype=torch.bool))
    with pytest.raises(InputError, match="3 masks for 2 images"):
        inpaint_control(img, torch.zeros(3, 1, 6, 8, dtype=torch.bool))


def test_load_mask_white_is_repaint(tmp_path):
    a = np.zeros((6, 8), np.uint8)
    a[1:3, 2:5] = 255
    Image.fromarray(a).save(tmp_path / "m.png")
    m = load_mask(tmp_path / "m.png", size=(6, 8))
    assert m.shape == (1, 1, 6, 8) and m.dtype == torch.bool and int(m.sum()) == 6 and bool(m[0, 0, 1, 2])
    with pytest.raises(InputError, match="must have the image's size"):
        load_mask(tmp_path / "m.png", size=(8, 8))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="bad.png"):
        load_mask(tmp_path / "bad.png")


def test_outpaint_mask_repaints_the_border():
    m = outpaint_mask(16, 32, border=0.25)
    assert m[0, 0, 0].all() and m[0, 0, :, 0].all() and not m[0, 0, 4:12, 8:24].any()
    with pytest.raises(InputError, match="border"):
        outpaint_mask(16, 16, border=0.6)


def test_sr_control_is_effnet_of_the_half_image_upsampled():
    class Fake(torch.nn.Module):  # records its input; a 32-stride "encoder"
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))
            self.seen = None

        def forward(self, x):
            self.seen = x
            return torch.nn.functional.avg_pool2d(x, 32).repeat(1, 6, 1, 1)[:, :16] * self.w

    enc = Fake()
    img = torch.rand(1, 3, 128, 192)
    z = sr_control(img, enc, downscale=True)
    assert enc.seen.shape == (1, 3, 64, 96) and z.shape == (1, 16, 4, 6)  # Stage C latent resolution of 128x192
    assert torch.equal(z[..., ::2, ::2], z[..., 1::2, 1::2])  # nearest ×2
    z_inf = sr_control(img, enc)
    assert enc.seen.shape == (1, 3, 128, 192) and z_inf.shape == (1, 16, 8, 12)
    stored = sr_latents(img, enc)  # the store field: latents of the x0.5 image
    assert stored.shape == (1, 16, 2, 3) and torch.equal(sr_from_latents(stored), z)


def test_random_masks_kinds_inversion_and_determinism():
    a = random_masks(40, 32, 48, torch.Generator().manual_seed(3))
    b = random_masks(40, 32, 48, torch.Generator().manual_seed(3))
    assert a.shape == (40, 1, 32, 48) and a.dtype == torch.bool and torch.equal(a, b)
    frac = a.float().mean(dim=(1, 2, 3))
    assert (frac > 0).all() and (frac < 1).all() and frac.std() > 0.05
    never = random_masks(20, 32, 48, torch.Generator().manual_seed(3), p_outpaint=0.0, kinds=("border",))
    always = random_masks(20, 32, 48, torch.Generator().manual_seed(3), p_outpaint=1.0, kinds=("border",))
    assert never[:, 0, 0, 0].all() and not always[:, 0, 0, 0].any()  # inverted border keeps the edge
    with pytest.raises(InputError, match="unknown mask kind"):
        random_masks(1, 8, 8, torch.Generator(), kinds=("blob",))


def test_saliency_masks_from_a_weights_only_file(tmp_path):
    from cascadekit.codec.errors import WeightsError
    from cascadekit.generator.saliency import MicroResNet, load_saliency_model, saliency_masks

    torch.manual_seed(0)
    net = MicroResNet()
    # the official saliency_model.pt has 111,233 parameters in this key layout (checked against the released file)
    assert sum(p.numel() for p in net.parameters()) == 111233
    torch.save(net.state_dict(), tmp_path / "saliency_model.pt")
    model = load_saliency_model(tmp_path / "saliency_model.pt")
    x = torch.rand(3, 3, 96, 128)
    assert model(x).shape == (3, 1, 12, 16)
    a = saliency_masks(x, model, torch.Generator().manual_seed(1))
    b = saliency_masks(x, model, torch.Generator().manual_seed(1))
    assert a.shape == (3, 1, 96, 128) and a.dtype == torch.bool and torch.equal(a, b)
    always = saliency_masks(x, model, torch.Generator().manual_seed(1), p_outpaint=1.0)
    never = saliency_masks(x, model, torch.Generator().manual_seed(1), p_outpaint=0.0)
    assert not torch.equal(always, never)
    torch.save(net, tmp_path / "pickled_module.pt")  # a whole pickled module: refused, never unpickled
    with pytest.raises(WeightsError):
        load_saliency_model(tmp_path / "pickled_module.pt")
