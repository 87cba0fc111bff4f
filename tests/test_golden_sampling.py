"""The sampling loop + networks reproduce the official GDF.sample runs in ../shared/reference/golden (default tier)."""
from __future__ import annotations

import pytest
import torch
from conftest import load_golden

from cascadekit.codec.diffusion import GDF, cosine_logsnr, cosine_t_noise_cond, timesteps
from cascadekit.codec.models.stage_b import StageB
from cascadekit.codec.weights.assign import build
from cascadekit.generator.stage_c import StageC

MODELS = {"StageB": StageB, "StageC": StageC}
SAMPLERS = {"DDPMSampler": "ddpm", "DDIMSampler": "ddim"}


class Recorder(torch.nn.Module):
    """Wraps a network and records the noise condition r it receives at every call."""

    def __init__(self, net):
        super().__init__()
        self.net, self.rs = net, []

    def forward(self, x, r, **inputs):
        self.rs.append(r.clone())
        return self.net(x, r, **inputs)


def _inputs(spec: dict, inputs: dict) -> dict:
    # dict order matters (cond/uncond are paired by order): keep the json's order
    return {k: inputs[v[len("input."):]] for k, v in spec.items()}


@pytest.mark.parametrize("case", ["stage_c_sample_ddim", "stage_c_sample_ddpm", "stage_c_sample_ddpm_shift2", "stage_b_sample"])
def test_golden_sampling(case):
    meta, state, inputs, ref = load_golden(case)
    tol = meta["per_output_tolerance"]
    kw = meta["call_kwargs"]
    cls = MODELS[meta["model_module"]]
    net = build(lambda: cls(**meta["constructor_kwargs"]), state)
    model = Recorder(net)
    steps = kw["timesteps"]
    sampler = SAMPLERS[meta["sampler"]]
    noise = [inputs[f"noise_step{i}"] for i in range(steps)] if sampler == "ddpm" else None
    assert (noise is not None) == ("noise_step0" in inputs)

    out = {}
    gdf = GDF()
    t = timesteps(steps, kw["t_start"], kw["t_end"])
    out["logsnr_range"] = gdf.schedule(t, kw["shift"])
    out["noise_cond_range"] = gdf.noise_cond(out["logsnr_range"])
    with torch.no_grad():
        it = gdf.sample(
            model,
            inputs["x_init"],
            steps=steps,
            cfg=kw["cfg"],
            cfg_rho=kw["cfg_rho"],
            shift=kw["shift"],
            t_start=kw["t_start"],
            t_end=kw["t_end"],
            cfg_t_stop=kw["cfg_t_stop"],
            cfg_t_start=kw["cfg_t_start"],
            sampler=sampler,
            eta=float(meta["sampler_eta"]),
            model_inputs=_inputs(meta["model_inputs"], inputs),
            unconditional_inputs=_inputs(meta["unconditional_inputs"], inputs),
            noise=noise,
        )
        for i, step in enumerate(it):
            out[f"x0_step{i}"], out[f"x_step{i}"], out[f"pred_step{i}"] = step
    out["x0_final"], out["x_final"] = out[f"x0_step{steps - 1}"], out[f"x_step{steps - 1}"]
    assert len(model.rs) == steps and all(r.shape == (2 * inputs["x_init"].shape[0],) for r in model.rs)
    out["model_r_per_step"] = torch.stack(model.rs)

    assert set(ref) <= set(out), set(ref) - set(out)
    # schedule first: a mismatch here is ours, not the network's
    order = ["logsnr_range", "noise_cond_range", "model_r_per_step"] + [n for n in meta["outputs"] if "range" not in n and n != "model_r_per_step"]
    for name in order:
        expected = ref[name]
        got = out[name].reshape(expected.shape) if out[name].numel() == expected.numel() else out[name]
        torch.testing.assert_close(got, expected, atol=tol[name]["atol"], rtol=tol[name]["rtol"],
                                   msg=lambda m: f"{case} {name}: {m}")


def test_golden_sampling_schedule_is_bit_exact():
    """r per step is bit-equal to the official float32 values (the networks' r-embedding amplifies ulps)."""
    meta, _, _, ref = load_golden("stage_c_sample_ddpm_shift2")
    kw = meta["call_kwargs"]
    logsnr = cosine_logsnr(timesteps(kw["timesteps"], kw["t_start"], kw["t_end"]), kw["shift"])
    assert torch.equal(logsnr, ref["logsnr_range"].reshape(logsnr.shape))
    r = cosine_t_noise_cond(logsnr)[:-1]
    assert torch.equal(r[:, None].expand(-1, ref["model_r_per_step"].shape[1]), ref["model_r_per_step"])
