"""build_latent_dataset: real photos, broken files, tar/manifest inputs, refusal, resume after SIGKILL, 2 ranks."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from datasets_helpers import (TinyEncoder, make_broken, make_folder, make_tar, photos, png_bytes,  # noqa: E402
                              store_arrays)

from cascadekit.codec.errors import InputError, PrecisionError
from cascadekit.datasets import store as S
from cascadekit.datasets.builder import build_latent_dataset, store_summary

KW = dict(resolution=64, batch_size=2, chunk_rows=4, num_workers=0, progress=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    keys = make_folder(root / "photos")
    expected = make_broken(root / "photos" / "broken")
    return root / "photos", keys, expected


def test_photos_and_broken_files(corpus, tmp_path):
    folder, keys, expected = corpus
    enc = TinyEncoder()
    s = build_latent_dataset([folder], tmp_path / "s.zarr", enc, min_size=16, **{**KW, "num_workers": 2})
    a = store_arrays(tmp_path / "s.zarr")
    rows = {k: i for i, k in enumerate(a["/keys"])}
    for name, reason in expected.items():
        i = rows[f"broken/{name}"]
        if reason == "":
            assert a["/status"][i] == S.STATUS_OK
        elif reason == "*":
            assert a["/status"][i] == S.STATUS_SKIPPED and a["/skip_reason"][i] in ("not_an_image", "truncated", "unreadable")
        else:
            assert (a["/status"][i], a["/skip_reason"][i]) == (S.STATUS_SKIPPED, reason), name
    for k in keys:  # every real photograph (RGB and grayscale) encoded
        assert a["/status"][rows[k]] == S.STATUS_OK
    # latents equal the encoder applied to the preprocessed image
    from cascadekit.codec.images import load_image, pil_to_tensor, resize_center_crop

    i = rows["part0/coffee"]
    x = pil_to_tensor(resize_center_crop(load_image(folder / "part0" / "coffee.png"), 64))[None]
    np.testing.assert_array_equal(a["/latents"][i], enc.encode(x)[0].numpy().astype(np.float16))
    from PIL import Image

    with Image.open(folder / "part0" / "coffee.png") as im:
        assert tuple(a["/orig_size"][i]) == (im.size[1], im.size[0])
    from collections import Counter

    assert s.ok == len(keys) + 1 and s.rows == len(keys) + len(expected)
    assert s.skipped == dict(Counter(r for r, st in zip(a["/skip_reason"], a["/status"]) if st == 2))
    assert s.missing_captions == sum(1 for k in keys if a["/captions"][rows[k]] == "") + 1
    # group attributes of the public format
    root = S.open_store(tmp_path / "s.zarr")
    at = root.attrs
    assert at["format"] == S.FORMAT_NAME and at["complete"] and at["encoder"] == enc.identity()
    assert len(at["latent_mean"]) == 16 and all(v > 0 for v in at["latent_std"])
    ok = a["/status"] == 1
    np.testing.assert_allclose(at["latent_mean"], a["/latents"][ok].astype(np.float64).mean(axis=(0, 2, 3)), atol=1e-6)
    errs = root["errors"]
    assert sorted(np.asarray(errs["key"][:]).tolist()) == sorted(k for k in a["/keys"][~ok])

    from cascadekit.datasets.inspect import format_report, inspect_store

    rep = inspect_store(tmp_path / "s.zarr", enc, n_preview=4, write=True)
    g = rep["groups"]["/"]
    assert (g["ok"], g["skipped"], g["pending"]) == (s.ok, sum(s.skipped.values()), 0)
    assert g["skip_reasons"] == s.skipped and g["latent_shape"] == [16, 2, 2]
    assert Path(rep["preview_png"]).is_file() and "truncated" in format_report(rep)
    from PIL import Image

    with Image.open(rep["preview_png"]) as im:  # 2x2 grid of 16x16 previews + padding
        assert im.size == (2 * 16 + 3 * 4, 2 * 16 + 3 * 4)
    assert S.open_store(tmp_path / "s.zarr")["inspect"].attrs["report"]["ok"] == s.ok


def test_tar_and_manifest_inputs_with_captions(tmp_path):
    a = photos()[0][1][::4, ::4]
    make_tar(tmp_path / "d-000.tar", [("x0", {"jpg": png_bytes(a, "JPEG"), "txt": b"tar caption"}),
                                      ("x1", {"png": png_bytes(a), "json": b'{"caption": "json tar"}'}),
                                      ("x2", {"jpg": b"not a jpeg"})])
    make_tar(tmp_path / "d-001.tar", [("y0", {"webp": png_bytes(a, "WEBP")})])
    make_tar(tmp_path / "d-002.tar", [("z0", {"png": png_bytes(a)})])
    raw = (tmp_path / "d-002.tar").read_bytes()
    (tmp_path / "d-002.tar").write_bytes(raw[: len(raw) // 2])  # truncated shard: z0 cut off
    man = tmp_path / "m.jsonl"
    (tmp_path / "one.png").write_bytes(png_bytes(a))
    man.write_text(json.dumps({"path": "one.png", "caption": "from manifest"}) + "\n"
                   + json.dumps({"path": "gone.png", "caption": "missing file"}) + "\n")
    s = build_latent_dataset([str(tmp_path / "d-{000..002}.tar"), man], tmp_path / "t.zarr", TinyEncoder(), **KW)
    arr = store_arrays(tmp_path / "t.zarr")
    got = dict(zip(arr["/keys"], zip(arr["/status"], arr["/captions"], arr["/skip_reason"])))
    assert got["x0"] == (1, "tar caption", "")
    assert got["x1"] == (1, "json tar", "")
    assert got["x2"][0] == 2 and got["x2"][2] == "not_an_image"
    assert got["y0"] == (1, "", "")
    assert got["one"] == (1, "from manifest", "")
    assert got["gone"][0] == 2 and got["gone"][2] == "unreadable"
    broken = [k for k in got if "broken" in k]
    assert len(broken) == 1 and got[broken[0]][2] == "unreadable"
    assert got["z0"][0] == 2 and got["z0"][2] == "unreadable"
    assert s.skipped == {"not_an_image": 1, "unreadable": 3}
    assert arr["/source"][list(arr["/keys"]).index("x0")].endswith("d-000.tar#x0")
    assert s.missing_captions == 1


def test_refusal_overwrite_and_noop_rerun(corpus, tmp_path):
    folder = corpus[0] / "part0"
    out = tmp_path / "r.zarr"
    build_latent_dataset([folder], out, TinyEncoder(), **KW)
    before = store_arrays(out)
    enc = TinyEncoder()
    s = build_latent_dataset([folder], out, enc, **KW)  # same settings: nothing to do
    assert enc.calls == 1 and s.encoded_now == 0 and s.resumed_rows == s.rows  # the probe only
    with pytest.raises(InputError, match="(?s)different settings.*resolution: store has 64, this run has 96"):
        build_latent_dataset([folder], out, TinyEncoder(), **{**KW, "resolution": 96})
    with pytest.raises(InputError, match="encoder"):
        build_latent_dataset([folder], out, TinyEncoder(seed=1), **KW)
    # the encoder batch is part of the settings: kernels may round differently for another batch size
    with pytest.raises(InputError, match="(?s)batch_size: store has 2, this run has 3.*--overwrite"):
        build_latent_dataset([folder], out, TinyEncoder(), **{**KW, "batch_size": 3})
    assert S.open_store(out).attrs["settings"]["batch_size"] == 2
    after = store_arrays(out)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # refusals touched nothing
    build_latent_dataset([folder], out, TinyEncoder(), **{**KW, "resolution": 96, "overwrite": True})
    assert store_arrays(out)["/latents"].shape[-1] == 3
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a cascadekit latent store"):
        build_latent_dataset([folder], tmp_path / "other", TinyEncoder(), **{**KW, "overwrite": True})
    assert (tmp_path / "other" / "precious.txt").read_text() == "keep me"


def test_errors_before_any_work(corpus, tmp_path):
    folder = corpus[0] / "part0"
    with pytest.raises(InputError, match="does not exist"):
        build_latent_dataset([tmp_path / "missing"], tmp_path / "a.zarr", TinyEncoder(), **KW)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if not os.access(ro, os.W_OK):  # root ignores permissions
            with pytest.raises(InputError, match="not writable"):
                build_latent_dataset([folder], ro / "x.zarr", TinyEncoder(), **KW)
    finally:
        ro.chmod(0o700)

    class Broken(TinyEncoder):
        def encode(self, x):
            raise RuntimeError("size mismatch for effnet weight")

    with pytest.raises(InputError, match="cannot encode a 64x64 test image"):
        build_latent_dataset([folder], tmp_path / "b.zarr", Broken(), **KW)
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()


def test_fp16_overflow_is_an_error_float32_and_stage_a(corpus, tmp_path):
    folder = corpus[0] / "part0"
    with pytest.raises(PrecisionError, match="float32"):
        build_latent_dataset([folder], tmp_path / "o.zarr", TinyEncoder(scale=1e5), **KW)
    s = build_latent_dataset([folder], tmp_path / "f.zarr", TinyEncoder(scale=1e5), dtype="float32",
                             spaces=("semantic", "stage_a"), **{**KW, "overwrite": True})
    a = store_arrays(tmp_path / "f.zarr")
    assert a["/latents"].dtype == np.float32 and np.abs(a["/latents"]).max() > 7e4
    assert a["/stage_a"].shape == (s.rows, 4, 16, 16)
    assert np.abs(a["/stage_a"][a["/status"] == 1]).sum() > 0


def test_buckets_groups(tmp_path):
    a = photos()[0][1]
    d = tmp_path / "b"
    d.mkdir()
    from PIL import Image

    Image.fromarray(a[:, :]).resize((128, 128)).save(d / "square.png")
    Image.fromarray(a).resize((256, 128)).save(d / "wide.png")
    Image.fromarray(a).resize((128, 256)).save(d / "tall.png")
    s = build_latent_dataset([d], tmp_path / "k.zarr", TinyEncoder(), buckets=True, **KW)
    root = S.open_store(tmp_path / "k.zarr")
    groups = root.attrs["groups"]
    assert groups == ["buckets/32x64", "buckets/64x32", "buckets/64x64"] and s.ok == 3
    assert root["buckets/32x64/latents"].shape == (1, 16, 1, 2)
    assert str(root["buckets/32x64/keys"][0]) == "wide" and str(root["buckets/64x32/keys"][0]) == "tall"


def _free_port() -> int:
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


def _helper_env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(HERE) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _assert_resume_after_sigkill_is_identical(folder, tmp_path, encoder, delay: float, timeout: float, **env):
    """Build ``folder`` uninterrupted; build it again in a subprocess (``datasets_helpers``, ``delay`` s per
    batch) killed with SIGKILL once at least one chunk (not all) is complete; rerun in this process: the
    resumed store must equal the uninterrupted one bit for bit."""
    ref = tmp_path / "ref.zarr"
    build_latent_dataset([folder], ref, encoder, **KW)
    out = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "datasets_helpers", str(out), str(delay), "4", str(folder)]
    p = subprocess.Popen(cmd, env=_helper_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while time.time() < deadline and p.poll() is None:
        if (out / "status" / "c").is_dir() and len(list((out / "status" / "c").iterdir())) >= 1:
            break
        time.sleep(0.05)
    assert p.poll() is None, p.stdout.read().decode()[-2000:]
    p.send_signal(signal.SIGKILL)
    p.wait()
    st = S.read_status(S.open_store(out))
    assert 0 < (st != 0).sum() < len(st), "kill did not land mid-run"
    s = build_latent_dataset([folder], out, encoder, **KW)
    assert s.resumed_rows == int((st != 0).sum()) and s.encoded_now + s.skipped_now == len(st) - s.resumed_rows
    r, k = store_arrays(ref), store_arrays(out)
    assert np.abs(r["/latents"]).max() > 0
    for name in r:
        assert np.array_equal(r[name], k[name]), name
    assert not list(out.rglob("*.partial"))


@pytest.mark.slow
def test_resume_after_sigkill_is_identical(corpus, tmp_path):
    _assert_resume_after_sigkill_is_identical(corpus[0], tmp_path, TinyEncoder(), delay=0.15, timeout=60)


@pytest.mark.slow
def test_resume_after_sigkill_is_identical_with_the_real_effnet(corpus, tmp_path, tmp_path_factory):
    """The same guarantee with the real EfficientNetV2-S encoder (tiny random weights): batches start at
    chunk boundaries and their size is fixed, so the resumed latents equal the uninterrupted run's bit for bit."""
    from _tiny_weights import tiny_weights_dir
    from datasets_helpers import real_encoder

    weights = tiny_weights_dir(tmp_path_factory)
    _assert_resume_after_sigkill_is_identical(corpus[0], tmp_path, real_encoder(weights), delay=0.3, timeout=120,
                                              CK_WEIGHTS=weights)


