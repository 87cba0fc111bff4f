"""Model / sequential offload of the text-to-image pipeline: the same images, and every network on the
accelerator exactly while it runs. On a CPU-only machine moving is a no-op, so the placement is checked through a
recording ``move`` (home is ``cpu:0``, the accelerator ``cpu``: distinct devices that both work here)."""
from __future__ import annotations

import warnings

import pytest
import torch
from _tiny_weights import tiny_weights_dir

from cascadekit.codec.errors import InputError
from cascadekit.generator.offload import Offload, move_module
from cascadekit.generator.pipeline import TextToImagePipeline

SMALL = dict(height=64, width=96, prior_steps=3, decoder_steps=2, seed=3)
HOME = torch.device("cpu", 0)


class Recorder:
    """A ``move`` that really moves (a no-op here) and remembers where each module's own tensors are."""

    def __init__(self):
        self.where: dict[int, str] = {}
        self.moves: list[tuple[str, str]] = []

    def __call__(self, module, device, recurse):
        move_module(module, device, recurse)
        place = "home" if device == HOME else "accelerator"
        for m in (module.modules() if recurse else [module]):
            self.where[id(m)] = place
        self.moves.append((type(module).__name__, place))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights_dir(tmp_path_factory)


def build(weights):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TextToImagePipeline.from_pretrained(weights)


def networks(pipe):
    return {"text": pipe.text_encoder.model, "stage_c": pipe.stage_c, "stage_b": pipe.codec.stage_b,
            "stage_a": pipe.codec.stage_a}


def watch(modules, rec, seen, leaves=False):
    """Pre-forward hooks (after the offload's own) noting whether each module's tensors were on the accelerator."""
    handles = []
    for name, root in modules.items():
        targets = [m for m in root.modules() if next(m.parameters(recurse=False), None) is not None] if leaves \
            else [root]
        for m in targets:
            handles.append(m.register_forward_pre_hook(
                lambda mod, args, name=name: seen.setdefault(name, set()).add(rec.where.get(id(mod)))))
    return handles


def test_model_offload_same_images_and_each_stage_on_the_accelerator_only_while_it_runs(weights):
    plain = build(weights)("a red fox", **SMALL)
    pipe = build(weights)
    rec = Recorder()
    pipe.enable_offload("model", move=rec, home=HOME)
    nets = networks(pipe)
    assert all(rec.where[id(m)] == "home" for m in nets.values())  # everything waits at home
    seen, others_while_b = {}, []
    handles = watch(nets, rec, seen, leaves=True)  # every layer that runs (Stage A runs .decode, not forward)
    handles.append(pipe.codec.stage_b.register_forward_pre_hook(
        lambda mod, args: others_while_b.append(rec.where[id(pipe.stage_c)])))
    try:
        out = pipe("a red fox", **SMALL)
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(out.images, plain.images) and torch.equal(out.latents, plain.latents)
    assert out.parameters == plain.parameters
    assert seen == {"text": {"accelerator"}, "stage_c": {"accelerator"}, "stage_b": {"accelerator"},
                    "stage_a": {"accelerator"}}
    assert set(others_while_b) == {"home"}  # Stage C is back home while the decoder runs: peak = one stage
    assert all(rec.where[id(m)] == "home" for m in nets.values())  # and everything is home afterwards
    to_acc = [name for name, place in rec.moves if place == "accelerator"]
    assert to_acc[:2] == ["CLIPTextModelWithProjection", "StageC"] and "StageB" in to_acc


def test_sequential_offload_same_images_layer_by_layer(weights):
    plain = build(weights)("a red fox", **SMALL)
    pipe = build(weights)
    rec = Recorder()
    pipe.enable_offload("sequential", move=rec, home=HOME)
    nets = networks(pipe)
    seen = {}
    handles = watch(nets, rec, seen, leaves=True)
    try:
        out = pipe("a red fox", **SMALL)
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(out.images, plain.images) and torch.equal(out.latents, plain.latents)
    assert all(places == {"accelerator"} for places in seen.values()) and set(seen) == set(nets)
    assert all(rec.where[id(m)] == "home" for root in nets.values() for m in root.modules())
    pipe.enable_offload("none")
    assert not any(m._forward_pre_hooks for m in pipe.stage_c.modules())  # hooks removed again


def test_offload_none_moves_nothing_and_bad_modes_are_refused(weights):
    rec = Recorder()
    off = Offload("none", move=rec)
    off.add("x", torch.nn.Linear(2, 2))
    with off.stage("x"):
        pass
    assert rec.moves == []
    with pytest.raises(InputError, match="offload must be one of"):
        Offload("cpu")
    with pytest.raises(InputError, match="offload must be one of"):
        TextToImagePipeline.from_pretrained(weights, offload="layers")


def test_from_pretrained_with_offload_keeps_networks_on_the_cpu(weights):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = TextToImagePipeline.from_pretrained(weights, offload="model")
    assert pipe.offload.mode == "model" and set(pipe.offload.groups) >= {"text", "stage_c", "decoder", "effnet"}
    assert all(p.device.type == "cpu" for p in pipe.stage_c.parameters())
    assert pipe("a red fox", **SMALL).images.shape == (1, 3, 64, 96)


def test_sample_command_offload_gives_the_same_pngs(weights, tmp_path):
    from click.testing import CliRunner

    from cascadekit.cli.main import main as cli

    base = ["sample", "a red fox", "--weights", str(weights), "--height", "64", "--width", "96", "--steps", "2",
            "--decoder-steps", "1", "--seed", "4", "--device", "cpu"]
    outs = {}
    for mode in ("none", "model"):
        r = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / mode), "--offload", mode])
        assert r.exit_code == 0, r.output
        pngs = sorted((tmp_path / mode).glob("*.png"))
        assert len(pngs) == 2, r.output  # the image and grid.png
        outs[mode] = [p.read_bytes() for p in pngs]
    assert outs["none"] == outs["model"]
    r = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "bad"), "--offload", "layers"])
    assert r.exit_code == 2 and "--offload" in r.output


def test_image_variation_under_offload_loads_the_image_encoder_at_home(weights):
    img = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    plain = build(weights)("a fox", image=img, return_latents=True, **SMALL)
    pipe = build(weights)
    rec = Recorder()
    pipe.enable_offload("model", move=rec, home=HOME)
    out = pipe("a fox", image=img, return_latents=True, **SMALL)
    assert torch.equal(out.latents, plain.latents)
    enc = pipe.image_encoder.model
    assert ("CLIPVisionModelWithProjection", "accelerator") in rec.moves and rec.where[id(enc)] == "home"
    assert "image" in pipe.offload.groups
