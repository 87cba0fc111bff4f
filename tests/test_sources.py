"""resolve_source: official folders, diffusers snapshots, hub ids offline, the tiny weight set."""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from _tiny_weights import tiny_weights_dir
from cascadekit.codec.errors import WeightsError
from cascadekit.codec.weights import build, load_weights, resolve_source, write_tiny_weights
from cascadekit.codec.weights.sources import unet_kwargs_from_diffusers, vqgan_kwargs_from_diffusers
from conftest import load_manifest


def fake_official(path: Path, key: str | None = None, shape=(1,)) -> Path:
    """A small valid safetensors file; ``key``/``shape`` carry the shape that tells lite from big."""
    tensors = {"marker": torch.zeros(1)}
    if key:
        tensors[key] = torch.zeros(shape, dtype=torch.uint8)
    save_file(tensors, str(path))
    return path


B_KEY, C_KEY = "down_downscalers.1.1.weight", "clip_txt_mapper.weight"


@pytest.fixture
def official_dir(tmp_path) -> Path:
    d = tmp_path / "official"
    d.mkdir()
    fake_official(d / "stage_a.safetensors")
    fake_official(d / "effnet_encoder.safetensors")
    fake_official(d / "previewer.safetensors")
    fake_official(d / "stage_b_lite_bf16.safetensors", B_KEY, (576, 320, 2, 2))
    fake_official(d / "stage_b.safetensors", B_KEY, (640, 320, 2, 2))
    fake_official(d / "stage_b_bf16.safetensors", B_KEY, (640, 320, 2, 2))
    fake_official(d / "stage_c_lite.safetensors", C_KEY, (1536, 1280))
    return d


def test_official_folder_lite_and_big(official_dir):
    ws = resolve_source(official_dir, stage_b="lite")
    assert ws.stage_b.name == "stage_b_lite_bf16.safetensors"  # the only lite file
    assert ws.stage_a.name == "stage_a.safetensors" and ws.effnet.name == "effnet_encoder.safetensors"
    assert ws.previewer.name == "previewer.safetensors"  # optional, found anyway
    assert ws.stage_c is None and ws.stage_c_variant is None
    assert ws.presets == {"stage_a": "official", "effnet": "official", "previewer": "official", "stage_b": "lite"}
    assert ws.scale_factor == 0.43 and ws.scale_in_model and ws.outside_scale == 1.0
    assert not ws.tiny and ws.weights_dir == official_dir.resolve()

    big = resolve_source(str(official_dir), stage_b="big", stage_c="lite", need=("stage_b", "stage_c"))
    assert big.stage_b.name == "stage_b.safetensors"  # float32 preferred over _bf16
    assert big.presets["stage_b"] == "big" and big.presets["stage_c"] == "lite"
    assert big.stage_c.name == "stage_c_lite.safetensors"


def test_name_and_shapes_disagree(official_dir):
    fake_official(official_dir / "stage_b_lite.safetensors", B_KEY, (640, 320, 2, 2))
    with pytest.raises(WeightsError, match="file name says lite but its shapes are those of the big"):
        resolve_source(official_dir, stage_b="lite")


def test_preset_from_shapes_is_the_one_lite_big_rule():
    """The file-header check lives in models/presets.py: known sizes, a missing key, an unknown size."""
    from cascadekit.codec.models.presets import FILE_SIGNATURES, preset_from_shapes

    key, table = FILE_SIGNATURES["stage_c"]
    for dim0, name in table.items():
        assert preset_from_shapes({key: [dim0, 1280]}, "stage_c", name, "f", "hint") == name
    assert preset_from_shapes({}, "effnet", None, "f", "hint") == "official"
    with pytest.raises(WeightsError, match="has no 'clip_txt_mapper.weight'"):
        preset_from_shapes({"other": [1]}, "stage_c", "lite", "f", "hint")
    with pytest.raises(WeightsError, match="neither the lite nor the big stage_c; hint"):
        preset_from_shapes({key: [7, 1280]}, "stage_c", "lite", "f", "hint")


