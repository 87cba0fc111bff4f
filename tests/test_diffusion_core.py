"""The shared diffusion core (codec/diffusion): golden gdf_schedule conformance + unit tests."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import load_golden
from cascadekit.codec.diffusion import (
    GDF,
    AdaptiveLossWeight,
    SamplingSettings,
    alpha_sigma,
    cfg,
    cosine_logsnr,
    cosine_t_noise_cond,
    ddim_step,
    logsnr_limits,
    make_target,
    p2_loss_weight,
    pred_to_x0_eps,
    sample,
    sample_final,
    timesteps,
)
from cascadekit.codec.errors import InputError


def close(actual, expected, tol, name=""):
    torch.testing.assert_close(actual, expected, atol=tol["atol"], rtol=tol["rtol"], msg=lambda m: f"{name}: {m}")


# ----------------------------------------------------------------------------------- golden


def test_golden_gdf_schedule():
    meta, _, inp, ref = load_golden("gdf_schedule")
    tol = meta["per_output_tolerance"]
    gdf = GDF()  # official defaults
    out = {}
    for S in meta["call_kwargs"]["shifts"]:
        logsnr = gdf.schedule(inp["t"], shift=S)
        out[f"logsnr_shift{S}"] = logsnr
        out[f"noise_cond_shift{S}"] = gdf.noise_cond(logsnr)
        out[f"a_shift{S}"], out[f"b_shift{S}"] = gdf.scalers(logsnr)
        out[f"p2_weight_shift{S}"] = gdf.loss_weight_of(logsnr)
    for L in meta["call_kwargs"]["loss_shifts"]:
        out[f"p2_weight_lossshift{L}"] = gdf.loss_weight_of(gdf.schedule(inp["t"], shift=1), shift=L)
    out["schedule_limits"] = torch.tensor(gdf.limits)
    for S in meta["call_kwargs"]["diffuse_shifts"]:
        d = gdf.diffuse(inp["x0"], t=inp["t_diffuse"], noise=inp["epsilon"], shift=S, loss_shift=S)
        out[f"diffuse_noised_shift{S}"] = d.x_t
        out[f"diffuse_target_shift{S}"] = d.target
        out[f"diffuse_logsnr_shift{S}"] = d.logsnr
        out[f"diffuse_noise_cond_shift{S}"] = d.noise_cond
        out[f"diffuse_loss_weight_shift{S}"] = d.loss_weight
        out[f"undiffuse_x0_shift{S}"], out[f"undiffuse_eps_shift{S}"] = gdf.undiffuse(d.x_t, d.logsnr, inp["pred"])
    assert sorted(out) == sorted(meta["outputs"])
    for name in meta["outputs"]:
        close(out[name].float(), ref[name], tol[name], name)


def test_schedule_clamps_shifted_logsnr_to_shift1_limits():
    lo, hi = logsnr_limits()
    assert lo == pytest.approx(-9.210240, abs=1e-5) and hi == pytest.approx(9.210074, abs=1e-5)
    t = torch.tensor([1.0, 0.5, 0.0])
    l1, l2 = cosine_logsnr(t, 1), cosine_logsnr(t, 2)
    assert l2[0].item() == pytest.approx(lo, abs=1e-6)  # not -9.21 - 2 ln 2
    assert (l2[1] - l1[1]).item() == pytest.approx(-2 * math.log(2), abs=1e-5)
    assert l1.dtype == torch.float32
    with pytest.raises(InputError):
        cosine_logsnr(t, 0)


def test_noise_cond_inverts_schedule_inside_the_clamp():
    t = torch.linspace(0.1, 0.9, 9)
    r = cosine_t_noise_cond(cosine_logsnr(t))
    torch.testing.assert_close(r, t, atol=2e-6, rtol=0)
    ends = cosine_t_noise_cond(cosine_logsnr(torch.tensor([1.0, 0.0])))
    torch.testing.assert_close(ends, torch.tensor([0.993583, 0.002257]), atol=2e-6, rtol=0)


def test_timesteps_grid_and_errors():
    torch.testing.assert_close(timesteps(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    torch.testing.assert_close(timesteps(2, 0.6, 0.2), torch.tensor([0.6, 0.4, 0.2]))
    for bad in [dict(steps=0), dict(steps=2, t_start=1.5), dict(steps=2, t_start=0.2, t_end=0.5)]:
        with pytest.raises(InputError):
            timesteps(**bad)


# ----------------------------------------------------------------------------------- targets


@pytest.mark.parametrize("kind", ["epsilon", "v", "x0"])
def test_targets_round_trip(kind):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    a, b = alpha_sigma(torch.tensor([-3.0, 0.0, 4.0]))
    x_t = a.view(-1, 1, 1, 1) * x0 + b.view(-1, 1, 1, 1) * eps
    tgt = make_target(kind, x0, eps, a, b)
    expected = {"epsilon": eps, "x0": x0, "v": a.view(-1, 1, 1, 1) * eps - b.view(-1, 1, 1, 1) * x0}[kind]
    torch.testing.assert_close(tgt, expected)
    x0_back, eps_back = pred_to_x0_eps(kind, x_t, tgt, a, b)
    torch.testing.assert_close(x0_back, x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(eps_back, eps, atol=1e-4, rtol=1e-4)
    with pytest.raises(InputError):
        make_target("score", x0, eps, a, b)


@pytest.mark.parametrize("target", ["epsilon", "v", "x0"])
def test_diffuse_undiffuse_inverse(target):
    gdf = GDF(target=target)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 3, 6, 6, generator=g)
    d = gdf.diffuse(x0, t=torch.tensor([0.1, 0.4, 0.7, 0.95]), shift=2, generator=g)
    a, b = alpha_sigma(d.logsnr)
    torch.testing.assert_close(d.x_t, a.view(-1, 1, 1, 1) * x0 + b.view(-1, 1, 1, 1) * d.noise)
    x0_back, eps_back = gdf.undiffuse(d.x_t, d.logsnr, d.target)  # a perfect prediction
    torch.testing.assert_close(x0_back, x0, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(eps_back, d.noise, atol=2e-4, rtol=1e-4)
    assert d.noise_cond.shape == d.loss_weight.shape == (4,)
    # random t is drawn in [0.001, 1] and reproducible with a generator
    t1 = gdf.sample_t(64, torch.Generator().manual_seed(5))
    assert torch.equal(t1, gdf.sample_t(64, torch.Generator().manual_seed(5)))
    assert t1.min() >= 0.001 and t1.max() <= 1.0


# ----------------------------------------------------------------------------------- guidance


def test_cfg_identity_at_scale_1_rho_0():
    g = torch.Generator().manual_seed(2)
    c, u = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    assert torch.equal(cfg(c, u, 1.0, 0.0), c)
    assert torch.equal(cfg(c, u, 0.0, 0.0), u)


def test_cfg_rho_uses_whole_batch_std():
    g = torch.Generator().manual_seed(3)
    # sample 0 has a much larger spread than sample 1: per-sample and whole-batch std differ a lot
    c = torch.randn(2, 4, 3, 3, generator=g) * torch.tensor([5.0, 0.2]).view(2, 1, 1, 1)
    u = torch.randn(2, 4, 3, 3, generator=g) * torch.tensor([0.3, 2.0]).view(2, 1, 1, 1)
    scale, rho = 4.0, 0.7
    lerp = u + scale * (c - u)
    whole = rho * lerp * c.std() / (lerp.std() + 1e-9) + (1 - rho) * lerp
    per_sample_std = lambda x: x.flatten(1).std(dim=1).view(-1, 1, 1, 1)  # noqa: E731
    per_sample = rho * lerp * per_sample_std(c) / (per_sample_std(lerp) + 1e-9) + (1 - rho) * lerp
    got = cfg(c, u, scale, rho)
    torch.testing.assert_close(got, whole, atol=1e-5, rtol=1e-5)
    assert (got - per_sample).abs().max() > 0.1
    # torch.std is the unbiased estimator
    biased = rho * lerp * c.std(unbiased=False) / (lerp.std(unbiased=False) + 1e-9) + (1 - rho) * lerp
    assert torch.allclose(got, biased)  # ratio of two stds: the n/(n-1) factor cancels
    assert not torch.allclose(got, lerp)


# ----------------------------------------------------------------------------------- loss weights


def test_p2_loss_weight():
    logsnr = torch.tensor([-9.0, -1.0, 0.0, 2.5, 9.0])
    torch.testing.assert_close(p2_loss_weight(logsnr), torch.sigmoid(-logsnr))  # k = gamma = s = 1
    got = p2_loss_weight(logsnr, k=0.5, gamma=2.0, s=0.5)
    torch.testing.assert_close(got, (0.5 + torch.exp(0.5 * logsnr)) ** -2.0)
    torch.testing.assert_close(p2_loss_weight(logsnr, shift=2), torch.sigmoid(-(logsnr + 2 * math.log(2))))
    gdf = GDF()
    torch.testing.assert_close(gdf.loss_weight_of(logsnr, shift=2), p2_loss_weight(logsnr, shift=2))
    assert torch.equal(GDF(loss_weight="constant").loss_weight_of(logsnr), torch.ones(5))


def test_adaptive_loss_weight_updates_and_checkpoints():
    w = AdaptiveLossWeight()
    assert w.bucket_ranges.shape == (299,) and w.bucket_losses.shape == (300,)
    logsnr = torch.tensor([-9.5, 0.01, 0.02, 5.0])  # the two middle values share a bucket
    idx = w.bucket_index(logsnr)
    assert idx[1] == idx[2] and len(set(idx.tolist())) == 3
    torch.testing.assert_close(w(logsnr), torch.ones(4))
    w.update(logsnr, torch.tensor([3.0, 2.0, 5.0, 0.5]), beta=0.9)
    expect = torch.ones(300)
    expect[idx[0]] = 0.9 + 0.1 * 3.0
    expect[idx[1]] = 0.9 + 0.1 * 5.0  # last sample of the shared bucket wins
    expect[idx[3]] = 0.9 + 0.1 * 0.5
    torch.testing.assert_close(w.bucket_losses, expect)
    torch.testing.assert_close(w(logsnr), 1 / expect[idx])
    # through GDF, and checkpointed as tensors
    gdf = GDF(loss_weight="adaptive")
    gdf.update_loss_weight(logsnr, torch.tensor([3.0, 2.0, 5.0, 0.5]), beta=0.9)
    state = gdf.state_dict()
    assert set(state) == {"adaptive.bucket_ranges", "adaptive.bucket_losses"}
    fresh = GDF(loss_weight="adaptive")
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.loss_weight_of(logsnr), 1 / expect[idx])
    with pytest.raises(InputError):
        GDF().load_state_dict(state)
    with pytest.raises(InputError):
        GDF(loss_weight="huber")


# ----------------------------------------------------------------------------------- samplers


class ToyModel(torch.nn.Module):
    """A tiny deterministic ε-predictor that uses r and a conditioning tensor; records its calls."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, r, cond):
        self.calls.append((x.shape[0], r.clone(), cond.clone()))
        return torch.tanh(0.3 * x + cond.view(-1, 1, 1, 1)) * (1 - r.view(-1, 1, 1, 1) / 2)


