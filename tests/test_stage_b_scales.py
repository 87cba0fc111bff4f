"""Stage B's EfficientNet condition: `encode/add-controls --effnet-scales` (stored scales) and `--on-the-fly-effnet`."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from cascadekit.cli.main import main as cli
from cascadekit.codec.errors import InputError
from stage_b_helpers import C_CLIP_TINY, SMALL_B, photo_folder, small_codec

EMPTY = torch.zeros(1, 1, C_CLIP_TINY)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from _tiny_weights import tiny_weights_dir

    return tiny_weights_dir(tmp_path_factory)


def _cli(args, code=0):
    r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == code, r.output
    return r.output


def _encode_args(imgs, store, weights, *extra):
    return ["encode", imgs, "--out", store, "--weights", weights, "--resolution", 128, "--encoder-resolution", 128,
            "--stage-a", "--dtype", "float32", "--num-workers", 0, "--quiet", "--no-preview", "--batch-size", 4,
            "--chunk-rows", 4, *extra]


def _effnet_by_hand(effnet, pixels: np.ndarray, factor: float) -> torch.Tensor:
    """The official rule written out: nearest resize to int(side * f // 32 * 32), ImageNet normalisation."""
    from cascadekit.codec.images import imagenet_normalize

    x = torch.from_numpy(pixels).float().div(255)[None]
    side = int(x.shape[-1] * factor // 32 * 32)
    with torch.no_grad():
        return effnet(imagenet_normalize(F.interpolate(x, size=(side, side), mode="nearest")))[0]


def _codec(weights):
    from cascadekit.codec.codec import Codec

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Codec.from_pretrained(weights, device="cpu", dtype="fp32", components=("effnet",))


def test_encode_effnet_scales_then_train_stage_b_from_them(weights, tmp_path):
    from cascadekit.datasets.access import LatentStore

    imgs = photo_folder(tmp_path / "imgs", n=4, side=128)
    store = tmp_path / "s.zarr"
    _cli(_encode_args(imgs, store, weights, "--effnet-scales", "1.0,0.5,0.75", "--controls", "inpaint"))
    gv = LatentStore(store).groups[0]
    assert gv.shape("effnet_scales") == (3, 16, 4, 4)
    assert gv.g.attrs["effnet_scales"] == [0.5, 0.75, 1.0]
    assert gv.g.attrs["effnet_scale_sizes"] == [[2, 2], [3, 3], [4, 4]]
    assert (gv.status(name="effnet_scales_status") == 1).all()
    scales = gv.cache("effnet_scales").rows(np.arange(4))
    pixels = gv.cache("control_inpaint").rows(np.arange(4))  # the exact crops the encoder saw
    effnet = _codec(weights).effnet
    for row, slot, f in ((1, 1, 0.75), (3, 0, 0.5)):
        want = _effnet_by_hand(effnet, pixels[row], f)
        h, w = want.shape[-2:]
        assert torch.allclose(torch.from_numpy(scales[row, slot, :, :h, :w]), want, atol=1e-5)
        assert not scales[row, slot, :, h:, :].any() and not scales[row, slot, :, :, w:].any()  # zero padding
    assert torch.allclose(torch.from_numpy(scales[:, 2]), torch.from_numpy(gv.cache("latents").rows(np.arange(4))),
                          atol=1e-5)  # f = 1 at encoder resolution = crop: the latents themselves
    out = _cli(["inspect", store])
    assert "control  effnet_scales [3, 16, 4, 4] float32, ok 4, pending 0" in out
    assert "B/sample on disk, factors [0.5, 0.75, 1.0]" in out
    # a rerun resumes (nothing to do); other factors are refused with the add-controls hint
    assert "4 rows were already done" in _cli(_encode_args(imgs, store, weights, "--effnet-scales", "0.5,0.75,1",
                                                         "--controls", "inpaint"))
    for f in ("status/c/0", "effnet_scales/c/0/0/0/0/0"):  # a chunk killed before its status: encoded again
        (store / f).unlink()
    assert "encoded          4" in _cli(_encode_args(imgs, store, weights, "--effnet-scales", "0.5,0.75,1",
                                                     "--controls", "inpaint"))
    assert np.array_equal(LatentStore(store).groups[0].cache("effnet_scales").rows(np.arange(4)), scales)
    out = _cli(_encode_args(imgs, store, weights, "--effnet-scales", "0.5,1", "--controls", "inpaint"), code=2)
    assert "effnet_scales" in out and "--effnet-scales" in out

    out = _cli(["train", "--data", store, "--config", "finetune_b_tiny", "--out", tmp_path / "run", "--init", weights,
                "--device", "cpu", "--set", "steps=2", "--set", "save_every=2", "--set", "batch_size=4"])
    assert "stored scales [0.5, 0.75, 1.0]" in out
    run = json.loads((tmp_path / "run/run.json").read_text())
    assert run["effnet_scale_slots"] == {"root": [0, 1, 2]}
    assert (tmp_path / "run/checkpoints/step_000002/stage_b_lite.safetensors").is_file()
    out = _cli(["train", "--data", store, "--config", "finetune_b_tiny", "--out", tmp_path / "fly", "--init", weights,
                "--device", "cpu", "--set", "steps=1", "--set", "save_every=1", "--set", "batch_size=4",
                "--on-the-fly-effnet"])
    assert "recomputed on the fly from the stored crop pixels (control_inpaint)" in out


def test_add_controls_effnet_scales_equal_encode(weights, tmp_path):
    from cascadekit.datasets.access import LatentStore

    imgs = photo_folder(tmp_path / "imgs", n=4, side=128)
    _cli(_encode_args(imgs, tmp_path / "a.zarr", weights, "--effnet-scales", "0.5,1"))
    _cli(_encode_args(imgs, tmp_path / "b.zarr", weights))
    out = _cli(["add-controls", tmp_path / "b.zarr", "--effnet-scales", "0.5,1", "--weights", weights,
                "--device", "cpu", "--quiet"])
    assert "added effnet_scales to 4 rows" in out
    a, b = (LatentStore(tmp_path / f"{n}.zarr").groups[0] for n in "ab")
    assert np.array_equal(a.cache("effnet_scales").rows(np.arange(4)), b.cache("effnet_scales").rows(np.arange(4)))
    assert a.g.attrs["effnet_scale_sizes"] == b.g.attrs["effnet_scale_sizes"] == [[2, 2], [4, 4]]
    assert "added effnet_scales to 0 rows" in _cli(["add-controls", tmp_path / "b.zarr", "--effnet-scales", "0.5,1",
                                                    "--weights", weights, "--device", "cpu", "--quiet"])
    (tmp_path / "b.zarr/effnet_scales/c/0/0/0/0/0").unlink()  # a lost chunk behind ok rows: a rerun repairs it
    assert "added effnet_scales to 4 rows" in _cli(["add-controls", tmp_path / "b.zarr", "--effnet-scales", "0.5,1",
                                                    "--weights", weights, "--device", "cpu", "--quiet"])
    b = LatentStore(tmp_path / "b.zarr").groups[0]
    assert np.array_equal(a.cache("effnet_scales").rows(np.arange(4)), b.cache("effnet_scales").rows(np.arange(4)))
    _cli(["add-controls", tmp_path / "b.zarr", "--effnet-scales", "0.75", "--weights", weights, "--device", "cpu",
          "--quiet"])  # other factors replace the array
    b = LatentStore(tmp_path / "b.zarr").groups[0]
    assert b.shape("effnet_scales") == (1, 16, 3, 3) and b.g.attrs["effnet_scales"] == [0.75]


def test_bad_scales_fail_before_any_work(weights, tmp_path):
    imgs = photo_folder(tmp_path / "imgs", n=2, side=128)
    for bad, why in (("0", "not a downscale factor"), ("1.5", "not a downscale factor"), ("0.5,x", "'x'"),
                     ("0.5,0.50", "more than once"), ("nan", "not a downscale factor")):
        out = _cli(_encode_args(imgs, tmp_path / "s.zarr", weights, "--effnet-scales", bad), code=2)
        assert "--effnet-scales" in out and why in out, out
    out = _cli(_encode_args(imgs, tmp_path / "s.zarr", weights, "--effnet-scales", "0.2"), code=2)
    assert "below 32 px" in out
    assert not (tmp_path / "s.zarr").exists()
    assert "give --controls" in _cli(["add-controls", imgs], code=2)


def _pixel_store(path, weights, n=4, inpaint=True):
    """96 px crops (f ~ U(0.5, 1) gives 32 or 64 px effnet inputs), Stage A latents 24x24, crop pixels stored."""
    from cascadekit.datasets.builder import build_latent_dataset

    imgs = photo_folder(path.parent / f"{path.stem}_imgs", n=n, side=96)
    codec = small_codec(weights)
    build_latent_dataset([str(imgs)], path, codec, resolution=96, dtype="float32", spaces=("semantic", "stage_a"),
                         batch_size=4, num_workers=0, progress=False, chunk_rows=4,
                         controls=("inpaint",) if inpaint else ())
    return path, codec


def _fly_cfg(**kw):
    from cascadekit.generator.tasks.stage_b_config import StageBTrainConfig

    return StageBTrainConfig.from_dict({"preset": "tiny", "batch_size": 4, "steps": 4, "save_every": 2,
                                        "log_every": 1, "on_the_fly_effnet": True, "effnet_dropout": 0.25, **kw})


def test_on_the_fly_effnet_is_the_official_rule_and_resumes_exactly(weights, tmp_path):
    from cascadekit.generator.stage_b_data import StageBData
    from cascadekit.generator.tasks.stage_b import StageBTask
    from cascadekit.generator.train_stage_b import train_stage_b

    store, codec = _pixel_store(tmp_path / "s.zarr", weights)
    said = []
    task = StageBTask(_fly_cfg(), empty_pooled=EMPTY, model_overrides=SMALL_B, image_encoder=codec, log=said.append)
    data = StageBData(store, pixels=True)
    assert task.check(data) == [] and any("recomputed on the fly" in m for m in said)
    group = data.groups[0]
    draws = task.draws(torch.Generator().manual_seed(3), 4, group)
    f = draws["effnet_factor"]
    assert ((f >= 0.5) & (f < 1)).all() and len(set(f.tolist())) == 4
    assert {int(96 * v // 32 * 32) for v in f.tolist()} == {32, 64}  # both sizes of a 96 px crop in one batch
    batch = data.read(group.name, [0, 1, 2, 3])
    _, cond = task.inputs(batch, draws, torch.device("cpu"))
    assert cond["effnet"].shape == (4, 16, 12, 12)  # Stage B's patch grid (24 / patch 2)
    for i in range(4):
        if draws["drop_effnet"][i]:
            assert not cond["effnet"][i].any()
            continue
        lat = _effnet_by_hand(codec.effnet, batch["control_inpaint"][i].numpy(), float(f[i]))
        want = F.interpolate(lat[None], size=(12, 12), mode="bilinear", align_corners=True)[0]
        assert torch.allclose(cond["effnet"][i], want, atol=1e-5)

    def train(out, **kw):
        return train_stage_b(store, _fly_cfg(ema_decay=0.9), out, empty_pooled=EMPTY, model_overrides=SMALL_B,
                             image_encoder=codec, log=lambda m: None, **kw)

    train(tmp_path / "a")
    train(tmp_path / "b", stop_after=2)
    train(tmp_path / "b", resume=True)
    for name in ("stage_b_lite.safetensors", "ema.safetensors"):
        a = (tmp_path / "a/checkpoints/step_000004" / name).read_bytes()
        assert a == (tmp_path / "b/checkpoints/step_000004" / name).read_bytes(), name
    run = json.loads((tmp_path / "a/run.json").read_text())
    assert "on the fly" in run["effnet_source"]


def test_on_the_fly_effnet_needs_pixels_and_an_encoder(weights, tmp_path):
    from cascadekit.generator.stage_b_data import StageBData
    from cascadekit.generator.train_stage_b import train_stage_b

    store, codec = _pixel_store(tmp_path / "s.zarr", weights, inpaint=False)
    with pytest.raises(InputError, match=r"lacks \(field control_inpaint.*add-controls STORE --controls inpaint"):
        train_stage_b(store, _fly_cfg(), tmp_path / "r1", empty_pooled=EMPTY, model_overrides=SMALL_B,
                      image_encoder=codec, log=lambda m: None)
    with_px, _ = _pixel_store(tmp_path / "p.zarr", weights)
    with pytest.raises(InputError, match="needs the EfficientNet encoder: pass --image-encoder"):
        train_stage_b(with_px, _fly_cfg(), tmp_path / "r2", empty_pooled=EMPTY, model_overrides=SMALL_B,
                      log=lambda m: None)
    with pytest.raises(InputError, match="opened without them"):
        train_stage_b(StageBData(with_px), _fly_cfg(), tmp_path / "r3", empty_pooled=EMPTY, model_overrides=SMALL_B,
                      image_encoder=codec, log=lambda m: None)
    for r in ("r1", "r2", "r3"):
        assert not (tmp_path / r / "checkpoints").exists()
    with pytest.raises(InputError, match="set one of them"):
        _fly_cfg(effnet_scales=[0.5])
    out = _cli(["train", "--data", store, "--config", "tiny", "--out", tmp_path / "c", "--on-the-fly-effnet"], code=2)
    assert "--on-the-fly-effnet is a Stage B option" in out