def test_missing_files_one_error(tmp_path, official_dir):
    other = tmp_path / "empty"
    other.mkdir()
    with pytest.raises(WeightsError) as e:
        resolve_source([other, tmp_path / "nowhere"], stage_b="big", need=("stage_a", "effnet", "stage_b", "text_encoder"))
    text = str(e.value)
    for expected in ("stage_a.safetensors", "vqgan/", "effnet_encoder.safetensors", "stage_b.safetensors",
                     "stage_b_bf16.safetensors", "decoder/", "text_encoder/", str(other), "nowhere (does not exist)"):
        assert expected in text, expected
    assert text.count("cannot find") == 1
    # only what is missing is listed
    with pytest.raises(WeightsError) as e:
        resolve_source(official_dir, stage_c="big", need=("stage_a", "stage_c"))
    assert "stage_c (big)" in str(e.value) and "stage_a (" not in str(e.value) and "prior/" in str(e.value)


def _diffusers_model(folder: Path, config: dict, tensors: dict | None = None) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(tensors or {"x": torch.zeros(1)}, str(folder / "diffusion_pytorch_model.safetensors"))


def test_diffusers_snapshots_decoder_and_prior(tmp_path):
    decoder_repo, prior_repo = tmp_path / "stable-cascade", tmp_path / "stable-cascade-prior"
    dec_cfg = {"_class_name": "StableCascadeUNet", **load_manifest("diffusers_decoder_lite")["config"]}
    _diffusers_model(decoder_repo / "decoder_lite", dec_cfg)
    _diffusers_model(decoder_repo / "vqgan", {"_class_name": "PaellaVQModel", **load_manifest("diffusers_vqgan")["config"],
                                              "scale_factor": 0.5})
    (decoder_repo / "text_encoder").mkdir()
    (decoder_repo / "text_encoder" / "config.json").write_text("{}")
    (decoder_repo / "tokenizer").mkdir()
    (decoder_repo / "tokenizer" / "vocab.json").write_text("{}")
    prior_cfg = {"_class_name": "StableCascadeUNet", **load_manifest("diffusers_prior")["config"]}
    _diffusers_model(prior_repo / "prior", prior_cfg)
    (prior_repo / "image_encoder").mkdir()
    (prior_repo / "image_encoder" / "config.json").write_text("{}")
    (prior_repo / "feature_extractor").mkdir()
    (prior_repo / "feature_extractor" / "preprocessor_config.json").write_text("{}")
    fake_official(tmp_path / "effnet_encoder.safetensors")

    ws = resolve_source([prior_repo, decoder_repo, tmp_path], stage_b="lite", stage_c="big",
                        need=("stage_a", "effnet", "stage_b", "stage_c", "text_encoder", "tokenizer", "image_encoder"))
    assert ws.stage_b == (decoder_repo / "decoder_lite").resolve() and ws.formats["stage_b"] == "diffusers"
    assert ws.stage_c == (prior_repo / "prior").resolve()
    assert ws.effnet.name == "effnet_encoder.safetensors" and ws.formats["effnet"] == "official"
    assert ws.image_processor == (prior_repo / "feature_extractor").resolve()
    # vqgan scale factor from its config, applied outside the model
    assert ws.scale_factor == 0.5 and not ws.scale_in_model and ws.outside_scale == 0.5
    assert ws.stage_a_kwargs()["scale_factor"] == 1.0 and ws.stage_a_kwargs()["c_hidden"] == 384
    # diffusers configs translate to the official constructor kwargs
    assert ws.model_kwargs["stage_b"] == load_manifest("stage_b_lite")["constructor_kwargs"]
    assert ws.model_kwargs["stage_c"] == load_manifest("stage_c")["constructor_kwargs"]

    # no scale_factor in the vqgan config -> diffusers default 0.3764
    cfg = json.loads((decoder_repo / "vqgan" / "config.json").read_text())
    del cfg["scale_factor"]
    (decoder_repo / "vqgan" / "config.json").write_text(json.dumps(cfg))
    assert resolve_source(decoder_repo, need=("stage_a",)).scale_factor == pytest.approx(0.3764)
    # a lite request does not silently take the big folder
    with pytest.raises(WeightsError, match="prior_lite/"):
        resolve_source(prior_repo, stage_c="lite", need=("stage_c",))
    # a single diffusers model folder is accepted as that component
    assert resolve_source(prior_repo / "prior", stage_c="big", need=("stage_c",)).stage_c == (prior_repo / "prior").resolve()


