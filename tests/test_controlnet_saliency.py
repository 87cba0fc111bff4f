"""The official saliency masks for inpainting-ControlNet training: the official rule on a saliency map the test
controls (threshold U(0.04, 0.4), inverted with p_outpaint, nearest to the image, Gaussian blur 141, > 0.5), the
training path with a (random) ``saliency_model.pt``, and bad files refused before any work."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from controlnet_train_helpers import block_images, config, make_store, stage_c_file
from generator_helpers import FixedEmpty
from torch import nn

from cascadekit.codec.errors import InputError
from cascadekit.generator.saliency import MicroResNet, saliency_masks
from cascadekit.generator.train_controlnet import controlnet_loop, train_controlnet


class FixedSaliency(nn.Module):
    """A saliency "model" whose map is given: returns ``saliency`` (B, 1, h, w) whatever the image."""

    def __init__(self, saliency: torch.Tensor):
        super().__init__()
        self.saliency = saliency
        self.unused = nn.Parameter(torch.zeros(1))  # saliency_masks reads the model's device / dtype from it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert min(x.shape[-2:]) == 240  # the official filter resizes the short side to 240 first
        return self.saliency


def test_masks_are_the_official_expression_at_full_kernel():
    """At images >= 141 px the masks equal the official InpaintFilter's expression, written out here."""
    sal = torch.rand(2, 1, 30, 40) * 0.5  # the map the model gives (any size: it is resized to the image)
    sal[..., :16] += 0.5  # a salient left part, a mixed rest
    images = torch.rand(2, 3, 150, 200)
    got = saliency_masks(images, FixedSaliency(sal), torch.Generator().manual_seed(5), p_outpaint=0.5)
    g = torch.Generator().manual_seed(5)
    t = 0.04 + (0.4 - 0.04) * torch.rand(2, 1, 1, 1, generator=g)  # per sample (the official: per batch)
    invert = torch.rand(2, 1, 1, 1, generator=g) < 0.5
    want = TF.gaussian_blur(F.interpolate(((sal > t) ^ invert).float(), size=(150, 200), mode="nearest"), 141) > 0.5
    assert got.shape == (2, 1, 150, 200) and got.dtype == torch.bool
    assert torch.equal(got, want)
    assert 0.05 < got.float().mean() < 0.95  # a real mask, neither empty nor full


