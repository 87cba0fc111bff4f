"""Latent dataset builder and reader benchmarks.

1. ``overhead``: end-to-end ``build_latent_dataset`` images/s vs the encoder alone on the same
   (pre-decoded, identically batched) images. Pipeline overhead = e2e wall time / time spent inside
   the encoder during that run - 1 (also reported against the separate model-only run, which on a
   busy shared CPU mixes in the model's own speed variations).
   Encoder: the real EfficientNetV2-S encoder of a ``Codec`` (tiny random weights unless
   ``--weights``), at ``--resolution`` (256 on CPU; 768 bf16 on CUDA).
2. ``rss``: peak RSS of a full build of 1k vs 10k small images with a cheap encoder (64 px), each
   in a fresh process: memory must not grow with the corpus.
3. ``reader``: ``LatentDataset`` shuffled samples/s and samples per CPU-second on a 16x24x24 float16 store,
   block-shuffle from disk (page cache warm) with the direct chunk path and with zarr's chunk reads (the
   path before, interleaved epoch by epoch in the same run), 0 and 2 DataLoader workers; and in memory.
4. ``trainer``: the trainer's reader (``open_train_data`` + ``BatchPlan``) over whole epochs, as training reads it
   (its read-ahead, ``generator/training/prefetch.py``) and synchronously on the training thread, interleaved, for
   zstd-3 and blosc-lz4-bitshuffle latents at 1 and 2 torch threads; prints the read-ahead / synchronous ratio.
   ``trainstep``: a tiny Stage C training run on the store with and without the read-ahead (step wall and CPU time).
5. ``codecs``: per latents codec (zstd-3, zstd-1, blosc-lz4 with bit / byte shuffle, none): bytes per
   sample and LatentDataset samples/s from disk (0 workers).
6. ``bytes``: stored bytes per sample (latents array) for 16x24x24 float16.

    python benchmarks/bench_datasets.py [--quick] [--json out.json] [--only overhead,rss,reader,trainer,trainstep,codecs,bytes]
                                        [--rss-sizes 1000,10000,50000]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def _corpus(folder: Path, n: int, side: int, seed: int = 0) -> None:
    """n JPEGs (side x 1.25*side) cut from scikit-image photographs with random offsets/flips."""
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    srcs = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(seed)
    for i in range(n):
        a = srcs[i % len(srcs)]
        h, w = a.shape[:2]
        ch, cw = min(h, 300), min(w, 375)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = a[y:y + ch, x:x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(exist_ok=True)
        Image.fromarray(np.ascontiguousarray(crop)).resize((int(side * 1.25), side)).save(sub / f"{i:06d}.jpg", quality=90)


class CheapEncoder:
    """(B,3,H,W) -> (B,16,H/32,W/32) by average pooling + a fixed channel mix (for RSS runs)."""

    device = torch.device("cpu")

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(16, 3, generator=g)

    def encode(self, x):
        p = torch.nn.functional.avg_pool2d(x, 32)
        return torch.einsum("oc,bchw->bohw", self.w, p)

    def identity(self):
        return {"name": "cheap-bench-encoder"}


# ------------------------------------------------------------------------------------ overhead
def bench_overhead(tmp: Path, n: int, resolution: int, batch: int, workers: int, weights, device, dtype) -> dict:
    from cascadekit.codec.codec import Codec
    from cascadekit.codec.images import load_image, resize_center_crop
    from cascadekit.datasets.builder import build_latent_dataset

    corpus = tmp / "ov"
    _corpus(corpus, n, max(resolution, 256))
    if weights is None:
        from cascadekit.codec.defaults import default_weights

        weights = default_weights()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # only the effnet: encoding is what is timed (as `cascadekit encode` loads it)
        codec = Codec.from_pretrained(weights, device=device, dtype=dtype, encoder_resolution=resolution,
                                      components=("effnet",))
    files = sorted(corpus.rglob("*.jpg"))
    imgs = torch.stack([torch.from_numpy(np.array(resize_center_crop(load_image(f), resolution))).permute(2, 0, 1)
                        for f in files])  # uint8, decoded outside the timing
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    codec.encode(imgs[:batch].to(device).float() / 255)  # warm-up
    sync()
    t = time.perf_counter()
    for s in range(0, n, batch):
        z = codec.encode(imgs[s:s + batch].to(device).float().div_(255)).float().cpu()
    sync()
    t_model = time.perf_counter() - t
    del z
    # end to end, with the encoder calls timed inside the run: what the pipeline adds on top of the
    # model (start-up, decoding not hidden behind the model, writing) is wall - encode time. On a
    # shared 2-core CPU the decode worker also slows the model itself; the raw wall ratio shows that.
    enc_time = [0.0]
    encode = codec.encode

    def timed(x, **kw):
        t0 = time.perf_counter()
        z = encode(x, **kw)
        sync()
        enc_time[0] += time.perf_counter() - t0
        return z

    codec.encode = timed
    t = time.perf_counter()
    summ = build_latent_dataset([corpus], tmp / "ov.zarr", codec, resolution=resolution, batch_size=batch,
                                chunk_rows=max(batch, 256), num_workers=workers, progress=False)
    t_e2e = time.perf_counter() - t
    codec.encode = encode
    assert summ.ok == n
    return {"images": n, "resolution": resolution, "batch_size": batch, "num_workers": workers,
            "device": str(device), "dtype": str(dtype),
            "model_images_per_s": n / t_model, "e2e_images_per_s": n / t_e2e,
            "encode_s_in_run": enc_time[0], "e2e_s": t_e2e,
            "overhead": t_e2e / enc_time[0] - 1.0,
            "overhead_vs_separate_model_run": t_e2e / t_model - 1.0}


# ------------------------------------------------------------------------------------------ rss
def _rss_child(corpus: str, out: str) -> None:
    import threading

    import psutil

    torch.set_num_threads(2)
    from cascadekit.datasets.builder import build_latent_dataset

    me = psutil.Process()
    base = me.memory_info().rss
    peak = {"main": base, "workers": 0}
    stop = threading.Event()

    def sample():  # current RSS every 20 ms: main process, and the sum over DataLoader workers
        while not stop.is_set():
            try:
                peak["main"] = max(peak["main"], me.memory_info().rss)
                peak["workers"] = max(peak["workers"], sum(c.memory_info().rss for c in me.children(recursive=True)))
            except psutil.Error:
                pass
            time.sleep(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t = time.perf_counter()
    s = build_latent_dataset([corpus], out, CheapEncoder(), resolution=64, batch_size=64, chunk_rows=256,
                             num_workers=1, progress=False)
    dt = time.perf_counter() - t
    stop.set()
    th.join()
    print(json.dumps({"images": s.ok, "seconds": dt, "rss_after_imports_mb": base / 2**20,
                      "peak_rss_mb": peak["main"] / 2**20, "peak_worker_rss_mb": peak["workers"] / 2**20,
                      "growth_mb": (peak["main"] - base) / 2**20}))


def bench_rss(tmp: Path, sizes) -> list[dict]:
    res = []
    for n in sizes:
        corpus = tmp / f"rss{n}"
        _corpus(corpus, n, 96, seed=n)
        out = tmp / f"rss{n}.zarr"
        p = subprocess.run([sys.executable, __file__, "--rss-child", str(corpus), str(out)], capture_output=True,
                           text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if p.returncode:
            raise RuntimeError(p.stderr[-3000:])
        res.append(json.loads(p.stdout.strip().splitlines()[-1]))
        shutil.rmtree(corpus)
    return res


# --------------------------------------------------------------------------------------- reader
def _synthetic_store(path: Path, n: int, chunk_rows: int = 256, side: int = 24) -> None:
    from cascadekit.datasets import store as S
    from cascadekit.datasets.writer import ChunkWriter, RowBatch

    root = S.create_store(path, [S.GroupLayout("", n, (16, side, side))], chunk_rows=chunk_rows, dtype="float16",
                          attrs={"settings": {}})
    w = ChunkWriter(root, chunk_rows, "float16")
    rng = np.random.default_rng(0)
    for a in range(0, n, chunk_rows):
        k = min(chunk_rows, n - a)
        lat = rng.standard_normal((k, 16, side, side), dtype=np.float32) * 0.8
        w.add(RowBatch("", np.arange(a, a + k), np.ones(k, bool), [f"k{i}" for i in range(a, a + k)],
                       [f"a caption number {i}" for i in range(a, a + k)], [f"/data/{i}.jpg" for i in range(a, a + k)],
                       np.full((k, 2), 1024, np.int32), [""] * k, lat))
    S.finalize_store(path)


def _zarr_path_dataset():
    """LatentDataset reading every chunk through zarr (``ChunkCache(direct=False)``): the path before
    ``datasets/chunk_decode.py``, timed in the same run for a same-load ratio."""
    from cascadekit.datasets.reader import LatentDataset

    class ZarrPath(LatentDataset):
        def _arrays(self, st):
            return [{f: st.group(g.path).cache(f, keep=0, direct=False) for f in self.fields} for g in self._groups]

    return ZarrPath


def _cpu_s() -> float:
    """CPU seconds of this process and its reaped children (DataLoader workers exit after each epoch)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _epoch(ds, workers: int, epoch: int) -> tuple[int, float, float]:
    """(samples, wall s, CPU s) of one shuffled epoch of ``ds`` through a DataLoader with ``workers`` workers."""
    from torch.utils.data import DataLoader

    ds.set_epoch(epoch)
    dl = DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=False)
    t, c, cnt = time.perf_counter(), _cpu_s(), 0
    for b in dl:
        cnt += b["latents"].shape[0]
    return cnt, time.perf_counter() - t, _cpu_s() - c


