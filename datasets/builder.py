"""build_latent_dataset: an image corpus -> a resumable, distributed, bad-input-safe Zarr latent store.

Flow (every rank of a torchrun job runs the same code):

1. Check everything that can be checked before work starts: the inputs exist, the output is
   writable, the encoder runs on a probe batch (shapes), settings are valid.
2. Plan: the ordered list of samples (:mod:`.sources`), kept in anonymous temporary files (so memory
   does not grow with the corpus); with ``buckets`` each sample is assigned to the bucket of its
   header size. Row ``i`` of a group is the ``i``-th planned sample of it.
3. Rank 0 creates the store at final size (or checks that an existing one was made with the same
   settings and corpus, else refuses unless ``overwrite``); the other ranks wait.
4. Each rank takes a contiguous, chunk-aligned share of the row chunks, drops the chunks whose
   ``status`` says they are done (resume), and encodes the rest in batches that start at chunk
   boundaries (so a batch's contents never depend on where a run was interrupted: resumed
   results are bit-identical). DataLoader workers decode images; the main thread encodes; a
   writer thread compresses and writes whole chunks (data first, status last).
5. After a barrier, rank 0 computes per-channel statistics, writes the error tables, marks the
   store complete and consolidates the metadata.
"""
from __future__ import annotations

import functools
import io
import os
import time
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cascadekit.codec.errors import CascadeKitError, InputError
from cascadekit.codec.images import DEFAULT_MAX_PIXELS
from cascadekit.codec.input_files import DEFAULT_MAX_INPUT_BYTES, open_regular
from cascadekit.codec import distributed as D
from cascadekit.datasets import store as S
from cascadekit.datasets.preprocess import PreprocessConfig, load_and_prepare, target_size
from cascadekit.datasets.sources import PlanTable, Sample, SampleReader, plan_fingerprint, plan_inputs
from cascadekit.datasets.spill import IntLog
from cascadekit.datasets.writer import ChunkWriter, RowBatch, WriterThread

SPACES = ("semantic", "stage_a")
DTYPES = ("float16", "float32")


@runtime_checkable
class Encoder(Protocol):
    """What the builder needs from an encoder (``cascadekit.codec.Codec`` satisfies it).

    ``encode``: images (B,3,H,W) float in [0,1] on the encoder's device -> latents (B,16,H/32,W/32).
    ``identity``: a JSON-able dict naming the weights (checkpoint SHA-256s), stored in the store.
    Optional ``encode_stage_a``: images -> Stage A latents (B,4,H/4,W/4). Optional ``device``.
    """

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def identity(self) -> dict: ...


@dataclass
class Summary:
    """What a build did. ``skipped`` counts rows by reason over the whole store."""

    store: str
    rows: int
    ok: int
    skipped: dict = field(default_factory=dict)
    missing_captions: int = 0
    encoded_now: int = 0
    skipped_now: int = 0
    resumed_rows: int = 0
    seconds: float = 0.0
    images_per_s: float = 0.0
    groups: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        lines = [
            f"store            {self.store}",
            f"rows             {self.rows} in {len(self.groups)} group(s)",
            f"encoded          {self.ok}" + (f"  ({self.encoded_now} in this run, {self.resumed_rows} rows were already done)" if self.resumed_rows else ""),
            f"skipped          {sum(self.skipped.values())}" + "".join(f"\n  {r:<20}{n}" for r, n in sorted(self.skipped.items())),
            f"missing captions {self.missing_captions}",
            f"time             {self.seconds:.1f} s ({self.images_per_s:.1f} images/s)",
        ]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ assignment
def _header_size(data) -> tuple[int, int] | None:
    """(width, height) after EXIF rotation from the header only, or None if it cannot be read."""
    from PIL import Image

    try:
        with (open_regular(data) if isinstance(data, str) else io.BytesIO(data)) as f, Image.open(f) as im:
            w, h = im.size
            try:
                if im.getexif().get(0x0112) in (5, 6, 7, 8):
                    w, h = h, w
            except Exception:  # noqa: BLE001 - corrupt EXIF: stored orientation
                pass
            return w, h
    except Exception:  # noqa: BLE001 - the sample will fail (with its reason) when it is loaded
        return None


