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

import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import torch
from tqdm.auto import tqdm

from cascadekit.codec import distributed as D
from cascadekit.codec.errors import CascadeKitError, InputError
from cascadekit.codec.images import DEFAULT_MAX_PIXELS
from cascadekit.codec.input_files import DEFAULT_MAX_INPUT_BYTES
from cascadekit.datasets import store as S
from cascadekit.datasets.buckets import assign_groups, group_hw
from cascadekit.datasets.controls import ControlMaker, parse_controls
from cascadekit.datasets.decode_workers import TaskDataset, load_task
from cascadekit.datasets.device_decode import DeviceImages, check_device_decode, settings_entry
from cascadekit.datasets.encode_loop import StageTimes, encode_item, make_source, timed_batches
from cascadekit.datasets.memory import release_free_memory
from cascadekit.datasets.preprocess import PreprocessConfig
from cascadekit.datasets.remote import is_url, store_path
from cascadekit.datasets.sources import PlanTable, Sample, plan_fingerprint, plan_inputs
from cascadekit.datasets.spill import IntLog
from cascadekit.datasets.store_create import check_output, prepare_store, store_settings
from cascadekit.datasets.tasks import Task, TaskList, make_tasks
from cascadekit.datasets.writer import ChunkWriter, RowBatch, WriterThread

# re-exported: the build's parts were split into buckets / tasks / decode_workers / memory / store_create
__all__ = ["DTYPES", "Encoder", "SPACES", "Summary", "Task", "TaskList", "assign_groups", "build_latent_dataset",
           "load_task", "make_tasks", "release_free_memory", "store_summary"]

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
    stage_seconds: dict = field(default_factory=dict)  # this rank's encode loop per stage (encode_loop.StageTimes)

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


# ------------------------------------------------------------------------------------ main side
def _check_arguments(codec, dtype: str, spaces: Sequence[str], chunk_rows: int, batch_size: int) -> tuple[str, ...]:
    """The build's settings checked before any work; returns ``spaces`` without duplicates."""
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    spaces = tuple(dict.fromkeys(spaces))
    bad = [s for s in spaces if s not in SPACES]
    if bad or not spaces or "semantic" not in spaces:
        raise InputError(f"spaces must include 'semantic' and may add 'stage_a'; got {list(spaces)}")
    if "stage_a" in spaces and not callable(getattr(codec, "encode_stage_a", None)):
        raise InputError("stage_a latents were requested but the encoder has no encode_stage_a")
    if chunk_rows < 1 or batch_size < 1:
        raise InputError("chunk_rows and batch_size must be >= 1")
    return spaces


def _plan(inputs, out: Path, tmp_dir) -> PlanTable:
    """The plan of ``inputs``: a ready :class:`PlanTable`, a list of samples, or inputs to walk (never ``out``)."""
    if isinstance(inputs, PlanTable):
        return inputs
    if inputs and all(isinstance(x, Sample) for x in inputs):
        return PlanTable(inputs)  # already planned (e.g. sources.samples_from_images)
    exclude = () if is_url(out) else (out,)  # an object store is never among the inputs
    return plan_inputs(inputs, tmp_dir=tmp_dir, exclude=exclude)  # InputError for missing inputs / empty corpus


