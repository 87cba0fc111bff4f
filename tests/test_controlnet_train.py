"""ControlNet training on the core: learns to use its control, exact resume, on-the-fly controls = stored ones,
checkpoints in the official key layout (loadable by load_controlnet)."""
from __future__ import annotations

import json

import pytest
import torch
from controlnet_train_helpers import block_images, config, make_store, stage_c_file
from generator_helpers import FixedEmpty
from safetensors.torch import load_file

from cascadekit.generator.checkpoint import latest_checkpoint
from cascadekit.generator.train_controlnet import controlnet_loop, train_controlnet


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("cn")
    images = block_images(d / "images")
    return {"images": images, "store": make_store(d / "s.zarr", images), "bare": make_store(d / "bare.zarr", images, ()),
            "init": stage_c_file(d / "w")}


def _run(world, out, cfg, store="store", **kw):
    logs = []
    res = train_controlnet(world[store], cfg, out, init=world["init"], device="cpu", text_encoder=FixedEmpty(),
                           log=logs.append, **kw)
    return res, logs


def _eval_losses(loop) -> tuple[float, float]:
    """Fixed-noise, fixed-t loss of every sample with its own control vs with the controls rolled by one sample."""
    data, task, model = loop.data, loop.task, loop.model.eval()
    g = data.groups[0]
    batch = data.read(g.name, list(range(g.size)))
    gen = torch.Generator().manual_seed(123)
    draws = task.draws(gen, g.size, g)
    draws["drop"][:] = False
    draws["use_img"][:] = False
    x0, cond = task.inputs(batch, draws, torch.device("cpu"))
    t = torch.linspace(0.15, 0.85, g.size)
    d = loop.gdf.diffuse(x0, t, draws["noise"])
    out = []
    with torch.no_grad():
        for control in (cond["control"], cond["control"].roll(1, 0)):
            pred = model(d.x_t, d.noise_cond, **{**cond, "control": control})
            out.append(float(((pred - d.target) ** 2).mean()))
    return out[0], out[1]


def test_learns_to_use_its_control(tmp_path):
    """A ControlNet for a (briefly trained, frozen) tiny Stage C learns to use its control: at the end its loss
    with each sample's own control is clearly below its loss with the controls shuffled across samples.

    Set-up where the control carries what the text does not: one colour per image, one caption for all, the sr
    control (the EfficientNet latents of the x0.5 image: here exactly the image's latents)."""
    from cascadekit.generator.config import TrainConfig
    from cascadekit.generator.train import train

    store = make_store(tmp_path / "s.zarr", block_images(tmp_path / "img", caption="a photo", blocks=1))
    prior = train(store, TrainConfig.from_dict(dict(model="tiny", steps=120, batch_size=8, lr=3e-3, warmup_steps=1,
                                                    save_every=1000, log_every=1000, caption_dropout=0.0,
                                                    precision="fp32")),
                  tmp_path / "prior", text_encoder=FixedEmpty(), log=lambda m: None)
    cfg = config("sr", steps=80, lr=1e-2, save_every=1000, caption_dropout=0.0, large_widths=[64, 64, 64],
                 controlnet_blocks=[0, 7])
    loop = controlnet_loop(store, cfg, tmp_path / "run", init=prior.last_checkpoint / "model.safetensors",
                           device="cpu", text_encoder=FixedEmpty(), log=lambda m: None)
    before = _eval_losses(loop)
    loop.model.train()
    loop.run()
    true, shuffled = _eval_losses(loop)
    assert before[0] == pytest.approx(before[1], abs=1e-6)  # zero-initialised projections: no effect yet
    assert true < 0.97 * shuffled and true < before[0], (before, true, shuffled)


def test_resume_is_exact_and_checkpoint_is_official(world, tmp_path):
    cfg = config("canny", steps=4, save_every=2)
    straight, logs = _run(world, tmp_path / "a", cfg)
    assert any("precomputed in the store" in m for m in logs)
    _run(world, tmp_path / "b", cfg, stop_after=2)
    _run(world, tmp_path / "b", cfg, resume=True)
    a = load_file(str(straight.last_checkpoint / "controlnet.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "b") / "controlnet.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in a.items() if k.endswith("projections.0.2.weight"))
    # official key layout: the file loads as a ControlNet, proj_blocks from its metadata
    from cascadekit.codec.weights.controlnet import load_controlnet

    net, info = load_controlnet(straight.last_checkpoint / "controlnet.safetensors", "canny")
    assert set(net.state_dict()) == set(a) and info.config.proj_blocks == [1, 6]
    rec = json.loads((tmp_path / "a" / "run.json").read_text())
    assert rec["controlnet"]["proj_blocks"] == [1, 6] and rec["controlnet"]["c_proj"] == 64


def test_on_the_fly_control_equals_stored(world, tmp_path):
    cfg = config("canny", steps=2, save_every=2)
    stored, _ = _run(world, tmp_path / "stored", cfg)
    fly, logs = _run(world, tmp_path / "fly", cfg, store="bare")
    assert any("computed on the fly" in m for m in logs)
    assert [r["loss"] for r in fly.history] == [r["loss"] for r in stored.history]
    a = load_file(str(stored.last_checkpoint / "controlnet.safetensors"))
    b = load_file(str(fly.last_checkpoint / "controlnet.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