def assign_groups(plan: Sequence[Sample], cfg: PreprocessConfig, tmp_dir: str | os.PathLike | None = None) -> dict:
    """Map group path -> the plan indices of its rows, in plan order.

    Without buckets everything is the root group and its index list is ``range(len(plan))``. With
    buckets each group's list is an int64 column (:class:`~.spill.IntLog`, on disk when the plan is),
    filled while reading every image header once.
    """
    if not cfg.buckets:
        return {"": range(len(plan))}
    on_disk = bool(getattr(plan, "on_disk", False))
    groups: dict[str, IntLog] = {}
    reader = SampleReader(cfg.max_input_bytes)
    square = f"buckets/{cfg.resolution}x{cfg.resolution}"
    try:
        for i, s in enumerate(plan):
            size = None
            if s.error is None:
                try:
                    src, _ = reader.fetch(s)
                    size = _header_size(src)
                except CascadeKitError:
                    size = None
            if size is None:  # unreadable: goes to the square bucket and fails there with its reason
                gp = square
            else:
                h, w = target_size(size[0], size[1], cfg)
                gp = f"buckets/{h}x{w}"
            col = groups.get(gp)
            if col is None:
                col = groups[gp] = IntLog(on_disk, tmp_dir)
            col.append(i)
    finally:
        reader.close()
    for col in groups.values():
        col.flush()
    return dict(sorted(groups.items()))


def _group_hw(gp: str, cfg: PreprocessConfig) -> tuple[int, int]:
    if not gp:
        return cfg.resolution, cfg.resolution
    h, w = gp.rsplit("/", 1)[1].split("x")
    return int(h), int(w)


# ---------------------------------------------------------------------------------- worker side
@dataclass(frozen=True, slots=True)
class Task:
    """One encoder batch: rows ``start..stop-1`` of group ``group``.

    Holds no samples: they are looked up in the plan when the batch is loaded (:meth:`samples`), so
    the pending work of a run costs a few dozen bytes per batch, not a Python object per image.
    """

    group: str
    start: int
    stop: int

    @property
    def rows(self) -> tuple[int, ...]:
        return tuple(range(self.start, self.stop))

    def samples(self, plan: Sequence[Sample], groups: dict) -> list[Sample]:
        """The planned samples of this batch (``plan[groups[group][row]]`` per row)."""
        idx = groups[self.group]
        if isinstance(idx, range) and idx.step == 1:  # contiguous plan rows: one read
            return plan[idx[self.start]: idx[self.start] + self.stop - self.start]
        return [plan[int(i)] for i in idx[self.start:self.stop]]