@pytest.mark.parametrize("name", ["diffusers_decoder", "diffusers_decoder_lite", "diffusers_prior", "diffusers_prior_lite"])
def test_unet_config_translation_matches_official_kwargs(name):
    m = load_manifest(name)
    kind = "stage_b" if "decoder" in name else "stage_c"
    assert unet_kwargs_from_diffusers(m["config"], kind) == load_manifest(m["official_counterpart"][:-5])["constructor_kwargs"]


def test_vqgan_config_translation():
    kw = vqgan_kwargs_from_diffusers(load_manifest("diffusers_vqgan")["config"])
    official = load_manifest("stage_a")["constructor_kwargs"]
    assert {k: v for k, v in kw.items() if k != "scale_factor"} == {k: v for k, v in official.items() if k != "scale_factor"}
    assert kw["scale_factor"] == pytest.approx(0.3764)


def test_hub_id_offline_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(WeightsError) as e:
        resolve_source("stabilityai/stable-cascade", need=("stage_a", "effnet", "stage_b"))
    text = str(e.value)
    assert "hub:stabilityai/stable-cascade" in text and "offline" in text
    assert "effnet_encoder.safetensors" in text and "stage_b_lite.safetensors" in text


def test_tiny_set_resolves_with_kwargs_and_warning(tmp_path_factory):
    d = tiny_weights_dir(tmp_path_factory)
    with pytest.warns(UserWarning, match="TINY RANDOM WEIGHTS"):
        ws = resolve_source(d, stage_c="lite", need=("stage_a", "effnet", "previewer", "stage_b", "stage_c",
                                                      "text_encoder", "tokenizer", "image_encoder"))
    assert ws.tiny and "random" in ws.warning.lower()
    assert ws.model_kwargs["stage_b"]["c_clip"] == 32 and ws.model_kwargs["stage_c"]["c_clip_img"] == 24
    assert ws.presets == {}
    # every file builds into its model through the project loader (keys, shapes)
    from cascadekit.codec.models.stage_b import StageB, StageBConfig
    from cascadekit.codec.models.effnet import EfficientNetEncoder

    sb = build(lambda: StageB.from_config(StageBConfig(**ws.model_kwargs["stage_b"])), load_weights(ws.stage_b, kind="stage_b"))
    assert all(torch.isfinite(p).all() for p in sb.parameters())
    build(lambda: EfficientNetEncoder(**ws.model_kwargs["effnet"]), load_weights(ws.effnet, kind="effnet"))


CACHE_FILES = {"empty_caption.safetensors"}  # written beside the weights by later use, not by the writer


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in CACHE_FILES}


def test_tiny_writer_is_deterministic(tmp_path, tmp_path_factory):
    ref = tiny_weights_dir(tmp_path_factory)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = write_tiny_weights(tmp_path / "again", seed=0)
        other = write_tiny_weights(tmp_path / "other", seed=1, with_text=False, models=("stage_a", "stage_b", "stage_c"))
    a, b = _digest(ref), _digest(again)
    assert a == b
    assert {"stage_a.safetensors", "effnet_encoder.safetensors", "previewer.safetensors", "stage_b_lite.safetensors",
            "stage_c_lite.safetensors", "cascadekit.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
            "text_encoder/config.json", "image_encoder/preprocessor_config.json"} <= set(a)
    c = _digest(other)
    assert "text_encoder/config.json" not in c and "effnet_encoder.safetensors" not in c
    assert set(json.loads((other / "cascadekit.json").read_text())["models"]) == {"stage_a", "stage_b", "stage_c"}
    for f in ("stage_a.safetensors", "stage_b_lite.safetensors", "stage_c_lite.safetensors"):
        assert c[f] != a[f], f
    side = json.loads((ref / "cascadekit.json").read_text())
    assert side["tiny_random_weights"] is True and "RANDOM" in side["warning"]


