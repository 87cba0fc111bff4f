"""The encode loop's overlap pieces (datasets/encode_loop.py) and JPEG decoding on the encoder's device
(datasets/device_decode.py, `encode --decode-on cuda`), CPU-tested: torchvision's CPU decode_jpeg stands in
for nvJPEG."""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from datasets_helpers import TinyEncoder, photos, store_arrays  # noqa: E402

from cascadekit.codec.errors import InputError  # noqa: E402
from cascadekit.codec.images import load_image, resize_center_crop  # noqa: E402
from cascadekit.datasets import builder as B  # noqa: E402
from cascadekit.datasets import store as S  # noqa: E402
from cascadekit.datasets.device_decode import DeviceImages, fit_crop  # noqa: E402
from cascadekit.datasets.encode_loop import CPU_ENCODER_WORKER_NICE, make_loader  # noqa: E402
from cascadekit.datasets.preprocess import PreprocessConfig  # noqa: E402
from cascadekit.datasets.writer import ChunkWriter, RowBatch  # noqa: E402

pytest.importorskip("torchvision")
KW = dict(resolution=64, batch_size=2, chunk_rows=4, num_workers=0, progress=False)


def _save(img: Image.Image, path: Path, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """Baseline JPEGs (RGB, grayscale, a bucket-shaped one), a progressive JPEG, a PNG, a cut-off JPEG and
    one under min_size: every route of device decoding."""
    root = tmp_path_factory.mktemp("mixed")
    ims = [Image.fromarray(a) for _, a in photos()[:3]]
    _save(ims[0].resize((120, 90)), root / "a_base.jpg", quality=90)
    _save(ims[1].convert("L").resize((80, 100)), root / "b_gray.jpg", quality=90)
    _save(ims[2].resize((200, 72)), root / "c_wide.jpg", quality=90)
    _save(ims[0].resize((96, 96)), root / "d_prog.jpg", quality=90, progressive=True)
    _save(ims[1].resize((90, 70)), root / "e_png.png")
    buf = io.BytesIO()
    ims[2].resize((100, 80)).save(buf, format="JPEG", quality=90)
    (root / "f_cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    _save(ims[0].resize((40, 30)), root / "g_small.jpg", quality=90)
    return root


def test_writer_waits_for_ready_before_reading(tmp_path):
    """A batch whose device->host copy is still running carries ready(): the writer waits for it."""
    root = S.create_store(tmp_path / "w.zarr", [S.GroupLayout("", 2, (16, 1, 1), None)], chunk_rows=2,
                          dtype="float32", attrs={})
    lat = np.zeros((2, 16, 1, 1), np.float32)

    def ready():  # what the CUDA event's synchronize guarantees: the values are there afterwards
        lat[:] = 7.0

    w = ChunkWriter(root, 2, "float32")
    w.add(RowBatch(group="", rows=np.arange(2), ok=np.ones(2, bool), keys=["a", "b"], captions=["", ""],
                   sources=["a", "b"], orig_size=np.zeros((2, 2), np.int32), reasons=["", ""], latents=lat,
                   ready=ready))
    assert w.chunks_written == 1
    np.testing.assert_array_equal(S.open_store(tmp_path / "w.zarr")["latents"][:], np.full((2, 16, 1, 1), 7.0))


def test_stage_seconds_cover_the_loop(mixed, tmp_path):
    s = B.build_latent_dataset([mixed], tmp_path / "t.zarr", TinyEncoder(), **KW)
    st = s.stage_seconds
    assert set(st) == {"decode_wait", "to_device", "encode", "controls", "write_wait", "release_memory"}
    assert st["encode"] > 0 and st["decode_wait"] > 0 and 0 < sum(st.values()) <= s.seconds


class _Niceness(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield os.nice(0)


def test_decode_workers_yield_to_a_cpu_encoder():
    """On a CPU encoder the decode workers run niced (they share its cores); on CUDA they do not."""
    base = os.nice(0)
    ds = _Niceness()
    got = list(make_loader(ds, 1, torch.device("cpu")))
    assert got == [min(base + CPU_ENCODER_WORKER_NICE, 19)]
    assert make_loader(ds, 1, torch.device("cuda")).worker_init_fn is None
    assert make_loader(ds, 0, torch.device("cpu")).worker_init_fn is None


def test_fit_crop_follows_resize_center_crop(mixed):
    """Same output size and crop window as the PIL path, values within a few levels (other bicubic)."""
    for name, size in (("a_base.jpg", (64, 64)), ("c_wide.jpg", (64, 160)), ("b_gray.jpg", (96, 64))):
        img = load_image(mixed / name)
        ref = np.asarray(resize_center_crop(img, size)).transpose(2, 0, 1).astype(np.int16)
        got = fit_crop(torch.from_numpy(np.asarray(img).transpose(2, 0, 1).copy()), size)
        assert got.dtype == torch.uint8 and tuple(got.shape) == (3, *size)
        diff = np.abs(got.numpy().astype(np.int16) - ref)
        assert diff.mean() < 2.0 and np.percentile(diff, 99) <= 12, (name, diff.mean())


def _spy_decoder(monkeypatch) -> list:
    """Record what reaches the device decoder (the builder's DeviceImages with a counting stand-in)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    made = []

    def gpu_decode(datas, device):
        made[0].batches.append(len(datas))
        return [decode_jpeg(d, mode=ImageReadMode.RGB).to(device) for d in datas]

    def images(device, cfg):
        d = DeviceImages(device, cfg, gpu_decode=gpu_decode)
        d.batches = []
        made.append(d)
        return d

    monkeypatch.setattr(B, "_device_images", images)
    return made


def test_device_decode_routes_every_file_and_records_it(mixed, tmp_path, monkeypatch):
    made = _spy_decoder(monkeypatch)
    enc = TinyEncoder()
    cpu = B.build_latent_dataset([mixed], tmp_path / "cpu.zarr", enc, min_size=48, **KW)
    dev = B.build_latent_dataset([mixed], tmp_path / "dev.zarr", enc, min_size=48, device_decode=True,
                                 **{**KW, "num_workers": 1})
    a, b = store_arrays(tmp_path / "cpu.zarr"), store_arrays(tmp_path / "dev.zarr")
    assert list(a["/keys"]) == list(b["/keys"])
    np.testing.assert_array_equal(a["/status"], b["/status"])  # same rows skipped, for the same reasons
    assert list(a["/skip_reason"]) == list(b["/skip_reason"])
    reasons = dict(zip(a["/keys"], a["/skip_reason"]))
    assert reasons["f_cut"] == "truncated" and reasons["g_small"] == "too_small"
    rows = {k: i for i, k in enumerate(a["/keys"])}
    for k in ("d_prog", "e_png"):  # decoded by the worker on the CPU: bit-identical
        np.testing.assert_array_equal(a["/latents"][rows[k]], b["/latents"][rows[k]])
    for k in ("a_base", "b_gray", "c_wide"):  # decoded + resized on the device: close, not identical
        np.testing.assert_allclose(a["/latents"][rows[k]].astype(np.float32),
                                   b["/latents"][rows[k]].astype(np.float32), atol=0.05)
    d = made[0]
    assert d.counts == {"gpu": 3, "cpu": 0, "gpu_failed": 0, "worker": 2} and cpu.ok == dev.ok == 5
    pre = S.open_store(tmp_path / "dev.zarr").attrs["settings"]["preprocess"]
    assert pre["jpeg_decode_on"] == "cpu" and "jpeg_decode_on" not in S.open_store(tmp_path / "cpu.zarr").attrs[
        "settings"]["preprocess"]
    with pytest.raises(InputError, match="jpeg_decode_on"):  # the other decoder would change the bits
        B.build_latent_dataset([mixed], tmp_path / "dev.zarr", enc, min_size=48, **KW)


def test_unreadable_on_both_decoders_is_skipped_with_its_reason():
    """A file the device refuses and the CPU loader cannot read either: that row is skipped, the batch goes on."""
    def refuse(datas, device):
        raise RuntimeError("nvjpeg: bad data")

    good = torch.full((3, 64, 64), 90, dtype=torch.uint8)
    item = {"ok": torch.tensor([True, True]), "reasons": ["", ""], "route": torch.tensor([1, 2], dtype=torch.int8),
            "hw": (64, 64), "images": good[None], "blobs": [b"\xff\xd8 not really a jpeg \xff\xd9"]}
    images, ok, reasons = DeviceImages(torch.device("cpu"), PreprocessConfig(resolution=64), refuse)(item)
    assert ok.tolist() == [True, False] and reasons == ["", "not_an_image"]
    assert tuple(images.shape) == (1, 3, 64, 64) and bool((images == good).all())


def test_cli_decode_on_cuda_without_cuda_fails_before_work(tmp_path):
    from cascadekit.cli.main import main

    r = CliRunner().invoke(main, ["encode", str(tmp_path), "--out", str(tmp_path / "s.zarr"), "--device", "cpu",
                                  "--decode-on", "cuda"])
    assert r.exit_code == 2 and r.output.strip().splitlines()[-1].startswith("error: ")
    assert "--decode-on cuda" in r.output and not (tmp_path / "s.zarr").exists()


def test_torchvision_without_batched_decode_decodes_one_by_one(monkeypatch):
    """torchvision 0.19 (torch 2.4) has no list form of decode_jpeg: the decoder calls it per image there
    (a list would fail and send every file to the CPU fallback)."""
    import torchvision

    from cascadekit.datasets import cuda_jpeg

    buf = io.BytesIO()
    Image.fromarray(photos()[0][1][:32, :48]).save(buf, format="JPEG", quality=90)
    data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    assert not cuda_jpeg._takes_lists("0.19.1+cu121") and cuda_jpeg._takes_lists("0.20.0")
    monkeypatch.setattr(torchvision, "__version__", "0.19.1+cu121")
    out = cuda_jpeg._torchvision_decode([data, data], torch.device("cpu"))
    assert [tuple(o.shape) for o in out] == [(3, 32, 48)] * 2