def _run(model=None, **kw):
    model = model or ToyModel()
    x_init = kw.pop("x_init", torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)))
    kw.setdefault("model_inputs", {"cond": torch.tensor([0.5, -0.5])})
    kw.setdefault("unconditional_inputs", {"cond": torch.tensor([0.1, 0.1])})
    kw.setdefault("steps", 3)
    kw.setdefault("cfg", 2.0)
    return list(sample(model, x_init, **kw)), model


def test_sampler_predrawn_noise_is_reproducible_and_used():
    g = torch.Generator().manual_seed(7)
    noise = [torch.randn(2, 3, 4, 4, generator=g) for _ in range(3)]
    a, _ = _run(noise=noise)
    b, _ = _run(noise=[n.clone() for n in noise])
    for sa, sb in zip(a, b):
        assert torch.equal(sa.x, sb.x) and torch.equal(sa.x0, sb.x0) and torch.equal(sa.pred, sb.pred)
    # DDPM adds noise at every step, the last one included
    changed = noise[:2] + [noise[2] + 1.0]
    c, _ = _run(noise=changed)
    assert torch.equal(c[1].x, a[1].x) and not torch.equal(c[2].x, a[2].x)
    # DDIM (eta 0) ignores the draws
    d1, _ = _run(noise=noise, sampler="ddim")
    d2, _ = _run(noise=changed, sampler="ddim")
    assert torch.equal(d1[-1].x, d2[-1].x)
    with pytest.raises(InputError):
        _run(noise=noise[:2])


