"""Codec behaviours a user meets with real checkpoints: official decode defaults, official file
naming (``stage_b_lite_bf16``), optional ``num_batches_tracked``, and clear errors for corrupt,
truncated or wrong files and for an offline hub id — all through ``Codec.from_pretrained``."""
from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from _tiny_weights import tiny_weights_dir
from safetensors.torch import load_file, save_file

from cascadekit.codec.codec import DECODE_DEFAULTS, DECODE_SETTINGS, Codec
from cascadekit.codec.diffusion.samplers import sample
from cascadekit.codec.diffusion.settings import SamplingSettings
from cascadekit.codec.errors import InputError, WeightsError

RES = 32


def _folder(tmp_path, tmp_path_factory, skip=()):
    """A private folder of symlinks to the shared tiny set (minus ``skip``), with no cached empty caption."""
    src = tiny_weights_dir(tmp_path_factory)
    dst = tmp_path / "w"
    dst.mkdir()
    for f in src.iterdir():
        if f.name not in ("empty_caption.safetensors", *skip):
            (dst / f.name).symlink_to(f)
    return dst


def _load(folder, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Codec.from_pretrained(folder, encoder_resolution=RES, previewer=False, allow_zero_text=True, **kw)


def test_decode_defaults_are_the_official_notebook_settings(tmp_path, tmp_path_factory):
    """decode() with no settings == DDPM, 10 steps, cfg 1.1, cfg_rho 0.7, shift 1; result = last step's x0."""
    params = inspect.signature(Codec.decode).parameters
    assert {k: params[k].default for k in ("steps", "guidance", "cfg_rho", "shift", "sampler")} == DECODE_DEFAULTS
    assert DECODE_DEFAULTS == {"steps": 10, "guidance": 1.1, "cfg_rho": 0.7, "shift": 1.0, "sampler": "ddpm"}

    codec = _load(_folder(tmp_path, tmp_path_factory))
    z = torch.randn(2, 16, 1, 1, generator=torch.Generator().manual_seed(0))
    lh, lw = codec.stage_b_latent_size((64, 64))
    g = torch.Generator().manual_seed(1)
    x_init = torch.randn(2, 4, lh, lw, generator=g)
    noise = [torch.randn(2, 4, lh, lw, generator=g) for _ in range(10)]
    ours = codec.decode(z, x_init=x_init, noise=noise, size=(4 * lh, 4 * lw))
    clip = codec.empty_clip.expand(2, -1, -1)  # computed once with the tiny set's text_encoder/
    assert clip.abs().max() > 0
    with torch.no_grad():
        steps = list(sample(codec.stage_b, x_init, steps=10, cfg=1.1, cfg_rho=0.7, shift=1.0, sampler="ddpm",
                            model_inputs={"effnet": z, "clip": clip},
                            unconditional_inputs={"effnet": torch.zeros_like(z), "clip": clip}, noise=noise))
        ref = codec.stage_a.decode(steps[-1].x0).clamp(0, 1)
        not_last = codec.stage_a.decode(steps[-2].x0).clamp(0, 1)
    assert len(steps) == 10
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert (ours - not_last).abs().max() > 1e-4
    # other settings really change the result (the defaults above are not ignored)
    other = codec.decode(z, x_init=x_init, noise=noise, size=(4 * lh, 4 * lw), guidance=3.0)
    assert (ours - other).abs().max() > 1e-4


def test_decode_takes_grouped_settings_equal_to_the_keywords(tmp_path, tmp_path_factory):
    """decode(settings=...) gives what the same keywords give; both forms at once is refused before any work."""
    assert {"steps": DECODE_SETTINGS.steps, "guidance": DECODE_SETTINGS.cfg, "cfg_rho": DECODE_SETTINGS.cfg_rho,
            "shift": DECODE_SETTINGS.shift, "sampler": DECODE_SETTINGS.sampler} == DECODE_DEFAULTS
    codec = _load(_folder(tmp_path, tmp_path_factory))
    z = torch.randn(2, 16, 1, 1, generator=torch.Generator().manual_seed(0))
    ref = codec.decode(z, seed=5, size=(64, 64))
    assert torch.equal(codec.decode(z, seed=5, size=(64, 64), settings=DECODE_SETTINGS), ref)
    kw = codec.decode(z, seed=5, size=(64, 64), steps=3, guidance=2.0, sampler="ddim", cfg_rho=0.2)
    grouped = codec.decode(z, seed=5, size=(64, 64),
                           settings=DECODE_SETTINGS.replace(steps=3, cfg=2.0, sampler="ddim", cfg_rho=0.2))
    assert torch.equal(kw, grouped) and (kw - ref).abs().max() > 1e-4
    # what only the grouped form reaches: guidance switched off below t = 0.5 changes the result
    window = codec.decode(z, seed=5, size=(64, 64), settings=DECODE_SETTINGS.replace(cfg=3.0, cfg_t_stop=0.5))
    full = codec.decode(z, seed=5, size=(64, 64), guidance=3.0)
    assert (window - full).abs().max() > 1e-5
    with pytest.raises(InputError, match="not both"):
        codec.decode(z, steps=4, settings=SamplingSettings(steps=4))
    with pytest.raises(InputError, match="SamplingSettings"):
        codec.decode(z, settings={"steps": 4})


def test_official_bf16_file_name_loads_and_converts(tmp_path, tmp_path_factory):
    """Only ``stage_b_lite_bf16.safetensors`` present (the file the official configs use): found, read, cast."""
    d = _folder(tmp_path, tmp_path_factory, skip=("stage_b_lite.safetensors",))
    src = load_file(str(tiny_weights_dir(tmp_path_factory) / "stage_b_lite.safetensors"))
    save_file({k: (v.bfloat16() if v.is_floating_point() else v) for k, v in src.items()},
              str(d / "stage_b_lite_bf16.safetensors"))
    codec = _load(d)
    assert codec.files["stage_b"].name == "stage_b_lite_bf16.safetensors"
    w = codec.stage_b.clip_mapper.weight
    assert w.dtype == torch.float32  # fp32 requested: converted while reading
    assert torch.equal(w, src["clip_mapper.weight"].bfloat16().float())
    bf = _load(d, dtype="bf16")
    assert bf.stage_b.clip_mapper.weight.dtype == torch.bfloat16


def test_num_batches_tracked_is_optional(tmp_path, tmp_path_factory):
    """Files without BatchNorm's ``num_batches_tracked`` counters (some converters drop them) still load."""
    d = _folder(tmp_path, tmp_path_factory, skip=("effnet_encoder.safetensors", "stage_a.safetensors"))
    tiny = tiny_weights_dir(tmp_path_factory)
    dropped = {}
    for name in ("effnet_encoder.safetensors", "stage_a.safetensors"):
        sd = load_file(str(tiny / name))
        keep = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
        dropped[name] = len(sd) - len(keep)
        save_file(keep, str(d / name))
    assert dropped["effnet_encoder.safetensors"] > 0
    codec = _load(d)
    counters = [b for n, b in codec.effnet.named_buffers() if n.endswith("num_batches_tracked")]
    assert counters and all(b.dtype == torch.long and int(b) == 0 for b in counters)
    (tmp_path / "ref").mkdir()
    ref = _load(_folder(tmp_path / "ref", tmp_path_factory))
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(codec.encode(x), ref.encode(x), atol=0, rtol=0)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_stage_b_file_is_a_clear_error(tmp_path, tmp_path_factory, damage):
    d = _folder(tmp_path, tmp_path_factory, skip=("stage_b_lite.safetensors",))
    data = (tiny_weights_dir(tmp_path_factory) / "stage_b_lite.safetensors").read_bytes()
    bad = {"truncated": data[: len(data) // 2], "garbage": b"\x10\x00\x00\x00\x00\x00\x00\x00{not json!!!!!!!" + data[:64],
           "empty": b""}[damage]
    (d / "stage_b_lite.safetensors").write_bytes(bad)
    with pytest.raises(WeightsError) as e:
        _load(d)
    text = str(e.value)
    assert "stage_b_lite.safetensors" in text
    assert {"truncated": "truncated", "garbage": "header", "empty": "empty"}[damage] in text.lower()


def test_file_of_another_model_is_a_clear_error(tmp_path, tmp_path_factory):
    """A Stage C file under Stage B's name: one WeightsError naming both, not a shape crash later."""
    d = _folder(tmp_path, tmp_path_factory, skip=("stage_b_lite.safetensors",))
    (d / "stage_b_lite.safetensors").symlink_to(tiny_weights_dir(tmp_path_factory) / "stage_c_lite.safetensors")
    with pytest.raises(WeightsError, match=r"(?s)stage_b.*stage_c|stage_c.*stage_b"):
        _load(d)


def test_hub_id_offline_through_codec(tmp_path, monkeypatch):
    """Offline and not cached: one error naming the files expected and where they were looked for."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))  # what snapshot_download reads
    with pytest.raises(WeightsError) as e:
        Codec.from_pretrained("stabilityai/stable-cascade", stage_b="big")
    text = str(e.value)
    for expected in ("stage_a.safetensors", "effnet_encoder.safetensors", "stage_b.safetensors",
                     "stage_b_bf16.safetensors", "decoder/", "hub:stabilityai/stable-cascade", "offline",
                     str(tmp_path / "hf" / "hub")):
        assert expected in text, expected


def test_sampler_seed_is_the_cpu_generator_shorthand():
    """``sample(seed=s)`` == ``sample(generator=torch.Generator('cpu').manual_seed(s))``, x_init included."""
    from cascadekit.codec.errors import InputError
    from cascadekit.codec.diffusion.samplers import sample_final

    def model(x, r, cond):
        return 0.5 * x + cond.view(-1, 1, 1, 1) * r.view(-1, 1, 1, 1)

    kw = dict(shape=(2, 3, 4, 4), steps=3, cfg=None, model_inputs={"cond": torch.tensor([0.5, -0.5])})
    a = sample_final(model, None, seed=5, **kw)
    b = sample_final(model, None, generator=torch.Generator().manual_seed(5), **kw)
    c = sample_final(model, None, seed=6, **kw)
    assert torch.equal(a.x0, b.x0) and not torch.equal(a.x0, c.x0)
    with pytest.raises(InputError, match="seed or generator"):
        sample_final(model, None, seed=5, generator=torch.Generator(), **kw)


def test_public_names_of_the_codec_package():
    """The names the issue promises are importable from cascadekit.codec."""
    import cascadekit.codec as codec_pkg
    from cascadekit.codec.weights.load import load_weights as lw

    for name in ("StageA", "EfficientNetEncoder", "Previewer", "StageB", "Codec", "load_weights", "WeightsError"):
        assert hasattr(codec_pkg, name), name
    assert codec_pkg.load_weights is lw


def test_effnet_encoder_is_built_without_any_download(monkeypatch):
    """Building the EfficientNetV2-S backbone never fetches torchvision's pretrained weights."""
    import torch.hub

    from cascadekit.codec.models import EfficientNetEncoder

    def no_download(*a, **k):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with torch.device("meta"):
        eff = EfficientNetEncoder()
    assert not eff.mapper[1].affine and eff.mapper[0].out_channels == 16


def test_unknown_stage_b_variant_is_an_input_error(tmp_path):
    from cascadekit.codec.errors import InputError

    with pytest.raises(InputError, match="'lite' or 'big'"):
        Codec.from_pretrained(tmp_path, stage_b="medium")


def test_tiny_weights_one_writer_at_a_time_and_incomplete_sets_rewritten(tmp_path, tmp_path_factory, monkeypatch):
    """tiny_weights(): a set without its sidecar (a killed writer) is cleared and rewritten; while another
    process holds the folder's lock the call waits, then uses what that writer left; a current set is reused."""
    import threading

    from cascadekit.codec import defaults
    from cascadekit.codec.fsio import AdvisoryLock
    from cascadekit.codec.weights import tiny

    src = tiny_weights_dir(tmp_path_factory)
    calls = []

    def fake_write(folder):  # the shared session set, linked in (writing a real one takes seconds)
        calls.append(folder)
        for f in src.iterdir():
            if f.name != ".lock":
                (folder / f.name).symlink_to(f)
        return folder

    monkeypatch.setattr(tiny, "write_tiny_weights", fake_write)
    target = tmp_path / "tiny"
    target.mkdir()
    (target / "stage_b_lite.safetensors").write_bytes(b"half written")  # no cascadekit.json: incomplete
    lock = AdvisoryLock(target, "tiny weight set").acquire()
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("path", defaults.tiny_weights(target)))
    t.start()
    t.join(0.6)
    assert t.is_alive() and calls == []  # waits for the holder
    lock.release()
    t.join(30)
    assert result["path"] == target and calls == [target]
    assert (target / "stage_b_lite.safetensors").resolve() == (src / "stage_b_lite.safetensors").resolve()
    assert defaults.tiny_weights(target) == target and len(calls) == 1  # current: reused, not rewritten