@pytest.mark.slow
def test_two_rank_gloo_equals_single_process(corpus, tmp_path):
    folder = corpus[0]
    ref = tmp_path / "ref.zarr"
    build_latent_dataset([folder], ref, TinyEncoder(), **KW)
    out = tmp_path / "dist.zarr"
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "datasets_helpers", str(out), "0", "4", str(folder)],
                              env=_helper_env(RANK=r, WORLD_SIZE=2, LOCAL_RANK=r, MASTER_ADDR="127.0.0.1",
                                              MASTER_PORT=port),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]
    outs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    r, d = store_arrays(ref), store_arrays(out)
    for name in r:
        assert np.array_equal(r[name], d[name]), name
    assert S.open_store(out).attrs["latent_mean"] == S.open_store(ref).attrs["latent_mean"]


def test_reader_sees_only_complete_rows(corpus, tmp_path):
    """A store mid-build: LatentDataset returns exactly the rows whose chunk status is written."""
    from cascadekit.datasets.reader import LatentDataset
    from cascadekit.datasets.builder import make_tasks, assign_groups
    from cascadekit.datasets.preprocess import PreprocessConfig
    from cascadekit.datasets.sources import plan_inputs
    from cascadekit.codec import distributed as D

    folder = corpus[0] / "part0"
    out = tmp_path / "p.zarr"
    build_latent_dataset([folder], out, TinyEncoder(), **KW)
    g = S.open_store(out, mode="r+")
    g["status"][4:8] = 0  # as if chunk 1 had not been written yet
    ds = LatentDataset(out, batch_size=3, shuffle=True)
    rows = sorted(int(x) for b in ds for x in b["rows"])
    assert rows == [0, 1, 2, 3]
    plan = plan_inputs([folder])
    groups = assign_groups(plan, PreprocessConfig(resolution=64))
    tasks, done = make_tasks(groups, {"": S.read_status(g)}, 4, 2, D.DistInfo())
    assert done == 4 and [t.rows for t in tasks] == [(4, 5), (6, 7)]
    assert tasks[1].samples(plan, groups) == [plan[6], plan[7]]  # tasks hold rows; samples come from the plan
    assert store_summary(out).ok == 4


