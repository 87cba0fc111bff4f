"""Official <-> diffusers key mapping against the reference manifests (meta tensors, no weights)."""
from __future__ import annotations

import pytest
import torch

from cascadekit.codec.errors import WeightsError
from cascadekit.codec.weights.keys import detect_format, diffusers_to_official, official_to_diffusers, to_official
from conftest import load_manifest

PAIRS = [
    ("stage_c", "diffusers_prior", "stage_c"),
    ("stage_c_lite", "diffusers_prior_lite", "stage_c"),
    ("stage_b", "diffusers_decoder", "stage_b"),
    ("stage_b_lite", "diffusers_decoder_lite", "stage_b"),
    ("stage_a", "diffusers_vqgan", "stage_a"),
]


def meta_state(name: str) -> dict[str, torch.Tensor]:
    return {
        k: torch.empty(s, device="meta", dtype=torch.long if k.endswith("num_batches_tracked") else torch.float32)
        for k, s in load_manifest(name)["state_dict"]
    }


def shapes(sd) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in sd.items()}


@pytest.mark.parametrize("official,diffusers,kind", PAIRS)
def test_official_to_diffusers_matches_manifest(official, diffusers, kind):
    sd = meta_state(official)
    conv = official_to_diffusers(sd, kind)
    want = {k: s for k, s in load_manifest(diffusers)["state_dict"]}
    got = shapes(conv)
    assert sorted(got.keys() - want.keys()) == []
    assert sorted(want.keys() - got.keys()) == []
    assert {k for k in want if want[k] != got[k]} == set()
    assert detect_format(sd) == ("official", kind)
    assert detect_format(conv) == ("diffusers", kind)


@pytest.mark.parametrize("official,diffusers,kind", PAIRS)
def test_diffusers_to_official_round_trip(official, diffusers, kind):
    d = meta_state(diffusers)
    back = diffusers_to_official(d, kind)
    assert shapes(back) == shapes(meta_state(official))
    back2, k2 = to_official(d)
    assert k2 == kind and shapes(back2) == shapes(back)


def test_effnet_and_previewer_detected():
    assert detect_format(meta_state("effnet_encoder")) == ("official", "effnet")
    assert detect_format(meta_state("previewer")) == ("official", "previewer")
    with pytest.raises(WeightsError, match="cannot tell"):
        detect_format(["foo.weight", "bar.bias"])
    with pytest.raises(WeightsError, match="expected stage_c"):
        to_official(meta_state("stage_a"), "stage_c")


def test_qkv_split_order_and_values_preserved():
    C = 4
    w = torch.arange(3 * C * C, dtype=torch.float32).reshape(3 * C, C)
    b = torch.arange(3 * C, dtype=torch.float32) + 100
    sd = {
        "clip_txt_mapper.weight": torch.randn(8, 5),
        "down_blocks.0.2.attention.attn.in_proj_weight": w,
        "down_blocks.0.2.attention.attn.in_proj_bias": b,
        "down_blocks.0.2.attention.attn.out_proj.weight": torch.randn(C, C),
        "down_blocks.0.2.attention.attn.out_proj.bias": torch.randn(C),
        "down_blocks.0.2.kv_mapper.1.weight": torch.randn(C, 5),
    }
    d = official_to_diffusers(sd, "stage_c")
    p = "down_blocks.0.2.attention."
    assert torch.equal(d[p + "to_q.weight"], w[:C])
    assert torch.equal(d[p + "to_k.weight"], w[C : 2 * C])
    assert torch.equal(d[p + "to_v.weight"], w[2 * C :])
    assert torch.equal(d[p + "to_v.bias"], b[2 * C :])
    assert torch.equal(d[p + "to_out.0.weight"], sd[p + "attn.out_proj.weight"])
    assert "down_blocks.0.2.kv_mapper.1.weight" in d
    back = diffusers_to_official(d, "stage_c")
    assert back.keys() == sd.keys()
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    # an incomplete diffusers block is an error, not a silently missing tensor
    del d[p + "to_k.weight"]
    with pytest.raises(WeightsError, match="lacks to_k.weight"):
        diffusers_to_official(d, "stage_c")


def test_stage_b_clip_mapper_and_stage_a_codebook_renamed():
    sd = {"clip_mapper.weight": torch.ones(2, 2), "effnet_mapper.0.weight": torch.ones(1)}
    d = official_to_diffusers(sd, "stage_b")
    assert set(d) == {"clip_txt_pooled_mapper.weight", "effnet_mapper.0.weight"}
    assert set(diffusers_to_official(d, "stage_b")) == set(sd)
    a = official_to_diffusers({"vquantizer.codebook.weight": torch.zeros(3, 4)}, "stage_a")
    assert set(a) == {"vquantizer.embedding.weight"}
    # Stage C keeps clip_txt_pooled_mapper as is
    c = diffusers_to_official({"clip_txt_pooled_mapper.weight": torch.ones(1), "clip_txt_mapper.weight": torch.ones(1)}, "stage_c")
    assert set(c) == {"clip_txt_pooled_mapper.weight", "clip_txt_mapper.weight"}