def test_sampler_generator_seeding_is_reproducible_and_device_independent():
    a, _ = _run(generator=torch.Generator().manual_seed(11))
    b, _ = _run(generator=torch.Generator().manual_seed(11))
    c, _ = _run(generator=torch.Generator().manual_seed(12))
    assert torch.equal(a[-1].x, b[-1].x) and not torch.equal(a[-1].x, c[-1].x)
    # the draws are the CPU generator's stream, whatever device x lives on
    g = torch.Generator().manual_seed(11)
    predrawn = [torch.randn(2, 3, 4, 4, generator=g) for _ in range(3)]
    d, _ = _run(noise=predrawn)
    assert torch.equal(a[-1].x, d[-1].x)
    # x_init=None draws the start from the generator too
    s1 = sample_final(ToyModel(), None, shape=(2, 3, 4, 4), steps=2, cfg=None, model_inputs={"cond": torch.zeros(2)},
                      generator=torch.Generator().manual_seed(4))
    s2 = sample_final(ToyModel(), None, shape=(2, 3, 4, 4), steps=2, cfg=None, model_inputs={"cond": torch.zeros(2)},
                      generator=torch.Generator().manual_seed(4))
    assert torch.equal(s1.x0, s2.x0)
    if torch.cuda.is_available():
        x_init = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
        e, _ = _run(generator=torch.Generator().manual_seed(11), x_init=x_init.cuda(),
                    model_inputs={"cond": torch.tensor([0.5, -0.5]).cuda()},
                    unconditional_inputs={"cond": torch.tensor([0.1, 0.1]).cuda()})
        torch.testing.assert_close(e[-1].x.cpu(), a[-1].x, atol=1e-4, rtol=1e-4)