def _row(mode: str, workers: int, runs: list[tuple[int, float, float]]) -> dict:
    n = runs[0][0]
    return {"mode": mode, "workers": workers, "samples": n, "epochs": len(runs),
            "samples_per_s": float(np.median([n / w for _, w, _ in runs])),
            # CPU seconds of the process and its workers: a load-independent figure when other jobs share the cores
            "samples_per_cpu_s": float(np.median([n / max(c, 1e-9) for _, _, c in runs]))}


def bench_reader(tmp: Path, n: int, repeats: int = 5) -> list[dict]:
    """LatentDataset shuffled epochs from disk (page cache warm), the direct chunk path and zarr's interleaved
    epoch by epoch (medians), 0 and 2 workers; then in memory."""
    from cascadekit.datasets.reader import LatentDataset

    path = tmp / "reader.zarr"
    _synthetic_store(path, n)
    res = []
    for workers in (0, 2):
        sets = {"direct chunk decoding": LatentDataset, "zarr chunk reads (before)": _zarr_path_dataset()}
        dss = {k: cls(path, batch_size=256, shuffle=True, seed=0, in_memory=False) for k, cls in sets.items()}
        runs = {k: [] for k in dss}
        for k, ds in dss.items():
            _epoch(ds, workers, 0)  # warms the page cache
        for r in range(repeats):
            for k, ds in dss.items():
                runs[k].append(_epoch(ds, workers, r + 1))
        res += [_row(f"from disk, {k}", workers, v) for k, v in runs.items()]
        assert all(x[0] == n for v in runs.values() for x in v)
    ds = LatentDataset(path, batch_size=256, shuffle=True, seed=0, in_memory=True)  # in memory: no workers
    _epoch(ds, 0, 0)
    res.append(_row("in memory", 0, [_epoch(ds, 0, r + 1) for r in range(repeats)]))
    return res