def test_hub_download_patterns(tmp_path, monkeypatch):
    """The hub path with a fake snapshot_download: only the needed files are requested (bf16 official
    files first, diffusers subfolders only for what is still missing), and the result resolves."""
    import fnmatch
    import shutil

    import huggingface_hub

    remotes = {"org/cascade": tmp_path / "remote_dec", "org/cascade-prior": tmp_path / "remote_prior"}
    dec, prior = remotes.values()
    dec.mkdir()
    for name in ("stage_a.safetensors", "effnet_encoder.safetensors", "previewer.safetensors"):
        fake_official(dec / name)
    fake_official(dec / "stage_b_lite.safetensors", B_KEY, (576, 320, 2, 2))
    fake_official(dec / "stage_b_lite_bf16.safetensors", B_KEY, (576, 320, 2, 2))
    _diffusers_model(dec / "decoder_lite", {"_class_name": "StableCascadeUNet", **load_manifest("diffusers_decoder_lite")["config"]})
    prior_cfg = {"_class_name": "StableCascadeUNet", **load_manifest("diffusers_prior_lite")["config"]}
    (prior / "prior_lite").mkdir(parents=True)
    (prior / "prior_lite" / "config.json").write_text(json.dumps(prior_cfg))
    save_file({"x": torch.zeros(1)}, str(prior / "prior_lite" / "diffusion_pytorch_model.bf16.safetensors"))
    save_file({"x": torch.zeros(1)}, str(prior / "prior_lite" / "diffusion_pytorch_model.safetensors"))

    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, local_files_only=False, **kw):
        calls.append((repo_id, sorted(allow_patterns)))
        src, dst = remotes[repo_id], tmp_path / "cache" / repo_id.replace("/", "--")
        for f in src.rglob("*"):
            rel = str(f.relative_to(src))
            if f.is_file() and any(fnmatch.fnmatch(rel, p) for p in allow_patterns):
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, dst / rel)
        dst.mkdir(parents=True, exist_ok=True)
        return str(dst)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    ws = resolve_source(["org/cascade-prior", "org/cascade"], stage_b="lite", stage_c="lite",
                        need=("stage_a", "effnet", "stage_b", "stage_c"))
    got = {str(p.relative_to(tmp_path / "cache")) for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    assert "org--cascade/stage_b_lite_bf16.safetensors" in got
    assert "org--cascade/stage_b_lite.safetensors" not in got and not any("decoder_lite" in g for g in got)
    assert "org--cascade-prior/prior_lite/diffusion_pytorch_model.bf16.safetensors" in got
    assert "org--cascade-prior/prior_lite/diffusion_pytorch_model.safetensors" not in got
    assert ws.stage_b.name == "stage_b_lite_bf16.safetensors" and ws.formats["stage_c"] == "diffusers"
    assert ws.stage_c.name == "prior_lite" and ws.model_kwargs["stage_c"] == load_manifest("stage_c_lite")["constructor_kwargs"]
    # the prior repo was asked three times (official names, diffusers bf16, diffusers fp32), the decoder repo once
    assert [c[0] for c in calls] == ["org/cascade-prior"] * 3 + ["org/cascade"]
    assert calls[-1][1] == sorted(["stage_a.safetensors", "effnet_encoder.safetensors", "stage_b_lite_bf16.safetensors", "cascadekit.json"])


def test_hub_cache_repo_folder(tmp_path):
    repo = tmp_path / "models--org--cascade"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo / "snapshots" / "old").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    fake_official(snap / "stage_a.safetensors")
    ws = resolve_source(repo, need=("stage_a",))
    assert ws.stage_a == (snap / "stage_a.safetensors").resolve()