def test_sampler_cfg_batches_cond_and_uncond_in_one_call():
    steps, model = _run(noise=[torch.zeros(2, 3, 4, 4)] * 3)
    assert len(model.calls) == 3
    for n, r, cond in model.calls:
        assert n == 4 and r.shape == (4,) and torch.equal(r[:2], r[2:])
        assert torch.equal(cond, torch.tensor([0.5, -0.5, 0.1, 0.1]))
    # the guided prediction is cfg() of the two halves
    toy = ToyModel()
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    r0 = cosine_t_noise_cond(cosine_logsnr(torch.tensor([1.0]))).expand(4)
    out = toy(torch.cat([x, x]), r0, torch.tensor([0.5, -0.5, 0.1, 0.1]))
    torch.testing.assert_close(steps[0].pred, cfg(out[:2], out[2:], 2.0, 0.7))
    # no unconditional inputs -> zeros; no cfg -> one call on the conditional batch
    _, m0 = _run(unconditional_inputs=None, noise=[torch.zeros(2, 3, 4, 4)] * 3)
    assert torch.equal(m0.calls[0][2], torch.tensor([0.5, -0.5, 0.0, 0.0]))
    _, m1 = _run(cfg=None, noise=[torch.zeros(2, 3, 4, 4)] * 3)
    assert m1.calls[0][0] == 2
    # bad arguments are rejected when sample() is called, before any model call
    x = torch.zeros(2, 3, 4, 4)
    for bad in [dict(unconditional_inputs={"other": torch.zeros(2)}), dict(sampler="euler"), dict(steps=0),
                dict(cfg=(1.0, 2.0, 3.0)), dict(target="score"), dict(noise=[x], steps=2)]:
        kw = dict(model_inputs={"cond": torch.zeros(2)}, steps=2) | bad
        with pytest.raises(InputError):
            sample(ToyModel(), x, **kw)
    with pytest.raises(InputError):  # wrong prediction shape from the model
        list(sample(lambda x, r: x[:, :1], x, steps=1, cfg=None))


def test_t_start_below_one_trims_the_schedule():
    x_init = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    steps, model = _run(x_init=x_init, t_start=0.6, steps=2, shift=2, noise=[torch.zeros(2, 3, 4, 4)] * 2)
    assert len(steps) == 2 and len(model.calls) == 2
    expect_r = cosine_t_noise_cond(cosine_logsnr(torch.tensor([0.6, 0.3]), 2))
    for (_, r, _), er in zip(model.calls, expect_r):
        assert torch.equal(r, er.expand(4))