def _encoder_device(codec) -> torch.device:
    dev = getattr(codec, "device", None)
    if dev is not None:
        return torch.device(dev)
    params = getattr(codec, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


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


# over 60 lines: the signature and the docstring (every option) make up most of it; the body is ~35 lines of steps
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
    controls: Sequence[str] | str = (),
    effnet_scales: Sequence[float] | str = (),
    device_decode: bool = False,
) -> Summary:
    """Encode ``inputs`` into the latent store ``out`` (resumable; safe to kill and rerun).

    Args:
        inputs: folders, tar shards / brace patterns / ``pipe:`` URLs, ``.jsonl``/``.csv`` manifests
            (or a ready list of :class:`~cascadekit.datasets.sources.Sample`).
        out: the store folder (``*.zarr``), or an fsspec URL (``s3://bucket/corpus.zarr``, see
            :mod:`cascadekit.datasets.remote`; credentials from the environment / fsspec config only).
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
        num_workers: DataLoader processes decoding images ahead (0: decode in the main process). With a CPU
            encoder whose threads use every core, any value > 0 decodes between encoder calls on one thread
            per encoder thread instead (a decode process would slow the encoder more than it saves;
            :func:`~.encode_loop.make_source`).
        chunk_rows: samples per chunk of every per-sample array (the unit of resume and ownership).
        overwrite: delete an existing store built with different settings instead of refusing.
        dist_info: rank/world (default: from torchrun's environment).
        tmp_dir: folder for the plan's anonymous temporary files (default: ``TMPDIR``). The plan (about
            60 bytes plus the key and paths per image) is kept there, not in memory, so memory use
            does not grow with the corpus; nothing is left there after the job, even a killed one.
        controls: ControlNet controls stored with the latents (``canny``, ``sr``, ``inpaint``; see
            :mod:`cascadekit.datasets.controls`), written in the same chunks, before ``status``.
        effnet_scales: downscale factors in (0, 1] whose EfficientNet latents are stored per sample in
            ``effnet_scales`` (Stage B's condition; :mod:`cascadekit.datasets.effnet_scales`), like a control.
        device_decode: decode baseline JPEGs on the encoder's device in batches and resize them there
            (nvJPEG on CUDA, :mod:`cascadekit.datasets.device_decode`); other files are decoded by the
            workers as usual. Recorded in the store (the resize is torch's, not PIL's).

    Returns:
        :class:`Summary` (on every rank; counts cover the whole store).
    """
    t0 = time.perf_counter()
    info = dist_info or D.from_env()
    out = store_path(out)
    spaces = _check_arguments(codec, dtype, spaces, chunk_rows, batch_size)
    controls = parse_controls(controls)
    maker = ControlMaker(controls, codec, dtype, effnet_scales) if controls or effnet_scales else None
    cfg = PreprocessConfig(resolution=resolution, min_size=min_size, max_pixels=max_pixels, buckets=buckets,
                           max_input_bytes=max_input_bytes)
    check_output(out)
    device = _encoder_device(codec)
    images = _device_images(device, cfg) if device_decode else None
    job = _Job(codec, device, cfg, dtype, "stage_a" in spaces, chunk_rows, batch_size, num_workers, maker, images)
    identity = codec.identity()
    times = StageTimes()

    plan = _plan(inputs, out, tmp_dir)
    groups: dict = {}
    try:
        groups = assign_groups(plan, cfg, tmp_dir)
        fingerprint = plan_fingerprint(plan)
        layouts = [S.GroupLayout(gp, len(idx), *_probe(codec, group_hw(gp, cfg), job.device, job.want_a))
                   for gp, idx in groups.items()]
        settings = store_settings(cfg, dtype, spaces, chunk_rows, min(batch_size, chunk_rows), identity, fingerprint,
                                  len(plan), controls, maker.scales if maker else ())
        if images is not None:  # only then: stores decoded by the workers resume as before
            settings["preprocess"] = {**settings["preprocess"], **settings_entry(device)}
        attrs = {"encoder": identity, "preprocess": cfg.to_dict(), "spaces": list(spaces)}
        specs = {gp: maker.specs(group_hw(gp, cfg)) for gp in groups} if maker else None
        store = _StorePlan(layouts, settings, attrs, fingerprint, overwrite, specs)
        nums = _encode_on_ranks(job, info, out, plan, groups, store, progress and info.is_main, times)
    finally:
        if plan is not inputs:  # ours: hand the temporary files' space back now
            plan.close()
        for idx in groups.values():
            if isinstance(idx, IntLog):
                idx.close()
    return _summary(out, nums, time.perf_counter() - t0, times)


@dataclass(frozen=True)
class _Job:
    """What every rank encodes with: the encoder and its device, preprocessing, storage and batching."""

    codec: Encoder
    device: torch.device
    cfg: PreprocessConfig
    dtype: str
    want_a: bool
    chunk_rows: int
    batch_size: int
    num_workers: int
    controls: ControlMaker | None = None
    device_images: DeviceImages | None = None  # device_decode: JPEGs decoded on the encoder's device


def _device_images(device: torch.device, cfg: PreprocessConfig) -> DeviceImages:
    """The device-side JPEG decoder of ``device_decode`` (checked before any work)."""
    check_device_decode(device)
    return DeviceImages(device, cfg)


