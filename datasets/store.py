"""The latent store: a Zarr v3 group with one row per planned sample (the format is in docs/dataset_format.md).

Design rules (zarr-python 3 loses data on concurrent resize/append and on two writers in one chunk):

* every array is created at its final size before any sample is encoded;
* all per-sample arrays share the row chunking ``chunk_rows``; a writer owns whole row chunks;
* ``status`` is written last for a chunk, so a reader that keeps rows with ``status == 1`` only ever
  sees complete samples; zarr's local store writes each chunk file atomically (temp + rename);
* metadata is consolidated once, after the last chunk, by rank 0 (:func:`finalize_store`).
"""
from __future__ import annotations

import datetime as _dt
import os
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np

from cascadekit.codec.errors import InputError
from cascadekit.datasets import integrity
from cascadekit.datasets.remote import RemotePath, rmtree, store_label, store_lock, store_path, zarr_store

FORMAT_NAME = "cascadekit.latent-dataset"
FORMAT_VERSION = 2
#: Versions this code reads. Version 1 (before dimension names were made consistent and chunks got a
#: crc32c checksum) reads unchanged; only its damaged chunks are found by failed decoding instead of checksums.
READABLE_VERSIONS = (1, 2)
LOCK_NAME = ".lock"  # cascadekit.codec.fsio.AdvisoryLock's file inside the store folder

#: Zarr dimension names per array, consistent across a store (version 2): ``xarray.open_zarr`` opens any group.
DIMENSIONS = {
    "latents": ("sample", "latent_channel", "latent_y", "latent_x"),
    "stage_a": ("sample", "stage_a_channel", "stage_a_y", "stage_a_x"),
    "orig_size": ("sample", "hw"),
    "clip_text": ("sample", "text_token", "text_channel"),
    "clip_text_pooled": ("sample", "pooled_token", "pooled_channel"),
    "control_canny": ("sample", "canny_y", "canny_x"),
    "control_sr": ("sample", "sr_channel", "sr_y", "sr_x"),
    "control_inpaint": ("sample", "pixel_channel", "pixel_y", "pixel_x"),
    "effnet_scales": ("sample", "scale_slot", "scale_channel", "scale_y", "scale_x"),
}
#: Version 1 reused ``channel``/``y``/``x`` with different sizes (xarray refuses such a store).
DIMENSIONS_V1 = {
    "latents": ("sample", "channel", "y", "x"),
    "stage_a": ("sample", "channel", "y", "x"),
    "orig_size": ("sample", "hw"),
    "clip_text": ("sample", "token", "channel"),
    "clip_text_pooled": ("sample", "one", "channel"),
}

STATUS_PENDING, STATUS_OK, STATUS_SKIPPED = 0, 1, 2

#: Per-row arrays every sample group has (besides ``latents`` and the optional ``stage_a``).
ROW_ARRAYS = ("keys", "captions", "source", "orig_size", "skip_reason", "status")
ZSTD_LEVEL = 3
#: blosc compressor and level of floating-point arrays (:func:`compressors_for`)
BLOSC_CNAME, BLOSC_LEVEL = "lz4", 5


def _zarr():
    import zarr  # lazy: importing this module (CLI start-up, format constants) does not load zarr

    warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
    # the store's lock file (LOCK_NAME) is not a zarr node; zarr says so whenever it lists a group
    warnings.filterwarnings("ignore", message=r".*\.lock is not recognized as a component of a Zarr hierarchy")
    return zarr


def consolidate(path) -> None:
    """Consolidate the metadata of the store at ``path`` (quietly: it is not yet in the v3 spec)."""
    zarr = _zarr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(zarr_store(store_path(path)))


def compressors_for(dtype) -> tuple:
    """The compressors of a new chunked array of ``dtype`` (numpy dtype, its name, or ``str``): the one place
    that decides what cascadekit writes (docs/dataset_format.md, "Chunking, compression, checksums").

    * floating point (latents, Stage A, text / image embeddings, ``control_sr``, ``effnet_scales``):
      blosc lz4 level ``BLOSC_LEVEL`` with bitshuffle (``typesize`` = the item size): within 0.4 % of zstd-3
      or smaller on such data, decoded 2.5-3.7x faster per CPU-second, and blosc releases the GIL while decoding;
    * everything else (uint8 pixels and edges, integer, string, status and error-table arrays): zstd level
      ``ZSTD_LEVEL`` (blosc lz4 stores pixels ~28 % larger).

    Both end with a crc32c checksum of the compressed chunk. Arrays keep the codec they were created with:
    a store written before (zstd everywhere) resumes, and is verified and read, unchanged.
    """
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec  # lazy, as zarr is everywhere here (see _zarr)

    dt = np.dtype(dtype)
    if dt.kind == "f":
        return (BloscCodec(cname=BLOSC_CNAME, clevel=BLOSC_LEVEL, shuffle="bitshuffle", typesize=dt.itemsize),
                Crc32cCodec())
    return (ZstdCodec(level=ZSTD_LEVEL), Crc32cCodec())


