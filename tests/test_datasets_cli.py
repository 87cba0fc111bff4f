"""`cascadekit encode / inspect / embed-text` end to end with the tiny random weights."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from datasets_helpers import make_broken, make_folder, store_arrays  # noqa: E402

from cascadekit.cli.main import main
from cascadekit.datasets import store as S


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from cascadekit.codec.weights.tiny import write_tiny_weights

    d = tmp_path_factory.mktemp("w") / "tiny"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_tiny_weights(d)
    return d


def _invoke(args):
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    return r


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*TINY RANDOM")
def test_encode_inspect_embed_text(tiny, tmp_path):
    make_folder(tmp_path / "c")
    make_broken(tmp_path / "c" / "broken")
    out = tmp_path / "s.zarr"
    spill = tmp_path / "spill"
    spill.mkdir()
    args = ["encode", str(tmp_path / "c"), "--out", str(out), "--weights", str(tiny), "--resolution", "64",
            "--batch-size", "4", "--chunk-rows", "4", "--num-workers", "0", "--min-size", "16", "--quiet",
            "--tmp-dir", str(spill)]
    r = _invoke(args)
    assert r.exit_code == 0, r.output
    assert list(spill.iterdir()) == []  # the plan's temporary files are anonymous
    assert "encoded          9" in r.output and "decompression_bomb" in r.output and "truncated" in r.output
    assert (out / "inspect" / "preview.png").is_file() and "preview" in r.output
    root = S.open_store(out)
    assert root.attrs["encoder"]["checkpoints"]["effnet"]["sha256"]
    assert root.attrs["encoder"]["tiny_random_weights"] is True
    a = store_arrays(out)
    assert a["/latents"].shape == (15, 16, 2, 2) and np.isfinite(a["/latents"]).all()

    r = _invoke(args + ["--resolution", "96"])  # changed settings -> refusal, exit 2
    assert r.exit_code == 2 and "different settings" in r.output

    r = _invoke(["inspect", str(out), "--weights", str(tiny), "--n-preview", "4"])
    assert r.exit_code == 0 and "skipped  empty" in r.output and "9 ok, 6 skipped" in r.output

    out2 = tmp_path / "b.zarr"  # the Stage B training layout: crop 128, effnet at 64, Stage A at 128
    r = _invoke(["encode", str(tmp_path / "c" / "part0"), "--out", str(out2), "--weights", str(tiny),
                 "--resolution", "128", "--encoder-resolution", "64", "--stage-a", "--num-workers", "0",
                 "--quiet", "--no-preview", "--text-embeddings"])
    assert r.exit_code == 0, r.output
    b = store_arrays(out2)
    assert b["/latents"].shape == (8, 16, 2, 2) and b["/stage_a"].shape == (8, 4, 32, 32)
    assert "8 captions embedded" in r.output and S.open_store(out2)["clip_text"].shape[:2] == (8, 77)
    assert S.open_store(out2).attrs["encoder"]["encoder_resolution"] == 64

    r = _invoke(["embed-text", str(out), "--weights", str(tiny), "--quiet"])
    assert r.exit_code == 0, r.output
    root = S.open_store(out)
    assert root["clip_text"].shape[:2] == (15, 77) and root["clip_text_pooled"].shape[:2] == (15, 1)
    assert float(np.abs(np.asarray(root["clip_text"][:])).sum()) > 0


@pytest.mark.filterwarnings("ignore:.*TINY RANDOM")
def test_unusable_weights_fail_before_any_work(tmp_path):
    make_folder(tmp_path / "c")
    out = tmp_path / "s.zarr"
    bad = tmp_path / "w"
    bad.mkdir()
    (bad / "effnet_encoder.safetensors").write_bytes(b"garbage")
    r = _invoke(["encode", str(tmp_path / "c"), "--out", str(out), "--weights", str(bad), "--quiet"])
    assert r.exit_code == 2 and "error:" in r.output
    assert not out.exists()
    r = _invoke(["encode", str(tmp_path / "nope"), "--out", str(out), "--weights", str(bad), "--quiet"])
    assert r.exit_code == 2 and not out.exists()
