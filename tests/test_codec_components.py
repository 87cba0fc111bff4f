"""Codec.from_pretrained(components=...): load only some models; missing ones fail clearly; inspect loads the previewer only."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
from _tiny_weights import mirror, tiny_weights_dir

sys.path.insert(0, str(Path(__file__).parent))
from datasets_helpers import make_folder  # noqa: E402

from cascadekit.codec.codec import Codec
from cascadekit.codec.errors import InputError, WeightsError

RES = 64


def _load(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Codec.from_pretrained(path, encoder_resolution=RES, **kw)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return mirror(tiny_weights_dir(tmp_path_factory), tmp_path_factory.mktemp("components_weights"))


@pytest.fixture(scope="module")
def full(weights):
    return _load(weights)


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))


def test_previewer_only(full, weights, images, tmp_path, tmp_path_factory):
    fresh = mirror(tiny_weights_dir(tmp_path_factory), tmp_path / "w")
    pv = _load(fresh, components=("previewer",))
    assert pv.stage_a is None and pv.effnet is None and pv.stage_b is None and pv.previewer is not None
    assert pv.components == ("previewer",) and pv.empty_clip is None
    assert not (fresh / "empty_caption.safetensors").exists()  # no text work without Stage B
    z = full.encode(images)
    assert torch.equal(pv.preview(z), full.preview(z))
    ident = pv.identity()
    assert list(ident["checkpoints"]) == ["previewer"]
    assert ident["checkpoints"]["previewer"] == full.identity()["checkpoints"]["previewer"]
    assert ident["stage_a_scale_factor"] is None
    with pytest.raises(InputError, match=r"no effnet.*components=\('effnet', 'previewer'\)"):
        pv.encode(images)
    with pytest.raises(InputError, match=r"no stage_b, stage_a.*components=\('stage_a', 'stage_b', 'previewer'\)"):
        pv.decode(z, steps=1, seed=0)
    with pytest.raises(InputError, match="no stage_a"):
        pv.encode_stage_a(images)
    with pytest.raises(InputError, match="no stage_a"):
        pv.decode_stage_a(torch.zeros(1, 4, 8, 8))
    with pytest.raises(InputError, match="no effnet, stage_b, stage_a"):
        pv.reconstruct(images)


def test_effnet_only_encodes_like_the_full_codec(full, weights, images):
    enc = _load(weights, components=["effnet"])
    assert enc.components == ("effnet",) and enc.stage_b is None and enc.previewer is None
    assert torch.equal(enc.encode(images), full.encode(images))
    assert enc.identity()["checkpoints"] == {"effnet": full.identity()["checkpoints"]["effnet"]}
    with pytest.raises(InputError, match="no previewer"):
        enc.preview(full.encode(images))
    with pytest.raises(InputError, match="no stage_b"):
        _ = enc.stage_b_unit


def test_stage_a_only_matches_full(full, weights, images):
    sa = _load(weights, components=("stage_a",))
    assert sa.components == ("stage_a",)
    x = images[:, :, :64, :64]
    lat = sa.encode_stage_a(x)
    assert torch.equal(lat, full.encode_stage_a(x))
    assert torch.equal(sa.decode_stage_a(lat), full.decode_stage_a(lat))
    assert sa.identity()["stage_a_scale_factor"] == pytest.approx(0.43)


def test_only_what_is_asked_for_must_exist(tmp_path, tmp_path_factory, images):
    src = tiny_weights_dir(tmp_path_factory)
    stage_b_files = [f.name for f in src.iterdir() if f.name.startswith("stage_b")]
    assert stage_b_files
    d = mirror(src, tmp_path / "no_b", skip=stage_b_files)
    with pytest.raises(WeightsError, match="stage_b"):
        _load(d)  # the default needs Stage B
    enc = _load(d, components=("effnet", "previewer"))
    assert enc.components == ("effnet", "previewer")
    assert enc.preview(enc.encode(images)).shape == (2, 3, 16, 24)  # 96x128 -> (2,3) latents -> 8x
    d2 = mirror(src, tmp_path / "no_pv", skip=("previewer.safetensors",))
    with pytest.raises(WeightsError, match="previewer"):
        _load(d2, components=("previewer",))  # listed: required


def test_bad_components(weights):
    with pytest.raises(InputError, match="subset"):
        _load(weights, components=("stage_c",))
    with pytest.raises(InputError, match="subset"):
        _load(weights, components=())
    with pytest.raises(InputError, match="previewer=False"):
        _load(weights, components=("previewer",), previewer=False)


@pytest.mark.filterwarnings("ignore:.*TINY RANDOM")
def test_inspect_cli_loads_only_the_previewer(weights, tmp_path, tmp_path_factory, monkeypatch):
    from click.testing import CliRunner

    from cascadekit.cli.main import main
    from cascadekit.codec.weights import components as C
    from cascadekit.datasets.builder import build_latent_dataset

    make_folder(tmp_path / "c")
    enc = _load(weights, components=("effnet",))
    out = tmp_path / "s.zarr"
    build_latent_dataset([tmp_path / "c"], out, enc, resolution=64, batch_size=4, chunk_rows=4, num_workers=0,
                         progress=False)
    loaded = []
    real = C.load_component

    def spy(ws, component, **kw):
        loaded.append(component)
        return real(ws, component, **kw)

    monkeypatch.setattr(C, "load_component", spy)
    r = CliRunner().invoke(main, ["inspect", str(out), "--weights", str(weights), "--n-preview", "4"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert loaded == ["previewer"]
    assert (out / "inspect" / "preview.png").is_file() and "preview    " in r.output

    no_pv = mirror(tiny_weights_dir(tmp_path_factory), tmp_path / "no_pv", skip=("previewer.safetensors",))
    r = CliRunner().invoke(main, ["inspect", str(out), "--weights", str(no_pv)], catch_exceptions=False)
    assert r.exit_code == 0, r.output  # the report still comes, with why there is no preview
    assert "no preview" in r.output and "previewer" in r.output and "ok" in r.output


def test_a_resolved_weight_set_is_used_as_is(full, weights, tmp_path, tmp_path_factory, images):
    """Codec.from_pretrained(WeightSet): the same codec as from the folder; a lacking required component fails."""
    from cascadekit.codec.weights.sources import resolve_source

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ws = resolve_source(weights, need=("stage_a", "effnet", "stage_b"))
    again = _load(ws)
    assert again.components == full.components and again.files == full.files
    z = full.encode(images)
    assert torch.equal(again.encode(images), z) and torch.equal(again.preview(z), full.preview(z))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        only_pv = resolve_source(weights, need=("previewer",))
    only_pv.stage_b = None  # as if the folder had no Stage B
    with pytest.raises(WeightsError, match="no stage_b weights"):
        _load(only_pv)