@dataclass(frozen=True)
class _StorePlan:
    """The store a build writes: group layouts, the settings its bytes depend on, attributes, corpus hash."""

    layouts: list
    settings: dict
    attrs: dict
    fingerprint: str
    overwrite: bool
    controls: dict | None = None  # group path -> [ControlSpec] (encode --controls)


def _encode_on_ranks(job: _Job, info: D.DistInfo, out: Path, plan, groups: dict, store: _StorePlan,
                     show: bool, times: StageTimes) -> list[tuple[int, int, int]]:
    """Every rank: join the job, let rank 0 make the store ready, encode this rank's pending chunks,
    finalise (rank 0). Returns every rank's (encoded, skipped, already done) counts."""
    lock = None
    started = D.init(info, job.device)
    try:
        lock = _store_ready(info, out, store, job)
        root = S.open_store(out, mode="r+")
        statuses = {gp: S.StatusView(S.sample_group(root, gp)) for gp in groups}
        tasks, already = make_tasks(groups, statuses, job.chunk_rows, job.batch_size, info)
        encoded, skipped = _run(tasks, plan, groups, root, job, show, times)
        nums = D.all_gather_object((encoded, skipped, already), info)  # also a barrier
        work_done = sum(n[0] + n[1] for n in nums)
        if info.is_main and (work_done or not root.attrs.get("complete", False)):
            S.finalize_store(out)
        D.barrier(info)
        return nums
    finally:
        if lock is not None:
            lock.release()
        if started:
            D.shutdown()


def _store_ready(info: D.DistInfo, out: Path, store: _StorePlan, job: _Job):
    """Every rank: check all planned the same corpus; rank 0 takes the store's lock and creates or validates
    the store (others wait). Returns the lock rank 0 now holds (None elsewhere); raises InputError on every
    rank when the store cannot be used."""
    fps = D.all_gather_object(store.fingerprint, info)
    if len(set(fps)) != 1:
        raise InputError("ranks planned different corpora (inputs changed between ranks?); rerun with the same inputs everywhere")
    lock, msg = None, None
    if info.is_main:  # rank 0 holds the store's lock for the whole job (see docs/dataset_format.md)
        lock, msg = S.lock_store(out)
    try:
        if info.is_main and msg is None:
            msg = prepare_store(out, store.layouts, job.chunk_rows, job.dtype, store.settings, store.attrs,
                                store.overwrite, store.controls)
        msg = D.broadcast_object(msg, info)
        if msg:
            raise InputError(msg)
        D.barrier(info)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return lock


def _summary(out: Path, nums: list[tuple[int, int, int]], seconds: float, times: StageTimes) -> Summary:
    """:func:`store_summary` plus what this run did (``nums``: every rank's encoded, skipped, already done;
    ``times``: this rank's encode loop)."""
    summ = store_summary(out)
    summ.encoded_now = sum(n[0] for n in nums)
    summ.skipped_now = sum(n[1] for n in nums)
    summ.resumed_rows = sum(n[2] for n in nums)
    summ.seconds = seconds
    summ.images_per_s = summ.encoded_now / seconds if seconds > 0 else 0.0
    summ.stage_seconds = times.to_dict()
    return summ


def _run(tasks: TaskList, plan, groups: dict, root, job: _Job, show: bool, times: StageTimes) -> tuple[int, int]:
    """Encode ``tasks`` and write them (see :mod:`.encode_loop` for what overlaps). Returns (encoded,
    skipped) counts of this rank; ``times`` collects where the main thread's time went."""
    if not tasks:
        return 0, 0
    ds = TaskDataset(tasks, plan, groups, job.cfg, device_jpeg=job.device_images is not None)
    loader = make_source(ds, max(0, min(job.num_workers, len(tasks))), job.device)
    writer = WriterThread(ChunkWriter(root, job.chunk_rows, job.dtype, on_chunk=lambda *_: release_free_memory()),
                          max_queue=8)
    bar = tqdm(total=tasks.rows_total, unit="img", disable=not show, dynamic_ncols=True, desc="encode")
    encoded = skipped = 0
    try:
        with torch.inference_mode():
            for item in timed_batches(loader, times):
                batch = encode_item(item, job, times)
                with times.stage("write_wait"):
                    writer.put(batch)
                n_ok = int(batch.ok.sum())
                encoded += n_ok
                skipped += len(batch.ok) - n_ok
                bar.update(len(batch.ok))
                with times.stage("release_memory"):
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