def dimension_names(name: str, version: int = FORMAT_VERSION) -> tuple[str, ...]:
    """Zarr dimension names of array ``name`` in a store of format ``version`` (per-row arrays: ``("sample",)``)."""
    return (DIMENSIONS if version >= 2 else DIMENSIONS_V1).get(name, ("sample",))


def writable(arr):
    """``arr`` configured to write every chunk, also one equal to the fill value (zarr skips those by default),
    so that a chunk file exists behind every written row and a missing one means lost data."""
    return arr.with_config({"write_empty_chunks": True})


def create_row_array(g, name: str, shape, chunks, dtype, fill_value, version: int = FORMAT_VERSION, **kw):
    """One per-row array of a sample group (checksummed chunks, :func:`compressors_for`; the store's dimension
    names)."""
    return g.create_array(name, shape=shape, chunks=chunks, dtype=dtype, compressors=compressors_for(dtype),
                          fill_value=fill_value,
                          dimension_names=dimension_names(name, version), config={"write_empty_chunks": True}, **kw)


def tool_version() -> str:
    try:
        from importlib.metadata import version

        return version("cascadekit")
    except Exception:  # noqa: BLE001 - running from a source tree without install
        return "unknown"


@dataclass(frozen=True)
class GroupLayout:
    """Shape of one sample group: ``n`` rows of latents ``latent_shape`` (C,h,w), optional Stage A."""

    path: str  # "" for the root group, "buckets/<H>x<W>" for a bucket
    n: int
    latent_shape: tuple[int, int, int]
    stage_a_shape: tuple[int, int, int] | None = None


def stage_a_chunk_rows(chunk_rows: int, stage_a_shape) -> int:
    """Rows per Stage A chunk: the largest divisor of ``chunk_rows`` keeping a chunk <= ~8 MiB."""
    per = int(np.prod(stage_a_shape)) * 2
    best = 1
    for d in range(1, chunk_rows + 1):
        if chunk_rows % d == 0 and d * per <= 8 << 20:
            best = d
    return best


def create_group_arrays(root, layout: GroupLayout, chunk_rows: int, dtype: str):
    """Create all per-row arrays of one sample group at their final size (fill: pending/empty)."""
    g = root.require_group(layout.path) if layout.path else root
    n = layout.n
    create_row_array(g, "latents", (n, *layout.latent_shape), (chunk_rows, *layout.latent_shape), dtype, 0)
    if layout.stage_a_shape is not None:
        ca = stage_a_chunk_rows(chunk_rows, layout.stage_a_shape)
        create_row_array(g, "stage_a", (n, *layout.stage_a_shape), (ca, *layout.stage_a_shape), dtype, 0)
    for name in ("keys", "captions", "source", "skip_reason"):
        create_row_array(g, name, (n,), (chunk_rows,), str, "")
    create_row_array(g, "orig_size", (n, 2), (chunk_rows, 2), "int32", 0)
    create_row_array(g, "status", (n,), (chunk_rows,), "uint8", STATUS_PENDING)
    g.attrs.update({"n": n, "latent_shape": list(layout.latent_shape),
                    "stage_a_shape": list(layout.stage_a_shape) if layout.stage_a_shape else None})
    return g


def is_store(path: str | os.PathLike) -> bool:
    p = store_path(path) / "zarr.json"
    if not p.is_file():
        return False
    try:
        import json

        meta = json.loads(p.read_text())
    except (OSError, ValueError):
        return False
    return meta.get("attributes", {}).get("format") == FORMAT_NAME


def has_content(path: str | os.PathLike) -> bool:
    """Whether folder (or object prefix) ``path`` holds anything besides the store's lock file."""
    p = store_path(path)
    return p.is_dir() and any(e.name != LOCK_NAME for e in p.iterdir())