class TaskList(Sequence):
    """A rank's pending tasks, made on demand from its pending chunks (a few bytes per chunk).

    ``tasks[k]`` is the ``k``-th :class:`Task`: chunks in order, each cut into batches of
    ``batch_size`` rows that start at the chunk's first row.
    """

    def __init__(self, groups: Sequence[str], gid, first, stop, batch_size: int):
        # pending chunk j: rows first[j]..stop[j]-1 of group groups[gid[j]]
        self._groups = list(groups)
        self._gid = np.asarray(gid, np.int32)
        self._a = np.asarray(first, np.int64)
        self._b = np.asarray(stop, np.int64)
        self.batch_size = bs = int(batch_size)
        self._first = np.concatenate([[0], np.cumsum((self._b - self._a + bs - 1) // bs)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._first[-1])

    @property
    def rows_total(self) -> int:
        """Rows covered by all tasks."""
        return int((self._b - self._a).sum())

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        n = len(self)
        k = int(k)
        if k < 0:
            k += n
        if not 0 <= k < n:
            raise IndexError(f"task {k} out of range (0..{n - 1})")
        j = int(np.searchsorted(self._first, k, side="right")) - 1
        s = int(self._a[j]) + (k - int(self._first[j])) * self.batch_size
        return Task(self._groups[self._gid[j]], s, min(s + self.batch_size, int(self._b[j])))


class _TaskDataset(IterableDataset):
    """Yields one decoded batch per task; DataLoader workers take contiguous runs of tasks."""

    def __init__(self, tasks: Sequence[Task], plan: Sequence[Sample], groups: dict, cfg: PreprocessConfig):
        self.tasks = tasks
        self.plan = plan
        self.groups = groups
        self.cfg = cfg

    def __iter__(self):
        info = get_worker_info()
        n = len(self.tasks)
        lo, hi = 0, n
        if info is not None:
            lo, hi = n * info.id // info.num_workers, n * (info.id + 1) // info.num_workers
        reader = SampleReader(self.cfg.max_input_bytes)
        try:
            for k in range(lo, hi):
                t = self.tasks[k]
                yield load_task(t, t.samples(self.plan, self.groups), self.cfg, reader)
        finally:
            reader.close()


def load_task(t: Task, samples: Sequence[Sample], cfg: PreprocessConfig, reader: SampleReader) -> dict:
    """Decode a task's images (``samples``: its planned samples, row order). Bad samples become
    ``ok=False`` with a reason; never raises for them."""
    h, w = (cfg.resolution, cfg.resolution) if not t.group else _group_hw(t.group, cfg)
    n = len(t.rows)
    ok = np.zeros(n, bool)
    reasons, captions = [""] * n, [""] * n
    has_caption = np.zeros(n, bool)
    orig = np.zeros((n, 2), np.int32)
    images = []
    for i, s in enumerate(samples):
        if s.error is not None:
            reasons[i] = s.error
            continue
        try:
            src, cap = reader.fetch(s)
            if cap is not None:
                captions[i], has_caption[i] = cap, True
            arr, (oh, ow) = load_and_prepare(src, cfg, s.source)
            if arr.shape[1:] != (h, w):
                raise InputError(f"{s.source}: prepared to {arr.shape[1:]}, expected {(h, w)}")
            orig[i] = (oh, ow)
            images.append(arr)
            ok[i] = True
        except CascadeKitError as e:
            reasons[i] = getattr(e, "reason", None) or "unreadable"
        except Exception:  # noqa: BLE001 - whatever a broken file does, the job goes on
            reasons[i] = "unreadable"
    imgs = torch.from_numpy(np.stack(images)) if images else torch.zeros((0, 3, h, w), dtype=torch.uint8)
    return {
        "group": t.group,
        "rows": torch.tensor(t.rows, dtype=torch.int64),
        "ok": torch.from_numpy(ok),
        "images": imgs,  # (n_ok, 3, H, W) uint8
        "keys": [s.key for s in samples],
        "sources": [s.source for s in samples],
        "captions": captions,
        "has_caption": torch.from_numpy(has_caption),
        "orig_size": torch.from_numpy(orig),
        "reasons": reasons,
    }


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Images arrive from DataLoader workers in shared memory (mmap, outside malloc) while the main
    process allocates and frees same-sized float copies, latents and chunk buffers on several threads;
    glibc's dynamic mmap threshold then serves those from its arenas and keeps the freed pages, so
    RSS crept up with the corpus size (1k -> 10k images: +31 -> +90 MB). The builder trims after every
    written chunk (writer thread) and after every encoded batch (main thread; between chunk trims the
    peaks still grew with the number of chunks: +29 -> +43 MB); it releases only free memory.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim`` through ctypes, or None (musl, macOS, Windows)."""
    if os.name != "posix":
        return None
    try:
        import ctypes
        import ctypes.util

        fn = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "malloc_trim", None)
    except OSError:
        return None
    if fn is not None:
        fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def _collate_identity(x):
    return x


# ------------------------------------------------------------------------------------ main side
def _encoder_device(codec) -> torch.device:
    dev = getattr(codec, "device", None)
    if dev is not None:
        return torch.device(dev)
    params = getattr(codec, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


def _check_output(out: Path) -> None:
    parent = out.parent if not out.exists() else out
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write the store {out}: {parent} is not writable; choose another --out")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is a file, not a store folder; choose another --out")


@torch.no_grad()
def _probe(codec, hw: tuple[int, int], device, stage_a: bool):
    x = torch.full((1, 3, *hw), 0.5, device=device)
    try:
        lat = codec.encode(x)
        sa = codec.encode_stage_a(x) if stage_a else None
    except CascadeKitError:
        raise
    except Exception as e:  # noqa: BLE001 - unusable weights / device: report before any work
        raise InputError(f"the encoder cannot encode a {hw[0]}x{hw[1]} test image ({type(e).__name__}: {e})") from e
    return tuple(lat.shape[1:]), (tuple(sa.shape[1:]) if sa is not None else None)


def _settings(cfg, dtype, spaces, chunk_rows, batch_rows, identity, fingerprint, n) -> dict:
    """Everything the stored bytes depend on. ``batch_rows`` (the effective encoder batch) is part of
    it: an encoder's kernels may round differently for other batch sizes (cuDNN/oneDNN pick
    algorithms by shape), so a resume with another batch could change the latents' last bits."""
    return {
        "preprocess": cfg.to_dict(),
        "dtype": dtype,
        "spaces": list(spaces),
        "chunk_rows": chunk_rows,
        "batch_size": batch_rows,
        "encoder": identity,
        "corpus": {"rows": n, "sha256": fingerprint},
    }


def _diff(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: store has {a!r}, this run has {b!r}"]


def _prepare_store(out: Path, layouts, chunk_rows, dtype, settings, attrs, overwrite) -> str | None:
    """Rank 0: create, or validate for resume. Returns an error message instead of raising (broadcast)."""
    try:
        if out.exists() and any(out.iterdir()):
            if not S.is_store(out):
                return f"{out} exists and is not a cascadekit latent store; choose another --out"
            root = S.open_store(out, mode="r")
            if root.attrs.get("initializing", False):  # killed while being created: holds no data
                S.remove_store(out)
                S.create_store(out, layouts, chunk_rows=chunk_rows, dtype=dtype, attrs={**attrs, "settings": settings})
                return None
            old = root.attrs.get("settings")
            diffs = _diff(old, settings) if old is not None else ["settings: missing"]
            if diffs and not overwrite:
                return (f"{out} was built with different settings:\n  " + "\n  ".join(diffs[:12])
                        + "\nRerun with the same settings to resume, or pass --overwrite to rebuild from scratch.")
            if not diffs:
                for p in out.rglob("*.partial"):  # temp files of writes cut off by a kill
                    p.unlink(missing_ok=True)
                return None
            S.remove_store(out)
        elif out.exists():
            out.rmdir()
        S.create_store(out, layouts, chunk_rows=chunk_rows, dtype=dtype, attrs={**attrs, "settings": settings})
        return None
    except CascadeKitError as e:
        return str(e)
    except OSError as e:
        return f"cannot create the store {out}: {e}"


def make_tasks(groups: dict, statuses: dict, chunk_rows: int, batch_size: int, info: D.DistInfo,
               block_chunks: int = 64) -> tuple[TaskList, int]:
    """This rank's pending tasks (chunk-aligned batches) and the number of its rows already done.

    ``statuses`` maps each group to its per-row status, anything sliceable (a numpy array or
    :class:`~.store.StatusView`); it is read ``block_chunks`` chunks at a time. Chunks are numbered
    across groups in order and split between ranks with :func:`~.distributed.share`.
    """
    sizes = [(gp, len(idx), (len(idx) + chunk_rows - 1) // chunk_rows) for gp, idx in groups.items()]
    mine = D.share(sum(nc for _, _, nc in sizes), info)
    bs = max(1, min(batch_size, chunk_rows))
    gid, first, stop = array("i"), array("q"), array("q")
    done, base = 0, 0
    for g, (gp, n, nc) in enumerate(sizes):
        lo, hi = max(mine.start - base, 0), min(mine.stop - base, nc)  # my chunks of this group
        base += nc
        for c0 in range(lo, hi, block_chunks):
            c1 = min(c0 + block_chunks, hi)
            st = np.asarray(statuses[gp][c0 * chunk_rows: min(c1 * chunk_rows, n)])
            for c in range(c0, c1):
                a, b = c * chunk_rows, min((c + 1) * chunk_rows, n)
                if (st[a - c0 * chunk_rows: b - c0 * chunk_rows] != S.STATUS_PENDING).all():
                    done += b - a
                    continue
                gid.append(g)
                first.append(a)
                stop.append(b)
    return TaskList([gp for gp, _, _ in sizes], gid, first, stop, bs), done


def build_latent_dataset(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    codec: Encoder,
    *,
    resolution: int = 768,
    dtype: str = "float16",
    spaces: Sequence[str] = ("semantic",),
    buckets: bool = False,
    min_size: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES,
    batch_size: int = 32,
    num_workers: int = 2,
    chunk_rows: int = 256,
    overwrite: bool = False,
    progress: bool = True,
    dist_info: D.DistInfo | None = None,
    tmp_dir: str | os.PathLike | None = None,
) -> Summary:
    """Encode ``inputs`` into the latent store ``out`` (resumable; safe to kill and rerun).

    Args:
        inputs: folders, tar shards / brace patterns / ``pipe:`` URLs, ``.jsonl``/``.csv`` manifests
            (or a ready list of :class:`~cascadekit.datasets.sources.Sample`).
        out: the store folder (``*.zarr``).
        codec: an :class:`Encoder` (e.g. ``cascadekit.codec.Codec``) already on its device.
        resolution: crop side in pixels (multiple of 32). The latent size is whatever the encoder makes
            of that crop (a ``Codec`` first resizes to its ``encoder_resolution``: crop 1024 with
            encoder_resolution 768 gives 16x24x24 latents and 4x256x256 Stage A latents).
        dtype: ``float16`` (overflow-checked) or ``float32`` storage.
        spaces: ``("semantic",)`` and/or ``"stage_a"`` (Stage A latents (4, H/4, W/4)).
        buckets: aspect-ratio buckets (official multi-aspect list), one group per bucket.
        min_size: skip images whose shorter side is below this (reason ``too_small``).
        max_input_bytes: most bytes read from one file or tar member (reason ``too_large`` above it).
        batch_size: encoder batch (capped at ``chunk_rows``; batches start at chunk boundaries). Recorded
            in the store: resuming with another batch size is refused (the latents' last bits may
            depend on it) unless ``overwrite``.
        num_workers: DataLoader processes decoding images (0: decode in the main process).
        chunk_rows: samples per chunk of every per-sample array (the unit of resume and ownership).
        overwrite: delete an existing store built with different settings instead of refusing.
        dist_info: rank/world (default: from torchrun's environment).
        tmp_dir: folder for the plan's anonymous temporary files (default: ``TMPDIR``). The plan (about
            60 bytes plus the key and paths per image) is kept there, not in memory, so memory use
            does not grow with the corpus; nothing is left there after the job, even a killed one.

    Returns:
        :class:`Summary` (on every rank; counts cover the whole store).
    """
    t0 = time.perf_counter()
    info = dist_info or D.from_env()
    out = Path(out)
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    spaces = tuple(dict.fromkeys(spaces))
    bad = [s for s in spaces if s not in SPACES]
    if bad or not spaces or "semantic" not in spaces:
        raise InputError(f"spaces must include 'semantic' and may add 'stage_a'; got {list(spaces)}")
    want_a = "stage_a" in spaces
    if want_a and not callable(getattr(codec, "encode_stage_a", None)):
        raise InputError("stage_a latents were requested but the encoder has no encode_stage_a")
    if chunk_rows < 1 or batch_size < 1:
        raise InputError("chunk_rows and batch_size must be >= 1")
    cfg = PreprocessConfig(resolution=resolution, min_size=min_size, max_pixels=max_pixels, buckets=buckets,
                           max_input_bytes=max_input_bytes)
    _check_output(out)
    device = _encoder_device(codec)
    identity = codec.identity()

    if isinstance(inputs, PlanTable):
        plan = inputs
    elif inputs and all(isinstance(x, Sample) for x in inputs):
        plan = PlanTable(inputs)  # already planned (e.g. sources.samples_from_images)
    else:
        plan = plan_inputs(inputs, tmp_dir=tmp_dir, exclude=(out,))  # InputError for missing inputs / empty corpus
    groups = assign_groups(plan, cfg, tmp_dir)
    fingerprint = plan_fingerprint(plan)
    shapes = {gp: _probe(codec, _group_hw(gp, cfg), device, want_a) for gp in groups}
    layouts = [S.GroupLayout(gp, len(idx), *shapes[gp]) for gp, idx in groups.items()]
    settings = _settings(cfg, dtype, spaces, chunk_rows, min(batch_size, chunk_rows), identity, fingerprint, len(plan))

    started = D.init(info, device)
    try:
        fps = D.all_gather_object(fingerprint, info)
        if len(set(fps)) != 1:
            raise InputError("ranks planned different corpora (inputs changed between ranks?); rerun with the same inputs everywhere")
        msg = None
        if info.is_main:
            msg = _prepare_store(out, layouts, chunk_rows, dtype, settings,
                                 {"encoder": identity, "preprocess": cfg.to_dict(), "spaces": list(spaces)}, overwrite)
        msg = D.broadcast_object(msg, info)
        if msg:
            raise InputError(msg)
        D.barrier(info)

        root = S.open_store(out, mode="r+")
        statuses = {gp: S.StatusView(S.sample_group(root, gp)) for gp in groups}
        tasks, already = make_tasks(groups, statuses, chunk_rows, batch_size, info)
        encoded, skipped = _run(tasks, plan, groups, root, codec, device, cfg, chunk_rows, dtype, want_a, batch_size,
                                num_workers, progress and info.is_main)

        nums = D.all_gather_object((encoded, skipped, already), info)  # also a barrier
        work_done = sum(n[0] + n[1] for n in nums)
        if info.is_main and (work_done or not root.attrs.get("complete", False)):
            S.finalize_store(out)
        D.barrier(info)
    finally:
        if started:
            D.shutdown()
        if plan is not inputs:  # ours: hand the temporary files' space back now
            plan.close()
        for idx in groups.values():
            if isinstance(idx, IntLog):
                idx.close()
    seconds = time.perf_counter() - t0
    summ = store_summary(out)
    summ.encoded_now = sum(n[0] for n in nums)
    summ.skipped_now = sum(n[1] for n in nums)
    summ.resumed_rows = sum(n[2] for n in nums)
    summ.seconds = seconds
    summ.images_per_s = summ.encoded_now / seconds if seconds > 0 else 0.0
    return summ


def _run(tasks, plan, groups, root, codec, device, cfg, chunk_rows, dtype, want_a, batch_size, num_workers, show) -> tuple[int, int]:
    """Encode ``tasks`` and write them. Returns (encoded, skipped) counts of this rank."""
    if not tasks:
        return 0, 0
    from tqdm.auto import tqdm

    ds = _TaskDataset(tasks, plan, groups, cfg)
    workers = max(0, min(num_workers, len(tasks)))
    loader = DataLoader(ds, batch_size=None, num_workers=workers, collate_fn=_collate_identity,
                        pin_memory=device.type == "cuda", prefetch_factor=2 if workers else None,
                        persistent_workers=False)
    writer = WriterThread(ChunkWriter(root, chunk_rows, dtype, on_chunk=lambda *_: release_free_memory()), max_queue=8)
    total = tasks.rows_total
    bar = tqdm(total=total, unit="img", disable=not show, dynamic_ncols=True, desc="encode")
    encoded = skipped = 0
    try:
        with torch.inference_mode():
            for item in loader:
                ok = item["ok"].numpy()
                lat = sa = None
                if ok.any():
                    x = item["images"].to(device, non_blocking=True).float().div_(255.0)
                    lat = codec.encode(x).float().cpu().numpy()
                    if want_a:
                        sa = codec.encode_stage_a(x).float().cpu().numpy()
                writer.put(RowBatch(
                    group=item["group"], rows=item["rows"].numpy(), ok=ok, keys=item["keys"],
                    captions=item["captions"], sources=item["sources"], orig_size=item["orig_size"].numpy(),
                    reasons=item["reasons"], latents=lat, stage_a=sa,
                ))
                n_ok = int(ok.sum())
                encoded += n_ok
                skipped += len(ok) - n_ok
                bar.update(len(ok))
                release_free_memory()
    finally:
        bar.close()
        writer.close()
    return encoded, skipped


def store_summary(out) -> Summary:
    """Counts of a store as it is on disk (works on complete and partial stores; reads chunk by chunk)."""
    root = S.open_store(out)
    rows = ok = missing = 0
    reasons: Counter = Counter()
    for gp in S.group_paths(root):
        cnt = S.count_group(S.sample_group(root, gp))
        rows, ok, missing = rows + cnt["rows"], ok + cnt["ok"], missing + cnt["missing_captions"]
        reasons.update(cnt["reasons"])
    return Summary(store=str(out), rows=rows, ok=ok, skipped=dict(reasons), missing_captions=missing,
                   groups=S.group_paths(root))
