"""The Stage B closed loop, measured by `cascadekit evaluate` with the released Stage B sampling (10 DDPM steps,
guidance 1.1): a tiny Stage B overfits 4 photographs and the reconstruction PSNR of those images rises clearly.

Why earlier attempts sampled noise (~5 dB) for both decoders, and what this experiment does instead:

* The tiny random EfficientNet gives every image almost the same latent (std across the 4 images 0.0009): the
  condition told the images apart by nothing. Here its output layer (1x1 conv + BatchNorm statistics) is
  calibrated on the training images (:func:`calibrated_effnet`), so the latents vary with the image at unit
  scale, as the released encoder's do.
* Sampling starts at t = 1 where a = 0.01: the first DDPM step turns an error δ of the predicted ε into
  about a(t=0.9)/a(1) ≈ 15·δ of the next state, which the later steps never remove. After 150-600 updates at a
  constant lr the ε error at t ≈ 1 was 25-60 % (relative MSE), so every sample diverged (x0 std ~90). 1500
  updates with a cosine lr decay bring it down enough for 10 steps (constant lr: +1.1 dB only).
* Pyramid noise is off: at 8x8 Stage A latents the official size range [1, 16] puts half of ε's variance
  into the offsets (18 % at the released 256x256); with it on, the same run rose by +0.3 dB only.
* Stage A is the mean-pool autoencoder of the helpers (a real PSNR ceiling, ~20 dB on these photos).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from _tiny_weights import tiny_weights_dir
from cascadekit.cli.main import main as cli
from cascadekit.cli.out_folder import EVALUATE, check_out_folder, claim_out_folder
from cascadekit.codec.errors import OutputError
from stage_b_helpers import SMALL_B, photo_folder, weights_with_mean_pool_stage_a

#: the training of the experiment (see the module docstring); measured PSNR 4.86 -> 7.58 dB (with seed 1: +2.1 dB,
#: every image +1.5 .. +2.6 dB; evaluating with another sampling seed moves the means by ~0.3 dB)
TRAIN = dict(preset="tiny", steps=1500, batch_size=4, lr=3e-3, lr_schedule="cosine", pyramid_noise=False,
             save_every=1500, log_every=100)


def calibrated_effnet(weights, images: torch.Tensor, encoder_resolution: int) -> None:
    """Rewrite ``weights``/effnet_encoder.safetensors so that its latents of ``images`` have zero mean and unit
    variance per channel (mapper conv rows scaled, BatchNorm statistics set), like a trained encoder's."""
    from cascadekit.codec.codec import Codec

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        codec = Codec.from_pretrained(weights, device="cpu", dtype="fp32", components=("effnet",),
                                      encoder_resolution=encoder_resolution)
    conv, bn = codec.effnet.mapper
    seen = {}
    hook = bn.register_forward_pre_hook(lambda m, a: seen.setdefault("f", a[0].detach().clone()))
    codec.encode(images)
    hook.remove()
    f = seen["f"].transpose(0, 1).flatten(1).double()  # (16, images x positions)
    scale = 1 / f.std(1, unbiased=False)
    state = {k: v.clone() for k, v in codec.effnet.state_dict().items()}
    state["mapper.0.weight"] = (conv.weight.double() * scale.view(-1, 1, 1, 1)).float()
    state["mapper.1.running_mean"] = (f.mean(1) * scale).float()
    state["mapper.1.running_var"] = torch.full_like(bn.running_var, 1 - bn.eps)
    target = weights / "effnet_encoder.safetensors"
    target.unlink()  # a symlink into the shared tiny set: replaced, never written through
    save_file(state, str(target))


def small_b_weights(tiny: Path, tmp_path: Path) -> Path:
    """A weights folder: the ``tiny`` set with the mean-pool Stage A, an EfficientNet calibrated on the photos of
    ``tmp_path/imgs`` (written here) and a random :data:`SMALL_B` Stage B (its kwargs in cascadekit.json)."""
    from cascadekit.codec.models.stage_b import StageB, StageBConfig
    from cascadekit.codec.reconstruct_files import prepare_image

    w = weights_with_mean_pool_stage_a(tiny, tmp_path / "w")
    imgs = photo_folder(tmp_path / "imgs")
    calibrated_effnet(w, torch.stack([prepare_image(p, 32) for p in sorted(imgs.iterdir())]), 32)
    cfg = StageBConfig(**{**StageBConfig.preset("tiny").kwargs(), **SMALL_B})
    side = json.loads((w / "cascadekit.json").read_text())
    side["models"]["stage_b"] = cfg.kwargs()
    torch.manual_seed(0)
    for name in ("stage_b_lite.safetensors", "cascadekit.json"):
        (w / name).unlink()  # symlinks into the shared tiny set: replaced, never written through
    save_file(StageB.from_config(cfg).state_dict(), str(w / "stage_b_lite.safetensors"))
    (w / "cascadekit.json").write_text(json.dumps(side))
    return w


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_weights_dir(tmp_path_factory)


def _cli(args, code=0):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == code, r.output
    return r