def remove_store(path: str | os.PathLike) -> None:
    """Delete an existing store's contents (only if it is a cascadekit store, or an empty folder).

    The folder and its lock file stay: a process holding the store's lock keeps holding it.
    """
    p = store_path(path)
    if not p.exists():
        return
    if is_store(p):
        for e in p.iterdir():
            if e.name != LOCK_NAME:
                rmtree(e) if e.is_dir() and not e.is_symlink() else e.unlink()
    elif p.is_dir() and not has_content(p):
        return
    else:
        raise InputError(f"{p} exists and is not a cascadekit latent store; refusing to delete it. Choose another --out.")


def lock_store(path: str | os.PathLike):
    """Take the advisory lock of the store at ``path`` (the folder is created if needed).

    Returns ``(lock, None)``, or ``(None, message)`` when another process holds it (the message names the
    holder) or the folder cannot be made: callers of distributed jobs broadcast the message instead of raising
    on one rank. Release with ``lock.release()``.
    """
    from cascadekit.codec.errors import CascadeKitError
    from cascadekit.codec.fsio import AdvisoryLock, describe_os_error

    p = store_path(path)
    if has_content(p) and not is_store(p):  # never leave a lock file in someone else's folder
        return None, f"{p} exists and is not a cascadekit latent store; choose another --out"
    if isinstance(p, RemotePath):  # no flock on object storage (datasets/remote.py): one writer at a time
        return store_lock(p).acquire(), None
    try:
        p.mkdir(parents=True, exist_ok=True)
        return AdvisoryLock(p, "latent store").acquire(), None
    except CascadeKitError as e:
        return None, str(e)
    except OSError as e:
        return None, describe_os_error(e, p)