def _plan_keys(plan, epoch: int):
    """(group name, indices) of the plan's batches of ``epoch`` (one rank, no accumulation), as the trainer reads them."""
    for k in range(epoch * plan.batches_per_epoch, (epoch + 1) * plan.batches_per_epoch):
        g, idx, _ = plan.batch(k)
        yield g.name, idx


def _trainer_epoch(data, plan, epoch: int, ahead: bool) -> tuple[int, float, float, float]:
    """(samples, wall s, CPU s, CPU s of the busiest thread) of one epoch read as TrainingLoop reads it: through its
    read-ahead (``ahead``, the default settings; busiest of fetch / assemble / this thread) or synchronously on this
    thread (``TrainingLoop(read_ahead=None)``)."""
    from cascadekit.generator.training.prefetch import ReadAhead

    t, c, mine, cnt = time.perf_counter(), _cpu_s(), time.thread_time(), 0
    stages = {}
    if ahead:
        with ReadAhead(data, _plan_keys(plan, epoch)) as ra:
            for g, idx in _plan_keys(plan, epoch):
                cnt += ra.read(g, idx)["latents"].shape[0]
        stages = ra.stage_cpu_s
    else:
        for g, idx in _plan_keys(plan, epoch):
            cnt += data.read(g, idx)["latents"].shape[0]
    busiest = max([time.thread_time() - mine, *stages.values()])
    return cnt, time.perf_counter() - t, _cpu_s() - c, busiest