def test_thresholds_are_uniform_between_0_04_and_0_4():
    """A constant map c is repainted exactly when the sample's threshold is below c: P = (c - 0.04) / 0.36."""
    n, b = 400, 40  # in batches of 40 (each image is resized to 240² for the model first)

    def repainted(c: float, p_outpaint: float = 0.0, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        masks = torch.cat([saliency_masks(torch.rand(b, 3, 8, 8), FixedSaliency(torch.full((b, 1, 1, 1), c)), g,
                                          p_outpaint=p_outpaint) for _ in range(n // b)])
        assert (masks.all(dim=(1, 2, 3)) | ~masks.any(dim=(1, 2, 3))).all()  # a constant map: all or nothing
        return masks.all(dim=(1, 2, 3)).float()

    assert repainted(0.039).sum() == 0 and repainted(0.401).sum() == n  # never below 0.04, never above 0.4
    for c in (0.13, 0.22, 0.31):  # 1/4, 1/2, 3/4 of the range; binomial sd <= 0.025 at n = 400
        assert abs(float(repainted(c, seed=int(c * 100)).mean()) - (c - 0.04) / 0.36) < 0.08, c
    # a map salient everywhere is inverted (nothing repainted: outpainting of the rest) with p_outpaint
    assert abs(float(1 - repainted(1.0, p_outpaint=0.4).mean()) - 0.4) < 0.08
    assert repainted(1.0, p_outpaint=1.0).sum() == 0


def test_blur_141_then_0_5_removes_specks_and_keeps_regions():
    """A salient cell of 32 px vanishes under the 141 blur (its centre stays below 0.5); a 96 px region stays."""
    speck = torch.zeros(1, 1, 5, 5)
    speck[..., 2, 2] = 1.0
    region = torch.zeros(1, 1, 5, 5)
    region[..., 1:4, 1:4] = 1.0
    images = torch.rand(1, 3, 160, 160)
    for sal, expect in ((speck, False), (region, True)):
        m = saliency_masks(images, FixedSaliency(sal), torch.Generator().manual_seed(0), p_outpaint=0.0)[0, 0]
        assert bool(m[80, 80]) is expect
        assert not m[:20].any() and not m[:, :20].any()  # far from the salient cells: never repainted
    # the same map with a small blur would have kept the speck: the kernel size is what removes it
    assert (TF.gaussian_blur(F.interpolate(speck, size=(160, 160), mode="nearest"), 9) > 0.5).any()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("sal")
    torch.manual_seed(0)
    model = tmp_path_factory.mktemp("salmodel") / "saliency_model.pt"
    torch.save(MicroResNet().state_dict(), model)  # as the official file: a plain state dict
    return {"store": make_store(d / "s.zarr", block_images(d / "img", n=8), controls=("inpaint",)),
            "init": stage_c_file(d / "w"), "model": model}


def test_inpainting_trains_with_the_saliency_model(world, tmp_path):
    from cascadekit.generator.saliency import load_saliency_model

    logs: list[str] = []
    cfg = config("inpainting", steps=2, save_every=2, saliency_model=str(world["model"]))
    loop = controlnet_loop(world["store"], cfg, tmp_path / "run", init=world["init"], device="cpu",
                           text_encoder=FixedEmpty(), log=logs.append)
    try:
        # the control's mask channel is the saliency mask of each sample's seeded draw
        data, task = loop.data, loop.task
        g = data.groups[0]
        batch = data.read(g.name, list(range(4)))
        draws = task.draws(torch.Generator().manual_seed(3), 4, g)
        seeds = draws["mask"]
        assert seeds.shape == (4,) and seeds.dtype == torch.int64
        _, cond = task.inputs(batch, draws, torch.device("cpu"))
        pixels = batch["control_inpaint"].float().div(255)
        model = load_saliency_model(world["model"])
        want = torch.cat([saliency_masks(pixels[i:i + 1], model, torch.Generator().manual_seed(int(s)))
                          for i, s in enumerate(seeds.tolist())])
        assert torch.equal(cond["control"][:, 3:] > 0.5, want)
        assert torch.equal(cond["control"][:, :3], torch.where(want, torch.ones_like(pixels), pixels))
        res = loop.run()
    finally:
        loop.close()
    assert res.step == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in res.history)
    assert any("inpainting masks: the official saliency masks" in m for m in logs), logs
    rec = json.loads((tmp_path / "run" / "run.json").read_text())
    assert rec["controlnet"]["masks"].startswith("the official saliency masks")
    # and without the model: geometric masks, said so
    logs.clear()
    train_controlnet(world["store"], config("inpainting", steps=1), tmp_path / "geo", init=world["init"],
                     device="cpu", text_encoder=FixedEmpty(), log=logs.append)
    assert any("inpainting masks: geometric" in m for m in logs), logs


@pytest.mark.parametrize("kind", ["pickled_module", "not_a_torch_file", "wrong_keys", "missing"])
def test_bad_saliency_model_is_refused_before_work(world, tmp_path, kind):
    bad = tmp_path / "saliency_model.pt"
    if kind == "pickled_module":
        torch.save(MicroResNet(), bad)  # a whole module: would need unpickling code, never done
    elif kind == "not_a_torch_file":
        bad.write_bytes(b"\x00not a checkpoint")
    elif kind == "wrong_keys":
        torch.save({"conv.weight": torch.zeros(1)}, bad)
    out = tmp_path / "run"
    with pytest.raises(InputError, match=r"saliency_model: .*saliency_model\.pt"):
        train_controlnet(world["store"], config("inpainting", saliency_model=str(bad)), out, init=world["init"],
                         device="cpu", text_encoder=FixedEmpty(), log=lambda m: None)
    assert not out.exists()  # nothing was created


def test_saliency_model_only_for_inpainting():
    with pytest.raises(InputError, match="saliency_model is for the inpainting control"):
        config("canny", saliency_model="saliency_model.pt")