def test_evaluate_sees_the_overfit_stage_b_with_the_released_sampling(tiny, tmp_path):
    from cascadekit.generator.tasks.stage_b_config import StageBTrainConfig
    from cascadekit.generator.train_stage_b import train_stage_b

    torch.set_num_threads(1)
    w = small_b_weights(tiny, tmp_path)
    imgs, store = tmp_path / "imgs", tmp_path / "s.zarr"
    _cli(["encode", imgs, "--out", store, "--weights", w, "--resolution", 32, "--stage-a", "--dtype", "float32",
          "--num-workers", 0, "--quiet", "--no-preview", "--batch-size", 4, "--chunk-rows", 4])
    cfg = StageBTrainConfig.from_dict(TRAIN)
    res = train_stage_b(store, cfg, tmp_path / "run", init=w, model_overrides=SMALL_B, log=lambda m: None)
    losses = [h["loss"] for h in res.history]
    assert sum(losses[-100:]) < 0.2 * sum(losses[:100]), (losses[:3], losses[-3:])

    ev = tmp_path / "ev"
    args = ["evaluate", imgs, "--store", store, "--out", ev, "--weights", w, "--metrics", "psnr,ssim", "--device",
            "cpu", "--quiet", "--stage-b-weights", tmp_path / "run"]  # default sampling: 10 steps, guidance 1.1
    _cli(args + ["--compare"])
    record = json.loads((ev / "metrics.json").read_text())
    assert record["mode"] == "compare" and record["decoders"] == ["base", "finetuned"]
    base, tuned = (record["aggregate"][k]["psnr"]["mean"] for k in ("base", "finetuned"))
    delta = record["delta_vs_baseline"]["finetuned"]["psnr"]
    assert delta == pytest.approx(tuned - base) and delta > 1.2, (base, tuned)  # measured 4.86 -> 7.58 dB
    assert record["delta_vs_baseline"]["finetuned"]["ssim"] > 0
    rows = (ev / "compare_per_image.csv").read_text().splitlines()
    col = rows[0].split(",").index("psnr_delta_finetuned")
    assert len(rows) == 5 and all(float(r.split(",")[col]) > 0.5 for r in rows[1:]), rows

    # the out-folder convention knows a comparison folder: refused without --overwrite, replaced with it
    r = _cli(args + ["--compare"], code=2)
    assert "earlier `cascadekit evaluate` run" in r.output
    before = sorted(p.relative_to(ev).as_posix() for p in ev.rglob("*") if p.is_file())
    _cli(args + ["--compare", "--overwrite"])
    assert sorted(p.relative_to(ev).as_posix() for p in ev.rglob("*") if p.is_file()) == before
    _cli(args + ["--overwrite"])  # a single-decoder report replaces the comparison, nothing stale stays
    assert not (ev / "base").exists() and not (ev / "compare.json").exists()
    assert json.loads((ev / "metrics.json").read_text())["aggregate"]["psnr"]["mean"] == pytest.approx(tuned)


def test_a_comparison_folder_is_an_evaluate_output(tmp_path):
    ev = tmp_path / "ev"
    files = ["metrics.json", "compare.json", "compare_per_image.csv", "index.html", "compare_grids/0000_a.png",
             "base/metrics.json", "base/per_image.csv", "base/index.html", "base/grids/0000_a.png",
             "finetuned/metrics.json", "finetuned/plots/hist_psnr.png", "finetuned/.metrics.json.x1.tmp"]
    for f in files:
        (ev / f).parent.mkdir(parents=True, exist_ok=True)
        (ev / f).write_text("old")
    with pytest.raises(OutputError, match="earlier `cascadekit evaluate` run"):
        check_out_folder(ev, EVALUATE, overwrite=False)
    (ev / "base" / "photo.jpg").write_text("yours")
    with pytest.raises(OutputError, match=r"not outputs of `cascadekit evaluate` \(base/photo.jpg\)"):
        check_out_folder(ev, EVALUATE, overwrite=True)
    (ev / "base" / "photo.jpg").unlink()
    assert len(check_out_folder(ev, EVALUATE, overwrite=True)) == len(files)
    claim_out_folder(ev, EVALUATE, overwrite=True)
    assert list(ev.iterdir()) == []  # every output and the emptied base/grids, base, ... folders removed


def test_a_comparison_is_not_taken_for_one_report(tmp_path):
    from cascadekit.metrics.compare_reports import read_report
    from cascadekit.metrics.errors import MetricInputError

    (tmp_path / "metrics.json").write_text(json.dumps({"mode": "compare", "reports": {"base": "base/index.html",
                                                                                      "finetuned": "finetuned/index.html"}}))
    with pytest.raises(MetricInputError, match="decoder comparison.*base .*finetuned"):
        read_report(tmp_path)


def test_labels_may_not_shadow_the_comparison_files(tmp_path):
    from cascadekit.metrics.compare import compare
    from cascadekit.metrics.errors import MetricInputError

    with pytest.raises(MetricInputError, match="names the comparison writes"):
        compare([], {"base": None, "metrics.json": None}, tmp_path / "c")
    assert not (tmp_path / "c").exists()
