"""Every official preset, built on the meta device, has the released checkpoint's keys, order, shapes and size."""
from __future__ import annotations

import pytest
import torch
from conftest import load_manifest

from cascadekit.codec.errors import WeightsError
from cascadekit.codec.models import (
    EfficientNetEncoder,
    EfficientNetEncoderConfig,
    Previewer,
    PreviewerConfig,
    StageA,
    StageAConfig,
    StageB,
    StageBConfig,
)
from cascadekit.codec.models import stage_b as stage_b_module
from cascadekit.generator import StageC, StageCConfig
from cascadekit.generator import stage_c as stage_c_module

OPTIONAL = (".num_batches_tracked",)

CASES = {
    "stage_a": (StageA, StageAConfig, "official"),
    "effnet_encoder": (EfficientNetEncoder, EfficientNetEncoderConfig, "official"),
    "previewer": (Previewer, PreviewerConfig, "official"),
    "stage_b": (StageB, StageBConfig, "big"),
    "stage_b_lite": (StageB, StageBConfig, "lite"),
    "stage_c": (StageC, StageCConfig, "big"),
    "stage_c_lite": (StageC, StageCConfig, "lite"),
}


def _meta(model_cls, cfg):
    with torch.device("meta"):
        return model_cls.from_config(cfg)


@pytest.mark.parametrize("manifest", list(CASES))
def test_official_preset_matches_manifest(manifest):
    model_cls, cfg_cls, preset = CASES[manifest]
    ref = load_manifest(manifest)
    cfg = cfg_cls.preset(preset)
    # the preset is exactly the constructor call that made the released file
    assert cfg.kwargs() == ref["constructor_kwargs"]
    model = _meta(model_cls, cfg)
    got = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    want = [(k, s) for k, s in ref["state_dict"]]
    got_d, want_d = dict(got), dict(want)
    missing = sorted(k for k in want_d.keys() - got_d.keys() if not k.endswith(OPTIONAL))
    extra = sorted(got_d.keys() - want_d.keys())
    wrong = sorted(k for k in want_d.keys() & got_d.keys() if want_d[k] != got_d[k])
    assert not missing and not extra and not wrong, (missing[:10], extra[:10], wrong[:10])
    # same order too (the official module registration order)
    assert [k for k, _ in got] == [k for k, _ in want]
    assert sum(p.numel() for p in model.parameters()) == ref["num_parameters"]


@pytest.mark.parametrize(
    "module,manifest,preset",
    [(stage_b_module, "stage_b", "big"), (stage_b_module, "stage_b_lite", "lite"),
     (stage_c_module, "stage_c", "big"), (stage_c_module, "stage_c_lite", "lite")],
)
def test_infer_preset_from_manifest_shapes(module, manifest, preset):
    ref = load_manifest(manifest)
    fake = {k: torch.empty(s, device="meta") for k, s in ref["state_dict"]}
    cfg = module.infer_preset(fake)
    assert cfg.kwargs() == ref["constructor_kwargs"]
    # one mis-shaped tensor: no preset fits
    key, shape = ref["state_dict"][-1]
    fake[key] = torch.empty([s + 1 for s in shape], device="meta")
    with pytest.raises(WeightsError, match="match no"):
        module.infer_preset(fake)


def test_infer_preset_rejects_the_other_stage():
    ref = load_manifest("stage_c_lite")
    fake = {k: torch.empty(s, device="meta") for k, s in ref["state_dict"]}
    with pytest.raises(WeightsError):
        stage_b_module.infer_preset(fake)


def _flops(model, inputs):
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(*inputs)
    return {str(op).split(".")[-1]: n for op, n in counter.get_flop_counts()["Global"].items()}


def test_flops_match_reference(reference_dir):
    """Convolution and linear (addmm) FLOPs at the standard shapes equal the official modules'."""
    import json

    entries = json.loads((reference_dir / "flops.json").read_text())["entries"]
    m = lambda *s: torch.empty(*s, device="meta")  # noqa: E731
    runs = {
        "stage_b_lite": (StageB, StageBConfig.preset("lite"), (m(1, 4, 256, 256), m(1), m(1, 16, 24, 24), m(1, 1, 1280))),
        "stage_c_lite": (StageC, StageCConfig.preset("lite"),
                         (m(1, 16, 24, 24), m(1), m(1, 77, 1280), m(1, 1, 1280), m(1, 1, 768))),
        "previewer": (Previewer, PreviewerConfig.preset("official"), (m(1, 16, 24, 24),)),
        "effnet_encoder": (EfficientNetEncoder, EfficientNetEncoderConfig.preset("official"), (m(1, 3, 768, 768),)),
        "stage_a_encode": (StageA, StageAConfig.preset("official"), (m(1, 3, 1024, 1024),)),
    }
    for name, (cls, cfg, inputs) in runs.items():
        model = _meta(cls, cfg).eval()
        got = _flops(model.encode if name == "stage_a_encode" else model, inputs)
        want = entries[name]["flops_by_op"]
        for op in ("convolution", "addmm"):
            assert got.get(op, 0) == want.get(op, 0), (name, op, got, want)
        if name == "stage_a_encode":
            assert _flops(model.decode, (m(1, 4, 256, 256),)) == entries["stage_a_decode"]["flops_by_op"]
        if "bmm" in got:  # attention counted only when SDPA decomposes into matmuls on this torch
            assert got["bmm"] == want["bmm"], (name, got, want)