def _trainer_codecs() -> dict:
    """The latents codecs the trainer's reader is measured on (named explicitly: the store default may change)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    return {"zstd-3": ZstdCodec(level=3), "blosc-lz4 + bitshuffle": BloscCodec(cname="lz4", clevel=5,
                                                                               shuffle="bitshuffle")}


def bench_trainer_reader(tmp: Path, n: int, repeats: int = 3, threads=(1, 2)) -> list[dict]:
    """The trainer's reader (``open_train_data`` + ``BatchPlan``, batch 256) over whole epochs: its read-ahead
    (``generator/training/prefetch.py``, as training reads) and synchronous reads on the training thread,
    interleaved epoch by epoch (medians), per latents codec and torch thread count."""
    from cascadekit.generator.batches import BatchPlan
    from cascadekit.generator.data import open_train_data

    src = tmp / "reader.zarr"
    if not src.exists():
        _synthetic_store(src, n)
    stores = {}
    for name, codec in _trainer_codecs().items():
        stores[name] = tmp / f"trainer_{len(stores)}.zarr"
        _recode_latents(src, stores[name], codec)
    res, before = [], torch.get_num_threads()
    try:
        for nt in threads:
            torch.set_num_threads(nt)
            for codec, path in stores.items():
                modes = {"read-ahead": True, "synchronous": False}
                sources = {m: open_train_data(path) for m in modes}  # own chunk caches per mode
                plan = BatchPlan(sources["synchronous"].groups, 256, seed=0)
                runs = {m: [] for m in modes}
                for e in range(repeats + 1):  # epoch 0 warms the page cache
                    for m, ahead in modes.items():
                        runs[m].append(_trainer_epoch(sources[m], plan, e, ahead))
                for m in modes:
                    row = _row(f"trainer reader, {m}, {codec}, {nt} torch thr", 0, [r[:3] for r in runs[m][1:]])
                    # samples per CPU-second of the busiest thread: the rate on free cores if the GIL allowed it
                    busy = float(np.median([r[0] / r[3] for r in runs[m][1:]]))
                    res.append({**row, "codec": codec, "torch_threads": nt, "read": m,
                                "samples_per_busiest_thread_cpu_s": busy})
    finally:
        torch.set_num_threads(before)
        for path in stores.values():
            shutil.rmtree(path, ignore_errors=True)
    return res


class _FixedText:
    """A stand-in text encoder (fixed embeddings of the tiny Stage C's widths) for the training-step run."""

    def __init__(self, tokens: int = 8, width: int = 32):
        g = torch.Generator().manual_seed(0)
        self.t, self.p = torch.randn(1, tokens, width, generator=g), torch.randn(1, 1, width, generator=g)

    def encode(self, prompts):
        n = len(prompts)
        return self.t.expand(n, -1, -1).clone(), self.p.expand(n, -1, -1).clone()


def bench_train_step(tmp: Path, n: int = 4096, batch: int = 32, steps: int = 8, repeats: int = 2) -> list[dict]:
    """A real tiny Stage C training run (``Trainer``) on a 16x8x8 store (the tiny Stage C takes ~9 CPU-s per
    16 samples at 24x24 on this CPU), with the read-ahead and without, runs alternated: median step wall time
    (``step_time_s`` of the log: data + forward + backward + optimizer) and process CPU seconds per step (the first
    2 steps of a run are warm-up)."""
    import statistics

    from cascadekit.generator.config import TrainConfig
    from cascadekit.generator.data import open_train_data
    from cascadekit.generator.train import Trainer

    src = tmp / "trainstep.zarr"
    _synthetic_store(src, n, side=8)
    cfg = TrainConfig.from_dict(dict(model="tiny", batch_size=batch, steps=steps, lr=1e-3, warmup_steps=1,
                                     log_every=1000, save_every=10 ** 6, keep_checkpoints=1))
    walls, cpus = {"read-ahead": [], "synchronous": []}, {"read-ahead": [], "synchronous": []}
    for r in range(repeats):
        for mode in walls:
            trainer = Trainer(open_train_data(src), cfg, tmp / f"run_{mode[:4]}_{r}", device="cpu",
                              text_encoder=_FixedText(), log=lambda m: None)
            if mode == "synchronous":
                trainer.read_ahead = None
            c = time.process_time()
            try:
                hist = trainer.run().history
            finally:
                trainer.close()
            walls[mode] += [h["step_time_s"] for h in hist[2:]]
            cpus[mode].append((time.process_time() - c) / steps)
    return [{"mode": f"tiny Stage C training step, batch {batch}, {m}", "step_s_median": statistics.median(walls[m]),
             "cpu_s_per_step_median": statistics.median(cpus[m]), "steps": len(walls[m])} for m in walls]


#: codecs measured for the latents array of a new store: zarr v3 codec (named explicitly: the store default changed
#: from zstd-3 to blosc-lz4 + bitshuffle for float arrays, datasets/store.py::compressors_for)
def _codecs() -> dict:
    from zarr.codecs import BloscCodec, ZstdCodec

    return {"zstd-3": ZstdCodec(level=3), "zstd-1": ZstdCodec(level=1),
            "blosc-lz4 + bitshuffle": BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"),
            "blosc-lz4 + byte shuffle": BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
            "uncompressed": ()}


def _recode_latents(src: Path, dst: Path, codec) -> None:
    """A copy of the store ``src`` whose latents array is rewritten with ``codec`` (+ the crc32c checksum)."""
    import zarr
    from zarr.codecs import Crc32cCodec

    from cascadekit.datasets import store as S

    shutil.copytree(src, dst)
    if codec is None:
        return
    g = zarr.open_group(str(dst), mode="r+")
    old = g["latents"]
    data, chunks, dims = np.asarray(old[:]), old.chunks, old.metadata.dimension_names
    comp = (*((codec,) if not isinstance(codec, tuple) else codec), Crc32cCodec())
    new = g.create_array("latents", shape=data.shape, chunks=chunks, dtype=data.dtype, compressors=comp,
                         fill_value=0, dimension_names=dims, overwrite=True, config={"write_empty_chunks": True})
    new[:] = data
    S.consolidate(dst)


def bench_codecs(tmp: Path, n: int, repeats: int = 3) -> list[dict]:
    """Per latents codec: bytes per sample and LatentDataset shuffled samples/s from disk (0 workers)."""
    from cascadekit.datasets.inspect import _disk_bytes
    from cascadekit.datasets.reader import LatentDataset

    src = tmp / "reader.zarr"
    if not src.exists():
        _synthetic_store(src, n)
    res = []
    for name, codec in _codecs().items():
        dst = tmp / f"codec_{len(res)}.zarr"
        _recode_latents(src, dst, codec)
        ds = LatentDataset(dst, batch_size=256, shuffle=True, seed=0, in_memory=False)
        _epoch(ds, 0, 0)
        row = _row(f"codec {name}", 0, [_epoch(ds, 0, r + 1) for r in range(repeats)])
        res.append({**row, "codec": name, "latents_bytes_per_sample": _disk_bytes(dst / "latents") / n})
        shutil.rmtree(dst)
    return res


def bench_bytes(tmp: Path) -> dict:
    from cascadekit.datasets.inspect import _disk_bytes

    path = tmp / "reader.zarr"
    if not path.exists():
        _synthetic_store(path, 4096)
    import zarr

    n = zarr.open_group(str(path), mode="r")["latents"].shape[0]
    lat = _disk_bytes(path / "latents")
    return {"samples": n, "latents_bytes_per_sample": lat / n, "raw_bytes_per_sample": 16 * 24 * 24 * 2,
            "store_bytes_per_sample": _disk_bytes(path) / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller corpora (CI smoke run)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--only", default="overhead,rss,reader,trainer,trainstep,codecs,bytes")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--rss-sizes", default=None, help="corpus sizes for the rss run (default 1000,10000; --quick 200,1000)")
    ap.add_argument("--rss-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        _rss_child(*args.rss_child)
        return
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    only = set(args.only.split(","))
    out = {"machine": {"cpu_count": os.cpu_count(), "load_average_at_start": os.getloadavg(), "torch": torch.__version__, "python": platform.python_version(),
                       "cuda": torch.cuda.get_device_name(0) if cuda else None}}
    with tempfile.TemporaryDirectory(prefix="bench_datasets_") as td:
        tmp = Path(td)
        if "overhead" in only:
            if cuda:
                out["overhead"] = bench_overhead(tmp, 512 if args.quick else 2048, 768, 64, 6, args.weights,
                                                 device, "bf16")
            else:
                # >= 1k images: the fixed start-up (zarr import, worker fork, store creation, ~0.5 s)
                # must not dominate what is a steady-state figure
                out["overhead"] = bench_overhead(tmp, 64 if args.quick else 1024, 128, 32, 1, args.weights,
                                                 device, "fp32")
        if "rss" in only:
            sizes = [int(x) for x in args.rss_sizes.split(",")] if args.rss_sizes else (
                (200, 1000) if args.quick else (1000, 10000))
            out["rss"] = bench_rss(tmp, sizes)
        n_reader = 4096 if args.quick else 20480
        if "reader" in only:
            out["reader"] = bench_reader(tmp, n_reader)
        if "trainer" in only:
            out["trainer"] = bench_trainer_reader(tmp, n_reader)
        if "trainstep" in only:
            out["trainstep"] = bench_train_step(tmp)
        if "codecs" in only:
            out["codecs"] = bench_codecs(tmp, n_reader)
        if "bytes" in only:
            out["bytes"] = bench_bytes(tmp)

    print("\n== cascadekit datasets benchmark ==")
    if "overhead" in out:
        o = out["overhead"]
        print(f"encode {o['images']} images @ {o['resolution']} on {o['device']} ({o['dtype']}), batch {o['batch_size']}, "
              f"{o['num_workers']} workers")
        print(f"  model alone        {o['model_images_per_s']:10.1f} images/s")
        print(f"  end to end         {o['e2e_images_per_s']:10.1f} images/s   pipeline overhead {100 * o['overhead']:+.1f} % "
              f"(wall {o['e2e_s']:.1f} s vs {o['encode_s_in_run']:.1f} s inside the encoder; "
              f"vs the separate model run {100 * o['overhead_vs_separate_model_run']:+.1f} %)")
    for r in out.get("rss", []):
        print(f"peak RSS {r['images']:6d} images: main {r['peak_rss_mb']:7.1f} MB (after imports "
              f"{r['rss_after_imports_mb']:.1f}, growth {r['growth_mb']:+.1f}), worker {r['peak_worker_rss_mb']:.1f} MB, "
              f"{r['images'] / r['seconds']:.0f} images/s")
    if len(out.get("rss", [])) > 1:
        a, b = out["rss"][0], out["rss"][-1]
        print(f"peak RSS growth {a['images']} -> {b['images']} images: {b['growth_mb'] - a['growth_mb']:+.1f} MB "
              f"(main), {b['peak_worker_rss_mb'] - a['peak_worker_rss_mb']:+.1f} MB (decode worker)")
    rows = out.get("reader", []) + out.get("trainer", []) + out.get("codecs", [])
    for r in rows:
        size = f", {r['latents_bytes_per_sample']:.0f} B/sample" if "latents_bytes_per_sample" in r else ""
        print(f"{r['mode']:<46} workers {r['workers']}: {r['samples_per_s']:8.0f} samples/s, "
              f"{r['samples_per_cpu_s']:8.0f} per CPU-second{size}")
    tr = {(r["codec"], r["torch_threads"], r["read"]): r for r in out.get("trainer", [])}
    for (codec, nt, m), r in tr.items():
        if m == "read-ahead":
            sync = tr[(codec, nt, "synchronous")]
            print(f"trainer reader {codec}, {nt} torch thr: read-ahead / synchronous = "
                  f"{r['samples_per_s'] / sync['samples_per_s']:.2f}x samples/s, "
                  f"{r['samples_per_cpu_s'] / sync['samples_per_cpu_s']:.2f}x per CPU-second; busiest thread "
                  f"{r['samples_per_busiest_thread_cpu_s']:.0f} vs {sync['samples_per_busiest_thread_cpu_s']:.0f} "
                  "samples per its CPU-second")
    for r in out.get("trainstep", []):
        print(f"{r['mode']:<58}: step {1e3 * r['step_s_median']:7.1f} ms (median of {r['steps']}), "
              f"CPU {1e3 * r['cpu_s_per_step_median']:7.1f} ms/step")
    if "bytes" in out:
        b = out["bytes"]
        print(f"bytes/sample (16x24x24 fp16): latents {b['latents_bytes_per_sample']:.0f} (raw {b['raw_bytes_per_sample']}), "
              f"whole store {b['store_bytes_per_sample']:.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