def test_noised_start_for_image_to_image():
    gdf = GDF()
    x0 = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    eps = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    x_init = gdf.noised_start(x0, 0.8, noise=eps)
    a, b = alpha_sigma(cosine_logsnr(torch.tensor(0.8), 1))  # shift 1, as the official notebooks
    torch.testing.assert_close(x_init, a * x0 + b * eps)
    s1 = gdf.noised_start(x0, 0.8, generator=torch.Generator().manual_seed(8))
    assert torch.equal(s1, gdf.noised_start(x0, 0.8, generator=torch.Generator().manual_seed(8)))
    with pytest.raises(InputError):
        gdf.noised_start(x0, 1.5)


def test_lcm_returns_the_final_x0():
    """An oracle that knows x0 makes every LCM step's x0 exact; the last yield's x0 is the sample."""
    g = torch.Generator().manual_seed(9)
    x0_true = torch.randn(2, 3, 4, 4, generator=g)
    steps_n = 4
    logsnrs = cosine_logsnr(timesteps(steps_n))
    state = {"i": 0}

    def oracle(x, r):
        a, b = alpha_sigma(logsnrs[state["i"]])
        state["i"] += 1
        return (x - a * x0_true) / b

    x_init = torch.randn(2, 3, 4, 4, generator=g)
    last = sample_final(oracle, x_init, steps=steps_n, cfg=None, sampler="lcm", generator=g)
    torch.testing.assert_close(last.x0, x0_true, atol=1e-4, rtol=1e-4)
    # the LCM state after the final step is re-noised to t = 0 (b ≈ 0.01), close to but not x0
    assert 0 < (last.x - x0_true).abs().max() < 0.1


def test_ddim_step_is_deterministic_and_ddpm_sigma_formula():
    x0, eps, noise = torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5), torch.full((1, 1, 2, 2), 2.0)
    l, lp = torch.tensor([-1.0]), torch.tensor([1.0])
    a, b = alpha_sigma(l)
    ap, bp = alpha_sigma(lp)
    torch.testing.assert_close(ddim_step(x0, eps, l, lp, noise, 0.0), (ap * 1 + bp * 0.5).expand(1, 1, 2, 2).contiguous())
    sigma = (bp**2 / b**2).sqrt() * (1 - a**2 / ap**2).sqrt()
    expect = ap * 1 + (bp**2 - sigma**2).sqrt() * 0.5 + sigma * 2.0
    torch.testing.assert_close(ddim_step(x0, eps, l, lp, noise, 1.0), expect.expand(1, 1, 2, 2).contiguous())


@pytest.mark.parametrize("target", ["epsilon", "v", "x0"])
def test_ddim_with_an_oracle_recovers_x0_for_every_target(target):
    """A model predicting the exact target of a known x0 makes DDIM (eta 0) land on x0 for each target kind."""
    g = torch.Generator().manual_seed(21)
    x0_true = torch.randn(2, 3, 4, 4, generator=g)
    logsnrs = cosine_logsnr(timesteps(3, 0.8, 0.0), 2)
    seen = []

    def oracle(x, r):
        a, b = alpha_sigma(logsnrs[len(seen)])
        seen.append(r)
        return make_target(target, x0_true, (x - a * x0_true) / b, a, b)

    gdf = GDF(target=target)
    x_init = gdf.diffuse(x0_true, t=torch.full((2,), 0.8), shift=2, generator=g).x_t
    steps = list(gdf.sample(oracle, x_init, steps=3, cfg=None, sampler="ddim", shift=2, t_start=0.8))
    for st in steps:
        torch.testing.assert_close(st.x0, x0_true, atol=1e-4, rtol=1e-4)
    a_end, b_end = alpha_sigma(logsnrs[-1])
    torch.testing.assert_close(steps[-1].x, a_end * x0_true + b_end * ((x_init - alpha_sigma(logsnrs[0])[0] * x0_true)
                                                                     / alpha_sigma(logsnrs[0])[1]), atol=1e-4, rtol=1e-4)


