"""Controlled sampling on the tiny random weight set: canny / inpainting / sr, determinism, strength, clear errors."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from _tiny_weights import tiny_weights_dir
from controlnet_helpers import write_controlnet
from PIL import Image

from cascadekit.codec.errors import InputError, WeightsError
from cascadekit.generator import ControlSettings
from cascadekit.generator.pipeline import TextToImagePipeline, read_png_parameters

SMALL = dict(height=64, width=96, prior_steps=2, decoder_steps=1)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cn")
    rng = np.random.default_rng(0)
    photo = (rng.random((48, 72, 3)) * 255).astype(np.uint8)
    photo[10:30, 20:50] = 255  # a bright block: real Canny edges
    Image.fromarray(photo).save(d / "photo.png")
    mask = np.zeros((48, 72), np.uint8)
    mask[12:36, 18:54] = 255
    Image.fromarray(mask).save(d / "mask.png")
    Image.fromarray(mask[:40]).save(d / "small_mask.png")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    for control, name in (("canny", "canny"), ("inpainting", "inpainting"), ("sr", "super_resolution")):
        write_controlnet(d / "controlnet" / f"{name}.safetensors", control, seed=1)
    return d


def _pipe(weights, files, control):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TextToImagePipeline.from_pretrained(weights, controlnet=files, control=control)


@pytest.fixture(scope="module")
def canny_pipe(weights, files):
    return _pipe(weights, files, "canny")


def test_canny_sampling_is_deterministic_and_the_control_acts(canny_pipe, files, tmp_path):
    settings = ControlSettings("canny", files / "photo.png")
    a = canny_pipe("a fox", seed=3, control=settings, **SMALL)
    b = canny_pipe("a fox", seed=3, control=settings, **SMALL)
    weak = canny_pipe("a fox", seed=3, control=ControlSettings("canny", files / "photo.png", strength=0.0), **SMALL)
    plain = canny_pipe("a fox", seed=3, **SMALL)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.images, b.images)
    assert torch.equal(weak.latents, plain.latents)  # strength 0 = no control
    assert not torch.allclose(a.latents, plain.latents, atol=1e-3)
    assert a.control_images.shape == (1, 3, 64, 96) and set(a.control_images.unique().tolist()) - {0.0} != set()
    files_out = a.write(tmp_path)
    ctrl = files_out.images[0].with_name(files_out.images[0].stem + "_control.png")
    assert ctrl.is_file()
    meta = read_png_parameters(files_out.images[0])
    assert meta["control"] == "canny" and meta["control_strength"] == 1.0 and meta["controlnet"].endswith("canny.safetensors")
    assert meta["prior_guidance"] == 4.0 and meta["prior_shift"] == 2.0


def test_batches_of_prompts_and_images(canny_pipe, files):
    s = ControlSettings("canny", files / "photo.png")
    out = canny_pipe(["a fox", "a cat"], num_images_per_prompt=2, seed=2, control=s, **SMALL)
    assert out.images.shape == (4, 3, 64, 96) and out.control_images.shape == (4, 3, 64, 96)
    single = canny_pipe("a cat", seed=2, control=s, **SMALL)
    assert not torch.equal(out.latents[2:3], out.latents[0:1])  # other prompt
    assert single.latents.shape == (1, 16, 2, 3)


def test_control_list_goes_to_both_branches_scaled(canny_pipe, files, monkeypatch):
    seen = []
    real = canny_pipe.stage_c.forward

    def spy(x, r, *args, cnet=None, **kw):
        seen.append(cnet)
        return real(x, r, *args, cnet=cnet, **kw)

    monkeypatch.setattr(canny_pipe.stage_c, "forward", spy)
    canny_pipe("a fox", seed=1, control=ControlSettings("canny", files / "photo.png", strength=0.5), **SMALL)
    cnet = seen[0]
    assert len(cnet) == 6 and cnet[0] is None and cnet[1] is not None
    cond, uncond = cnet[1].chunk(2)
    assert torch.equal(cond, uncond)  # the same control for the unconditional branch
    from cascadekit.generator.control_sampling import fit
    from cascadekit.generator.controls import canny

    photo = torch.from_numpy(np.array(Image.open(files / "photo.png"))).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        full = canny_pipe.controlnet(canny(fit(photo, 64, 96)))
    assert torch.allclose(cond, 0.5 * full[1], atol=1e-6)  # scaled by the strength


def test_inpainting_mask_outpaint_and_paste_back(weights, files):
    pipe = _pipe(weights, files, "inpainting")
    s = ControlSettings("inpainting", files / "photo.png", mask=files / "mask.png", paste_back=True)
    a = pipe("a fox", seed=5, control=s, **SMALL)
    b = pipe("a fox", seed=5, control=s, **SMALL)
    assert torch.equal(a.images, b.images)
    assert a.parameters[0]["strength"] == 1.0 and a.parameters[0]["paste_back"] is True
    # paste-back: outside the (fitted) mask the pixels are the photo's
    from cascadekit.generator.control_sampling import fit

    photo = torch.from_numpy(np.array(Image.open(files / "photo.png"))).permute(2, 0, 1)[None].float() / 255
    keep = ~(fit(torch.from_numpy(np.array(Image.open(files / "mask.png")) > 127)[None, None].float(), 64, 96,
                 mode="nearest") > 0.5)
    want = fit(photo, 64, 96)
    assert torch.allclose(a.images[keep.expand(-1, 3, -1, -1)], want[keep.expand(-1, 3, -1, -1)], atol=1e-6)
    assert torch.all(a.control_images[keep.expand(-1, 3, -1, -1).logical_not()] == 1)  # masked pixels set to 1
    out = pipe("a fox", seed=5, control=ControlSettings("inpainting", files / "photo.png", outpaint=True), **SMALL)
    assert out.control_images[0, :, 0, 0].eq(1).all()
    half = pipe("a fox", seed=5, strength=0.5, control=s, **SMALL)
    assert half.parameters[0]["prior_steps"] == 1


def test_upscale_doubles_the_size(weights, files):
    pipe = _pipe(weights, files, "sr")
    out = pipe.upscale(files / "photo.png", seed=0, prior_steps=2, decoder_steps=1)
    assert out.images.shape == (1, 3, 96, 144)
    assert out.parameters[0]["prior_guidance"] == 1.0 and out.parameters[0]["control"] == "sr"
    again = pipe.upscale(files / "photo.png", seed=0, prior_steps=2, decoder_steps=1)
    assert torch.equal(out.images, again.images)


def test_bad_inputs_fail_before_sampling(canny_pipe, weights, files, monkeypatch):
    calls = []
    monkeypatch.setattr(canny_pipe.text_encoder, "encode", lambda *a, **k: calls.append(1))
    cases = [
        (ControlSettings("canny", files / "missing.png"), InputError, "missing.png"),
        (ControlSettings("canny", files / "corrupt.png"), InputError, "corrupt.png"),
        (ControlSettings("depth", files / "photo.png"), InputError, "unknown control"),
        (ControlSettings("inpainting", files / "photo.png", mask=files / "mask.png"), InputError, "canny ControlNet"),
        (ControlSettings("canny", files / "photo.png", mask=files / "mask.png"), InputError, "inpainting control"),
        (ControlSettings("canny", files / "photo.png", strength=-1), InputError, "strength"),
    ]
    for settings, err, match in cases:
        with pytest.raises(err, match=match):
            canny_pipe("a fox", seed=0, control=settings, **SMALL)
    inpaint = _pipe(weights, files, "inpainting")
    monkeypatch.setattr(inpaint.text_encoder, "encode", lambda *a, **k: calls.append(1))
    with pytest.raises(InputError, match="small_mask.png is 72x40 pixels but its image is 72x48"):
        inpaint("a fox", control=ControlSettings("inpainting", files / "photo.png", mask=files / "small_mask.png"), **SMALL)
    with pytest.raises(InputError, match="exactly one of a mask"):
        inpaint("a fox", control=ControlSettings("inpainting", files / "photo.png"), **SMALL)
    assert calls == []  # nothing ran
    with pytest.raises(WeightsError, match="projects to 48 channels"):
        canny_pipe.load_controlnet(write_controlnet(files / "wide.safetensors", "canny", c_proj=48))
    assert canny_pipe.controlnet_info.path.name == "canny.safetensors"  # the loaded one stays


def test_no_controlnet_loaded_is_a_clear_error(weights, files):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = TextToImagePipeline.from_pretrained(weights)
    with pytest.raises(InputError, match="needs a ControlNet"):
        pipe("a fox", control=ControlSettings("canny", files / "photo.png"), **SMALL)
