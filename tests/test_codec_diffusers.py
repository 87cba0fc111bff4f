"""A diffusers-format Stage B (``StableCascadeUNet`` saved with ``save_pretrained``) loads through our
loader and computes exactly what diffusers computes on the same weights; ditto inside ``Codec``."""
from __future__ import annotations

import math
import shutil
import warnings

import pytest
import torch
from _tiny_weights import tiny_weights_dir

from cascadekit.codec.codec import Codec
from cascadekit.codec.models.stage_b import StageB, StageBConfig
from cascadekit.codec.weights.assign import build
from cascadekit.codec.weights.load import load_weights
from cascadekit.codec.weights.sources import resolve_source

pytest.importorskip("diffusers")

# the diffusers config equivalent to StageBConfig.preset("tiny"), written out by hand (an independent
# statement of the translation, not derived from our code)
TINY_DECODER_CONFIG = dict(
    in_channels=4, out_channels=4, timestep_ratio_embedding_dim=64, patch_size=4, conditioning_dim=64,
    block_out_channels=[16, 32, 64, 64], num_attention_heads=[0, 0, 4, 4],
    down_num_layers_per_block=[1, 1, 1, 1], up_num_layers_per_block=[1, 1, 1, 1],
    down_blocks_repeat_mappers=[1, 1, 1, 1], up_blocks_repeat_mappers=[2, 2, 1, 1],
    block_types_per_layer=[["SDCascadeResBlock", "SDCascadeTimestepBlock"]] * 2
    + [["SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"]] * 2,
    clip_text_in_channels=None, clip_text_pooled_in_channels=32, clip_image_in_channels=None, clip_seq=4,
    effnet_in_channels=16, pixel_mapper_in_channels=3, kernel_size=3, dropout=[0, 0, 0.1, 0.1],
    self_attn=True, timestep_conditioning_type=["sca"], switch_level=None,
)


def _random_decoder(seed: int = 0):
    """A diffusers StableCascadeUNet with random non-zero weights everywhere (eval mode)."""
    from diffusers import StableCascadeUNet

    unet = StableCascadeUNet(**TINY_DECODER_CONFIG)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():  # diffusers' init zeroes some outputs; make every branch count
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) * (1 / math.sqrt(fan_in) if p.dim() > 1 else 0.2))
    return unet.eval()


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory):
    unet = _random_decoder()
    d = tmp_path_factory.mktemp("diffusers_decoder") / "decoder_lite"
    unet.save_pretrained(d)  # config.json + diffusion_pytorch_model.safetensors
    return unet, d


def _inputs(seed: int = 1, batch: int = 2, hw: int = 32):
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(batch, 4, hw, hw, generator=g), r=torch.rand(batch, generator=g),
                effnet=torch.randn(batch, 16, 6, 6, generator=g), clip=torch.randn(batch, 1, 32, generator=g))


def _theirs(unet, inp, **extra):
    with torch.no_grad():
        return unet(inp["x"], inp["r"], clip_text_pooled=inp["clip"], effnet=inp["effnet"], return_dict=False,
                    **extra)[0]


def test_diffusers_decoder_folder_loads_into_stage_b_and_matches(decoder_dir):
    unet, d = decoder_dir
    state = load_weights(d, kind="stage_b")
    # official names: fused attention in_proj, clip_mapper, no diffusers names left
    assert any(k.endswith("attention.attn.in_proj_weight") for k in state)
    assert "clip_mapper.weight" in state and not any("to_q" in k or "clip_txt_pooled" in k for k in state)
    ours = build(lambda: StageB.from_config(StageBConfig.preset("tiny")), state, device="cpu", dtype=torch.float32)
    ours.eval()
    assert set(ours.state_dict()) == set(state)
    inp = _inputs()
    with torch.no_grad():
        a = ours(inp["x"], inp["r"], inp["effnet"], inp["clip"])
    b = _theirs(unet, inp)
    assert b.abs().mean() > 1e-2  # a non-trivial output
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # the optional conditionings too: pixels and sca (batch 1: diffusers 0.42 evaluates `sca or zeros`,
    # which fails for a batch of several)
    g = torch.Generator().manual_seed(5)
    one = {k: v[:1] for k, v in inp.items()}
    pixels, sca = torch.rand(1, 3, 8, 8, generator=g), torch.rand(1, generator=g) + 0.1
    with torch.no_grad():
        a2 = ours(one["x"], one["r"], one["effnet"], one["clip"], pixels=pixels, sca=sca)
    b2 = _theirs(unet, one, pixels=pixels, sca=sca)
    torch.testing.assert_close(a2, b2, atol=1e-5, rtol=1e-4)
    assert (a2 - a[:1]).abs().max() > 1e-4