def create_store(path, layouts: list[GroupLayout], *, chunk_rows: int, dtype: str, attrs: dict):
    """Create a new store at ``path`` with every group and array at final size."""
    zarr = _zarr()
    # mark the store as ours and unfinished first: a run killed while creating arrays leaves a store
    # that the next run recognises and recreates (it holds no data yet)
    if has_content(path):
        raise InputError(f"{path} already holds files; refusing to create a latent store over them")
    root = zarr.open_group(zarr_store(store_path(path)), mode="a", zarr_format=3,
                           attributes={"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "initializing": True})
    for lay in layouts:
        create_group_arrays(root, lay, chunk_rows, dtype)
    base = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "tool_version": tool_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "chunk_rows": chunk_rows,
        "dtype": dtype,
        "groups": [lay.path for lay in layouts],
        "complete": False,
        "initializing": False,
    }
    root.attrs.update({**base, **attrs})
    return root


def open_store(path, mode: str = "r"):
    """Open a store (read-only by default) as a zarr group.

    Raises :class:`InputError` if it is not a cascadekit store, has an unknown ``format_version``, or a sample
    group lacks ``status`` / ``latents`` (a damaged store, not a ``KeyError``).
    """
    zarr = _zarr()
    if not is_store(path):
        raise InputError(f"{path} is not a cascadekit latent store (no zarr.json with format={FORMAT_NAME!r})")
    try:
        root = zarr.open_group(zarr_store(store_path(path), read_only=mode == "r"), mode=mode, use_consolidated=False)
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{path}: cannot open the latent store ({e})") from None
    ver = root.attrs.get("format_version")
    if ver not in READABLE_VERSIONS:
        raise InputError(f"{path}: store format version {ver} is not supported (this cascadekit reads versions "
                         f"{', '.join(map(str, READABLE_VERSIONS))}); rebuild it with `cascadekit encode --overwrite`")
    if not root.attrs.get("initializing", False):
        for gp in root.attrs.get("groups", [""]):
            _require_arrays(path, root, gp)
    return root


def _require_arrays(path, root, gp: str) -> None:
    where = f"{path}/{gp}" if gp else str(path)
    try:
        g = root[gp] if gp else root
        names = set(g.array_keys())
    except (KeyError, OSError, ValueError):
        raise InputError(f"{where}: sample group missing or unreadable; the store is damaged (delete {path} and "
                         "run `cascadekit encode` again)") from None
    lost = [a for a in ("status", "latents") if a not in names]
    if lost:
        raise InputError(f"{where}: the {' and '.join(lost)} array{'s are' if len(lost) > 1 else ' is'} missing; the "
                         f"store is damaged (delete {path} and run `cascadekit encode` again)")


def group_paths(root) -> list[str]:
    return list(root.attrs["groups"])


def sample_group(root, path: str):
    return root[path] if path else root


def read_status(g, start: int = 0, stop: int | None = None, name: str = "status") -> np.ndarray:
    """Status per row (uint8) of rows ``start..stop-1`` (default: all) of array ``name`` (``status`` or
    ``text_status``).

    A chunk file that cannot be decoded (torn write) counts as pending.
    """
    arr = g[name]
    n = arr.shape[0]
    stop = n if stop is None else min(stop, n)
    start = min(max(start, 0), stop)
    try:
        return np.asarray(arr[start:stop])
    except Exception:  # noqa: BLE001 - one bad chunk must not hide the rest
        c = arr.chunks[0]
        out = np.zeros(stop - start, np.uint8)
        for a in range(start - start % c, stop, c):
            lo, hi = max(a, start), min(a + c, stop)
            try:
                out[lo - start:hi - start] = arr[lo:hi]
            except Exception:  # noqa: BLE001
                pass
        return out


#: Per-row arrays whose rows are valid where ``text_status`` (not ``status``) is ok.
TEXT_ARRAYS = ("clip_text", "clip_text_pooled")
#: ControlNet controls (``encode --controls`` / ``add-controls``, :mod:`.controls`) and Stage B's stored EfficientNet
#: scales (``--effnet-scales``, :mod:`.effnet_scales`): each array has its own status array ``<array>_status`` (ok
#: where the row's control was written), so they can be added later.
CONTROL_ARRAYS = ("control_canny", "control_sr", "control_inpaint", "effnet_scales")


def status_of(array: str) -> str:
    """The status array whose ok rows say ``array`` holds data (``status``, ``text_status``, ``<control>_status``)."""
    if array in TEXT_ARRAYS:
        return "text_status"
    return f"{array}_status" if array in CONTROL_ARRAYS else "status"

#: Arrays whose chunk files must exist behind every done row: numeric data, which is never all fill values in
#: practice. Other per-row arrays (keys, captions, orig_size, ...) may lack a chunk that held only fill values
#: when a zarr writer other than cascadekit's (or format version 1) wrote them: there only existing chunks are
#: checked (checksum / decoding), and a missing one reads as zarr's fill value ('' or 0).
DATA_ARRAYS = ("latents", "stage_a", "clip_text", "clip_text_pooled", "clip_img", *CONTROL_ARRAYS)


def checked_arrays(g, status_name: str = "status") -> list[str]:
    """Per-row arrays of sample group ``g`` whose chunks behind rows with ``status_name == ok`` are checked."""
    n = g["status"].shape[0]
    names = {a for a in g.array_keys() if g[a].ndim and g[a].shape[0] == n}  # per-row arrays only
    statuses = {"status", "text_status", *(f"{c}_status" for c in CONTROL_ARRAYS)}
    return sorted(a for a in names if a not in statuses and status_of(a) == status_name)


def damaged_rows(g, start: int, stop: int, ok: np.ndarray, arrays, deep: bool) -> list:
    """:class:`~.integrity.ChunkProblem` of the chunks of ``arrays`` holding an ok row of ``start..stop-1``
    (``ok`` a boolean mask over those rows); a missing chunk counts only for :data:`DATA_ARRAYS`."""
    rows = np.flatnonzero(ok) + start
    if not len(rows):
        return []
    out = []
    for name in arrays:
        arr = g[name]
        found = integrity.bad_chunks(arr, integrity.chunks_of_rows(arr, rows), deep, g.path, name)
        out += [p for p in found if p.kind != integrity.MISSING or name in DATA_ARRAYS]
    return out


def read_rows(g, name: str, rows: slice) -> np.ndarray:
    """Rows ``rows`` of array ``name`` of group ``g``; a chunk that cannot be decoded (checksum mismatch,
    truncation) is an :class:`InputError` naming the array and rows, not a codec traceback."""
    try:
        return np.asarray(g[name][rows])
    except Exception as e:  # noqa: BLE001 - zarr/numcodecs raise ValueError, RuntimeError, ... for bad bytes
        where = f"{g.path}/{name}" if g.path else name
        raise InputError(f"{store_label(g.store)}: {where} rows {rows.start}..{rows.stop - 1} hold a damaged chunk "
                         f"({type(e).__name__}: {str(e)[:100]}); run `cascadekit inspect --verify` to list the "
                         "damaged chunks, then rerun `cascadekit encode` / `embed-text` with the same arguments "
                         "to re-create them") from None


class StatusView:
    """``view[a:b]`` reads rows ``a..b-1`` of a group's status with :func:`read_status` (torn chunks = pending).

    With ``verify`` (``"presence"`` or ``"deep"``, see :mod:`.integrity`), ok rows whose data chunks are
    missing or damaged also read as pending: a resumed ``encode`` then re-creates those chunks.
    """

    def __init__(self, g, verify: str | None = "deep"):
        self.g = g
        self.verify = verify
        self._arrays = checked_arrays(g) if verify else []

    def __len__(self) -> int:
        return self.g["status"].shape[0]

    def __getitem__(self, s: slice) -> np.ndarray:
        a, b, step = s.indices(len(self))
        if step != 1:
            raise IndexError("StatusView slices must be contiguous")
        st = read_status(self.g, a, b)
        if self._arrays:
            bad = damaged_rows(self.g, a, b, st == STATUS_OK, self._arrays, self.verify == "deep")
            st = np.where(integrity.rows_mask(bad, a, b) & (st == STATUS_OK), STATUS_PENDING, st).astype(np.uint8)
        return st


def iter_status(g, block_rows: int = 1 << 16):
    """``(start, status)`` blocks of about ``block_rows`` rows (whole chunks), in order: a full pass over
    a group's status in constant memory."""
    n, c = g["status"].shape[0], g["status"].chunks[0]
    step = max(c, block_rows // c * c)
    for a in range(0, n, step):
        yield a, read_status(g, a, a + step)


def count_group(g, max_examples: int = 0) -> dict:
    """Counts of one sample group as it is on disk, in one block-wise pass (constant memory).

    Returns ``rows``, ``ok``, ``skipped``, ``pending``, ``reasons`` (skip reason -> count), ``examples``
    (row, key, reason of the first ``max_examples`` skipped rows) and ``missing_captions`` (ok rows with
    an empty caption). String arrays are read only for the chunks that hold skipped / ok rows.
    """
    c = g["status"].chunks[0]
    rows = ok = skipped = pending = missing = 0
    reasons: Counter = Counter()
    examples: list[dict] = []
    for start, st in iter_status(g):
        rows += len(st)
        pending += int((st == STATUS_PENDING).sum())
        for a in range(0, len(st), c):
            s = st[a:a + c]
            rs = slice(start + a, start + a + len(s))
            okm, skm = s == STATUS_OK, s == STATUS_SKIPPED
            ok += int(okm.sum())
            skipped += int(skm.sum())
            if skm.any():
                why = read_rows(g, "skip_reason", rs)
                reasons.update(why[skm].tolist())
                if len(examples) < max_examples:
                    keys = read_rows(g, "keys", rs)
                    examples += [{"row": rs.start + int(r), "key": str(keys[r]), "reason": str(why[r])}
                                 for r in np.flatnonzero(skm)[:max_examples - len(examples)]]
            if okm.any():
                missing += int((read_rows(g, "captions", rs)[okm] == "").sum())
    return {"rows": rows, "ok": ok, "skipped": skipped, "pending": pending, "reasons": dict(reasons),
            "examples": examples, "missing_captions": missing}


# ----------------------------------------------------------------------------------- finalisation
def channel_stats(g, chunk_rows: int) -> tuple[list[float], list[float], int]:
    """Per-channel mean/std of the latents of rows with status ok (streamed chunk by chunk, float64)."""
    lat = g["latents"]
    c = lat.shape[1]
    s1, s2, cnt, n_ok = np.zeros(c), np.zeros(c), 0, 0
    for start, status in iter_status(g):
        for a in range(0, len(status), chunk_rows):
            ok = status[a:a + chunk_rows] == STATUS_OK
            if not ok.any():
                continue
            n_ok += int(ok.sum())
            x = read_rows(g, "latents", slice(start + a, start + a + len(ok)))[ok].astype(np.float64)  # (k, C, h, w)
            s1 += x.sum(axis=(0, 2, 3))
            s2 += (x * x).sum(axis=(0, 2, 3))
            cnt += x.shape[0] * x.shape[2] * x.shape[3]
    if cnt == 0:
        return [0.0] * c, [0.0] * c, 0
    mean = s1 / cnt
    std = np.sqrt(np.maximum(s2 / cnt - mean * mean, 0.0))
    return mean.tolist(), std.tolist(), n_ok


def write_error_table(g, block_rows: int = 65536, n_skipped: int | None = None) -> int:
    """(Re)write the ``errors`` sub-group: row, key, source, reason of every skipped sample.

    Copies ``block_rows`` table rows at a time, reading only the chunks that hold skipped rows, so memory
    does not grow with the store size or the error count. ``n_skipped`` (the table's length) is counted
    in a first pass over the status unless the caller already knows it.
    """
    chunk = g["status"].chunks[0]
    n = n_skipped if n_skipped is not None else sum(int((st == STATUS_SKIPPED).sum()) for _, st in iter_status(g))
    e = g.create_group("errors", overwrite=True)  # also replaces a table left half-written by a kill
    chunks = (max(1, min(n, block_rows)),)
    e.create_array("row", shape=(n,), chunks=chunks, dtype="int64", compressors=compressors_for("int64"), fill_value=0,
                   overwrite=True, dimension_names=("error",))
    for name in ("key", "source", "reason"):
        e.create_array(name, shape=(n,), chunks=chunks, dtype=str, compressors=compressors_for(str), fill_value="",
                       overwrite=True,
                       dimension_names=("error",))
    if not n:
        return 0
    cols = {"row": [], "key": [], "source": [], "reason": []}
    written = 0

    def write_out(k: int) -> None:  # the first k collected rows -> table rows written..written+k-1
        nonlocal written
        e["row"][written:written + k] = np.asarray(cols["row"][:k], np.int64)
        for name in ("key", "source", "reason"):
            e[name][written:written + k] = np.asarray(cols[name][:k], dtype=object).astype(str)
        for v in cols.values():
            del v[:k]
        written += k

    for start, st in iter_status(g):
        rows = np.flatnonzero(st == STATUS_SKIPPED) + start
        for c in np.unique(rows // chunk):
            a = int(c) * chunk
            sel = rows[(rows >= a) & (rows < a + chunk)]
            cols["row"] += sel.tolist()
            for name, arr in (("key", "keys"), ("source", "source"), ("reason", "skip_reason")):
                cols[name] += read_rows(g, arr, slice(a, a + chunk))[sel - a].tolist()
            while len(cols["row"]) >= chunks[0]:  # whole table chunks: each written once
                write_out(chunks[0])
    if cols["row"]:
        write_out(len(cols["row"]))
    return n


def finalize_store(path) -> dict:
    """After every chunk is written: stats, error tables, ``complete`` flag, consolidated metadata."""
    root = open_store(path, mode="r+")
    chunk_rows = int(root.attrs["chunk_rows"])
    stats, counts = {}, {}
    for gp in group_paths(root):
        g = sample_group(root, gp)
        pending = skipped = 0
        for _, st in iter_status(g):
            pending += int((st == STATUS_PENDING).sum())
            skipped += int((st == STATUS_SKIPPED).sum())
        if pending:
            raise RuntimeError(f"finalize_store: {pending} rows of {path}/{gp} still pending")
        mean, std, n_ok = channel_stats(g, chunk_rows)
        n_err = write_error_table(g, n_skipped=skipped)
        g.attrs.update({"latent_mean": mean, "latent_std": std, "n_ok": n_ok, "n_skipped": n_err})
        stats[gp] = {"mean": mean, "std": std}
        counts[gp] = {"ok": n_ok, "skipped": n_err}
    # one set of root statistics over all groups (weighted by sample count)
    tot = sum(c["ok"] for c in counts.values())
    if tot:
        c = len(next(iter(stats.values()))["mean"])
        m = np.zeros(c)
        sq = np.zeros(c)
        for gp, st in stats.items():
            w = counts[gp]["ok"] / tot
            mu, sd = np.asarray(st["mean"]), np.asarray(st["std"])
            m += w * mu
            sq += w * (sd * sd + mu * mu)
        mean, std = m.tolist(), np.sqrt(np.maximum(sq - m * m, 0)).tolist()
    else:
        mean = std = None
    root.attrs.update({
        "latent_mean": mean, "latent_std": std,
        "n_ok": tot, "n_skipped": sum(c["skipped"] for c in counts.values()),
        "complete": True,
        "finalized": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    })
    consolidate(path)
    return {"mean": mean, "std": std, "counts": counts}