def test_store_killed_during_creation_is_recreated(tmp_path):
    """A kill between 'group created' and 'all arrays created' leaves an initializing store: rebuilt."""
    import zarr

    from cascadekit.datasets.sources import samples_from_images

    out = tmp_path / "init.zarr"
    g = zarr.open_group(str(out), mode="w-", zarr_format=3,
                        attributes={"format": S.FORMAT_NAME, "format_version": S.FORMAT_VERSION, "initializing": True})
    g.create_array("latents", shape=(3, 16, 2, 2), dtype="float16")  # half-created
    samples = samples_from_images([(f"a{i}", np.full((64, 64, 3), 40 * i, np.uint8)) for i in range(3)])
    s = build_latent_dataset(samples, out, TinyEncoder(), **KW)
    root = S.open_store(out)
    assert s.ok == 3 and root.attrs["initializing"] is False and root["status"][:].tolist() == [1, 1, 1]


def test_free_heap_pages_released_per_chunk_and_batch(corpus, tmp_path, monkeypatch):
    """Peak RSS must not grow with the corpus: freed heap pages go back to the OS after every chunk
    (glibc keeps them otherwise when a decode worker is used: +31 MB at 1k -> +90 MB at 10k images)."""
    from cascadekit.datasets import builder as B

    calls = []
    monkeypatch.setattr(B, "release_free_memory", lambda: calls.append(1))
    s = build_latent_dataset([corpus[0] / "part0"], tmp_path / "m.zarr", TinyEncoder(), **KW)
    c, b = KW["chunk_rows"], KW["batch_size"]
    n_chunks = -(-s.rows // c)
    n_batches = sum(-(-min(c, s.rows - a) // b) for a in range(0, s.rows, c))
    assert n_chunks > 1 and len(calls) == n_chunks + n_batches  # once per written chunk and per batch
    monkeypatch.undo()
    B.release_free_memory()  # callable on this platform (glibc malloc_trim or a no-op)
    if sys.platform.startswith("linux") and os.path.exists("/lib/x86_64-linux-gnu/libc.so.6"):
        from cascadekit.datasets import memory as M

        assert M._malloc_trim() is not None