def test_diffusers_decoder_config_translates_to_tiny_preset(decoder_dir):
    _, d = decoder_dir
    ws = resolve_source(d, need=("stage_b",))
    assert ws.stage_b == d.resolve() and ws.formats["stage_b"] == "diffusers"
    assert StageBConfig(**ws.model_kwargs["stage_b"]).kwargs() == StageBConfig.preset("tiny").kwargs()


def test_codec_from_diffusers_snapshot_uses_the_same_decoder(decoder_dir, tmp_path, tmp_path_factory):
    """A snapshot with decoder_lite/ + decoder/ (diffusers) + official effnet: Codec's Stage B == diffusers' UNet."""
    unet, d = decoder_dir
    tiny = tiny_weights_dir(tmp_path_factory)
    snap = tmp_path / "snap"
    snap.mkdir()
    shutil.copytree(d, snap / "decoder_lite")
    big = _random_decoder(seed=7)
    big.save_pretrained(snap / "decoder")
    for f in ("stage_a.safetensors", "effnet_encoder.safetensors"):
        shutil.copy(tiny / f, snap / f)
    (snap / "cascadekit.json").write_text(
        (tiny / "cascadekit.json").read_text().replace('"stage_b":', '"stage_b_unused":'))
    # stage_b="big" picks decoder/, "lite" decoder_lite/
    ws = resolve_source(snap, stage_b="big", need=("stage_a", "effnet", "stage_b"))
    assert ws.stage_b == (snap / "decoder").resolve() and ws.formats["stage_b"] == "diffusers"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        codec = Codec.from_pretrained(snap, stage_b="lite", previewer=False, encoder_resolution=64,
                                      allow_zero_text=True)
    assert codec.files["stage_b"].name == "decoder_lite"
    assert codec.presets["stage_b"] == "tiny"
    inp = _inputs(seed=2)
    with torch.no_grad():
        a = codec.stage_b(inp["x"], inp["r"], inp["effnet"], inp["clip"])
    torch.testing.assert_close(a, _theirs(unet, inp), atol=1e-5, rtol=1e-4)
    # and decoding runs on it (4x4 latents -> 16x16 Stage A latents -> 64x64 image)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero text embedding
        y = codec.decode(torch.randn(1, 16, 4, 4), steps=2, seed=0, size=(64, 64))
    assert y.shape == (1, 3, 64, 64) and torch.isfinite(y).all()


def test_diffusers_bf16_variant_file(tmp_path):
    """``save_pretrained(variant='bf16')`` -> diffusion_pytorch_model.bf16.safetensors is found and read."""
    unet = _random_decoder(seed=3).to(torch.bfloat16)
    unet.save_pretrained(tmp_path / "decoder_lite", variant="bf16")
    state = load_weights(tmp_path / "decoder_lite", kind="stage_b", dtype=torch.float32)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    ref = unet.state_dict()
    q, k, v = (ref[f"down_blocks.2.2.attention.to_{n}.weight"] for n in "qkv")
    assert torch.equal(state["down_blocks.2.2.attention.attn.in_proj_weight"], torch.cat([q, k, v]).float())


def test_diffusers_config_scalar_dropout_and_per_level_self_attn():
    """diffusers accepts a single dropout and per-level self_attn; both translate (or fail clearly)."""
    from cascadekit.codec.errors import WeightsError
    from cascadekit.codec.weights.sources import unet_kwargs_from_diffusers

    cfg = dict(TINY_DECODER_CONFIG, dropout=0.1, self_attn=[True, True, True, True])
    kw = unet_kwargs_from_diffusers(cfg, "stage_b")
    assert kw["dropout"] == [0.1] * 4 and kw["self_attn"] is True
    with pytest.raises(WeightsError, match="self_attn"):
        unet_kwargs_from_diffusers(dict(cfg, self_attn=[True, False, True, True]), "stage_b")