def test_cfg_schedule_pair_and_cfg_t_stop():
    """cfg=(at t=1, at t=0) is linear in t; cfg_t_stop turns guidance off below that t (one call on cond only)."""
    calls = []

    def model(x, r, flag):  # cond rows -> 1, uncond rows -> 0: the guided pred equals the scale (rho 0)
        calls.append(x.shape[0])
        return flag.view(-1, 1, 1, 1).expand_as(x).clone()

    x = torch.zeros(2, 1, 2, 2)
    steps = list(sample(model, x, steps=4, cfg=(4.0, 1.0), cfg_rho=0.0, cfg_t_stop=0.5, sampler="ddim",
                        model_inputs={"flag": torch.ones(2)}, unconditional_inputs={"flag": torch.zeros(2)}))
    assert calls == [4, 4, 4, 2]
    for st, expect in zip(steps, [4.0, 3.25, 2.5, 1.0]):  # t = 1, .75, .5 guided; t = .25 unguided
        torch.testing.assert_close(st.pred, torch.full_like(x, expect))


def test_grouped_sampling_settings_equal_the_keyword_form():
    """sample(model, x, SamplingSettings(...)) == sample(model, x, **the same keywords); keywords override
    fields of the settings; a misspelt keyword is an InputError before any model call."""
    g = torch.Generator().manual_seed(3)
    noise = [torch.randn(2, 3, 4, 4, generator=g) for _ in range(4)]
    kw = dict(steps=4, cfg=(3.0, 1.5), cfg_rho=0.5, shift=2.0, sampler="ddim", eta=0.3, t_start=0.9, t_end=0.1,
              cfg_t_stop=0.3, cfg_t_start=0.8)
    by_keywords, m_kw = _run(noise=noise, **kw)
    x_init = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    grouped_model = ToyModel()
    grouped = list(sample(grouped_model, x_init, SamplingSettings(**kw), noise=noise,
                          model_inputs={"cond": torch.tensor([0.5, -0.5])},
                          unconditional_inputs={"cond": torch.tensor([0.1, 0.1])}))
    assert len(grouped) == 4 and [c[0] for c in grouped_model.calls] == [c[0] for c in m_kw.calls]
    for a, b in zip(by_keywords, grouped):
        assert torch.equal(a.x, b.x) and torch.equal(a.x0, b.x0) and torch.equal(a.pred, b.pred)
    # a keyword overrides the settings' field; the default settings are sample()'s keyword defaults
    other, _ = _run(noise=noise, **{**kw, "cfg": 1.0})
    overridden = list(sample(ToyModel(), x_init, SamplingSettings(**kw), cfg=1.0, noise=noise,
                             model_inputs={"cond": torch.tensor([0.5, -0.5])},
                             unconditional_inputs={"cond": torch.tensor([0.1, 0.1])}))
    assert torch.equal(other[-1].x0, overridden[-1].x0) and not torch.equal(other[-1].x0, by_keywords[-1].x0)
    assert SamplingSettings().steps == 20 and SamplingSettings().cfg == 3.0 and SamplingSettings().sampler == "ddpm"
    model = ToyModel()
    with pytest.raises(InputError, match="stepz"):
        sample(model, x_init, stepz=3)
    with pytest.raises(InputError, match="SamplingSettings"):
        sample(model, x_init, {"steps": 3})
    with pytest.raises(InputError, match="cfg_scale"):
        SamplingSettings().replace(cfg_scale=2.0)
    assert model.calls == []
    # GDF.sample forwards the grouped form too
    via_gdf = list(GDF().sample(ToyModel(), x_init, SamplingSettings(**kw), noise=noise,
                                model_inputs={"cond": torch.tensor([0.5, -0.5])},
                                unconditional_inputs={"cond": torch.tensor([0.1, 0.1])}))
    assert torch.equal(via_gdf[-1].x0, grouped[-1].x0)


def test_offset_noise_adds_a_per_channel_constant():
    x0 = torch.zeros(2, 3, 4, 4)
    eps = torch.zeros(2, 3, 4, 4)
    d = GDF(offset_noise=0.5).diffuse(x0, t=torch.tensor([0.5, 0.5]), noise=eps, generator=torch.Generator().manual_seed(0))
    assert d.noise.abs().max() > 0
    assert torch.equal(d.noise, d.noise[:, :, :1, :1].expand_as(d.noise))  # constant over H, W
    assert torch.equal(GDF().diffuse(x0, t=torch.tensor([0.5, 0.5]), noise=eps).noise, eps)
