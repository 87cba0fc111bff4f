"""Corpus sources: folder trees, webdataset tar shards and JSONL/CSV manifests -> an ordered sample plan.

:func:`plan_inputs` turns the command-line inputs into one deterministic, ordered sequence of
:class:`Sample` records (row ``i`` of the store is ``plan[i]``), held in a :class:`PlanTable`
(:mod:`.plan`: a fixed record plus the text per sample, in anonymous temporary files). Every rank of
a distributed run computes the same plan, so the split into store rows needs no communication.

* Folder: every ``jpg/jpeg/png/webp/bmp/tif/tiff`` file below it, sorted by relative POSIX path.
  Key = relative path without the extension. Caption from a sidecar ``<name>.txt`` (whole text) or
  ``<name>.json`` (its ``caption``/``text``/``prompt`` field) next to the image. Keys are unique:
  when images of one directory share a stem (``a.jpg``, ``a.png``) the first in sorted order keeps
  the key and the caption, the others are planned as skipped rows (reason ``duplicate_key``). An
  image-named FIFO, device or socket is a skipped row (``not_a_file``) and is never opened. The
  output folder (``exclude``) is never entered.
* Tar shards (webdataset layout): a ``.tar``/``.tar.gz``/``.tgz`` path, a brace pattern such as
  ``shards-{000..099}.tar``, or anything :func:`webdataset.gopen` opens (``pipe:cmd``, URLs).
  webdataset has no global index, so every shard is streamed once here to count its samples; the
  row range of each shard is then fixed. Keys follow the webdataset convention (key = path up to
  the first dot of the file name, so ``a.b.jpg`` is key ``a`` with extension ``b.jpg``); the image
  member is chosen by its *last* extension and the caption is the ``txt`` or ``json`` member.
  A shard that cannot be opened, or whose stream breaks part way (truncated file, corrupt header),
  gets a row with reason ``unreadable`` for the sample that broke, so nothing vanishes silently.
* Manifest ``.jsonl`` (one object per line with ``path`` / ``image`` / ``file`` and optional
  ``caption`` / ``text`` / ``prompt`` / ``key``) or ``.csv`` (header row, same column names).
  Relative paths are resolved against the manifest's folder.
* A single image file is a one-image corpus.

Sources of local files are absolute paths. Reading (:class:`SampleReader`, the image loader) goes
through :mod:`cascadekit.codec.input_files`: regular files only, opened non-blocking, at most
``max_bytes`` per file or tar member (reason ``too_large``).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from cascadekit.codec.errors import InputError
from cascadekit.codec.input_files import (DEFAULT_MAX_INPUT_BYTES, InputFileError, check_regular, file_kind,
                                          format_bytes, open_regular, read_regular)
from cascadekit.datasets.plan import FileRef, PlanTable, Sample, TarRef

__all__ = ["FileRef", "PlanTable", "Sample", "TarRef", "SampleReader", "plan_inputs", "plan_fingerprint",
           "samples_from_images", "count_tar", "iter_tar_samples", "parse_caption"]

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")
CAPTION_EXTS = ("txt", "json")
CAPTION_FIELDS = ("caption", "text", "prompt")
PATH_FIELDS = ("path", "image", "file", "filename")


# ----------------------------------------------------------------------------------------- helpers
def _ext(name: str) -> str:
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def parse_caption(data: bytes | str, ext: str) -> str:
    """Caption text from a sidecar/member: ``txt`` as is (stripped), ``json`` via its caption field."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, (bytes, bytearray)) else data
    if ext == "json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            return ""
        if isinstance(obj, str):
            return obj.strip()
        if isinstance(obj, dict):
            for f in CAPTION_FIELDS:
                if isinstance(obj.get(f), str):
                    return obj[f].strip()
        return ""
    return text.strip()


def is_tar_input(spec: str) -> bool:
    s = spec.lower()
    return (
        s.startswith("pipe:")
        or "://" in s
        or s.endswith((".tar", ".tar.gz", ".tgz"))
        or ("{" in s and ".." in s and "}" in s)
    )


def expand_shards(spec: str) -> list[str]:
    """Brace-expand a shard pattern (``a-{000..009}.tar``); ``pipe:`` commands are taken verbatim."""
    if spec.startswith("pipe:"):
        return [spec]
    import braceexpand

    return list(braceexpand.braceexpand(spec))


def _local_path(url: str) -> Path | None:
    if url.startswith("pipe:") or "://" in url:
        return Path(url[len("file://"):]) if url.startswith("file://") else None
    return Path(url)


# ------------------------------------------------------------------------------------------ folder
def _folder_samples(root: Path, excluded: frozenset[str] = frozenset()) -> Iterator[Sample]:
    """Images below ``root`` in sorted order of their relative POSIX path, one directory at a time.

    A directory's entries are sorted with a trailing ``/`` on subdirectory names, and a subdirectory is
    walked when its turn comes: every path below ``d/`` shares that prefix, so this order is exactly
    the sorted order of the full relative paths, without ever holding the whole tree (memory: the
    listings along one branch). Symlinked directories are not followed, and a directory whose real
    path is in ``excluded`` (the output folder) is not entered; a directory that cannot be listed is
    an :class:`InputError` (its images would otherwise vanish from the dataset unnoticed). Sources are
    absolute paths.
    """
    top = os.path.abspath(root)
    yield from _walk_sorted(top, os.path.realpath(top), "", excluded)


def _list_dir(dirpath: str) -> tuple[list[str], list[str], dict[str, str]]:
    """(file names, subdirectory names, {image-named entry that is no regular file: what it is})."""
    files, dirs, odd = [], [], {}
    try:
        with os.scandir(dirpath) as it:
            for e in it:
                try:
                    is_dir = e.is_dir()
                except OSError:
                    is_dir = False
                if is_dir:
                    if not e.is_symlink():
                        dirs.append(e.name)
                    continue
                files.append(e.name)
                if _ext(e.name) in IMAGE_EXTS and not e.is_file():  # FIFO, device, socket (d_type: no syscall)
                    try:
                        odd[e.name] = file_kind(e.stat().st_mode)
                    except OSError:  # broken symlink: fails as unreadable when read
                        pass
    except OSError as e:
        raise InputError(f"cannot list the folder {dirpath}: {e.strerror or e}; fix its permissions or leave it out") from e
    return files, dirs, odd


def _first_of_stem(images: list[str], odd: dict[str, str]) -> dict[str, str]:
    """stem -> the first (sorted) regular image file of that stem: it alone keeps the key ``<stem>``."""
    first: dict[str, str] = {}
    for fn in images:  # sorted
        if fn not in odd:
            first.setdefault(fn.rsplit(".", 1)[0], fn)
    return first


def _walk_sorted(dirpath: str, realdir: str, rel_dir: str, excluded: frozenset[str]) -> Iterator[Sample]:
    files, dirs, odd = _list_dir(dirpath)
    names = set(files)
    images = sorted(fn for fn in files if not fn.startswith(".") and _ext(fn) in IMAGE_EXTS)
    first = _first_of_stem(images, odd)
    # symlinked directories are never followed, so a child's real path is realdir/name
    entries = [(fn, False) for fn in images]
    entries += [(d + "/", True) for d in dirs if os.path.join(realdir, d) not in excluded]
    del files, dirs
    entries.sort()
    for name, is_dir in entries:
        if is_dir:
            d = name[:-1]
            yield from _walk_sorted(os.path.join(dirpath, d), os.path.join(realdir, d), rel_dir + name, excluded)
        else:
            yield _file_sample(dirpath, rel_dir, name, names, first, odd)


def _file_sample(dirpath: str, rel_dir: str, name: str, names: set[str], first: dict[str, str],
                 odd: dict[str, str]) -> Sample:
    """The sample of image file ``name``: key ``rel_dir + stem``; a sidecar caption; or a planned skip.

    Skips: ``not_a_file`` (FIFO, device, socket: never opened) and ``duplicate_key`` (another image
    of the same stem sorts first in this folder and keeps the key and the sidecar caption).
    """
    stem = name.rsplit(".", 1)[0]
    path = os.path.join(dirpath, name)
    key = rel_dir + stem
    if name in odd:
        return Sample(key=key, source=path, load=FileRef(path), error="not_a_file",
                      detail=f"{path} is {odd[name]}, not a regular file")
    if first[stem] != name:
        return Sample(key=key, source=path, load=FileRef(path), error="duplicate_key",
                      detail=f"key {key!r} belongs to {first[stem]} (the first of the images with this stem); "
                             "rename one of them to encode both")
    cap = next((os.path.join(dirpath, f"{stem}.{e}") for e in CAPTION_EXTS if f"{stem}.{e}" in names), None)
    return Sample(key=key, source=path, load=FileRef(path, cap))


# ---------------------------------------------------------------------------------------- manifest
def _manifest_rows(path: Path) -> Iterator[dict]:
    # opened as a regular file (non-blocking, never a FIFO); streamed, so no byte cap
    if path.suffix.lower() == ".csv":
        with io.TextIOWrapper(open_regular(path), encoding="utf-8", newline="") as f:
            yield from csv.DictReader(f)
        return
    with io.TextIOWrapper(open_regular(path), encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n}: not valid JSON ({e.msg}); fix or remove the line") from e
            if not isinstance(row, dict):
                raise InputError(f"{path}:{n}: each line must be a JSON object with a 'path' field")
            yield row


def _manifest_samples(path: Path) -> Iterator[Sample]:
    """One sample per manifest row; the source is the absolute path (relative ones: against the
    manifest's folder), the default key the path relative to that folder, without the extension."""
    base = path.parent
    for n, row in enumerate(_manifest_rows(path), 1):
        p = next((row[f] for f in PATH_FIELDS if row.get(f)), None)
        if p is None:
            raise InputError(f"{path}: row {n} has no image path; give a column named one of {PATH_FIELDS}")
        full = Path(p) if os.path.isabs(p) else base / p
        caption = next((str(row[f]) for f in CAPTION_FIELDS if row.get(f) is not None), None)
        try:
            rel = full.resolve().relative_to(base.resolve()).with_suffix("").as_posix()
        except ValueError:
            rel = full.with_suffix("").as_posix()
        key = str(row.get("key") or row.get("id") or rel)
        src = os.path.abspath(full)
        yield Sample(key=key, source=src, load=FileRef(src), caption=(caption or "").strip())


# --------------------------------------------------------------------------------------------- tar
@dataclass(frozen=True, slots=True)
class Oversize:
    """Stands for the data of a tar member that was not read: its header size is above the byte cap."""

    size: int


def iter_tar_samples(url: str, max_bytes: int | None = DEFAULT_MAX_INPUT_BYTES
                     ) -> Iterator[tuple[str, dict[str, tuple[str, bytes | Oversize | None]], str | None]]:
    """Stream a tar shard, grouping consecutive members by webdataset key.

    Yields ``(key, {last_ext: (member_name, data)}, error)``; ``data`` is ``None`` when the caller
    asked only for the layout (see :func:`count_tar`), :class:`Oversize` for a member above
    ``max_bytes`` (skipped in the stream, never held in memory). A member is read by its header
    size, so no member can make a read run on without end. A local shard is opened as a regular
    file only (:func:`~cascadekit.codec.input_files.open_regular`: never a FIFO or a device). When the stream breaks (cannot be opened,
    truncated, corrupt header) a final pseudo-sample ``(<shard#broken-after-n>, {}, message)`` is
    yielded, the same way whether data is read or not, so sample indices agree between the
    counting pass and the reading pass. Works on anything :func:`webdataset.gopen` can open;
    never raises for a broken shard.
    """
    yield from _iter_tar(url, read_data=True, max_bytes=max_bytes)


def _open_shard(url: str):
    local = _local_path(url)
    if local is not None:
        return open_regular(local)
    import webdataset as wds  # lazy: only remote shards and pipe: commands need it

    return wds.gopen(url, "rb")


def _read_member(tf: tarfile.TarFile, m: tarfile.TarInfo, max_bytes: int | None) -> bytes | Oversize:
    if max_bytes is not None and m.size > max_bytes:
        return Oversize(m.size)  # the stream skips it block by block
    f = tf.extractfile(m)
    data = f.read(m.size) if f is not None else b""
    if len(data) != m.size:
        raise EOFError(f"member {m.name} is cut off ({len(data)} of {m.size} bytes)")
    return data


def _iter_tar(url: str, read_data: bool, max_bytes: int | None = DEFAULT_MAX_INPUT_BYTES):
    try:
        stream = _open_shard(url)
    except Exception as e:  # noqa: BLE001 - any opener failure is a broken shard
        yield f"<{Path(url).name}>", {}, f"cannot open shard: {e}"
        return
    current_key, current, n = None, {}, 0
    try:
        try:
            tf = tarfile.open(fileobj=stream, mode="r|*")
        except (tarfile.TarError, OSError, EOFError) as e:
            yield f"<{Path(url).name}>", {}, f"not a readable tar archive: {e}"
            return
        error = None
        try:
            for m in tf:
                if not m.isfile():
                    continue
                key, ext = _split_member(m.name)
                if key is None:
                    continue
                if key != current_key:
                    if current_key is not None:
                        yield current_key, current, None
                        n += 1
                    current_key, current = key, {}
                data = _read_member(tf, m, max_bytes) if read_data else None
                last = ext.rsplit(".", 1)[-1].lower()
                if last not in current:
                    current[last] = (m.name, data)
            # tarfile stops silently at a corrupt header in the middle of a stream: anything other
            # than zero padding after the end marker means the rest of the shard was unreadable.
            rest = tf.fileobj.read(1 << 20)
            while rest:
                if rest.strip(b"\0"):
                    raise tarfile.ReadError("corrupt tar header; the rest of the shard cannot be read")
                rest = tf.fileobj.read(1 << 20)
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            error = f"tar stream broken: {e}"
        if current_key is not None:
            yield current_key, current, None
            n += 1
        if error is not None:
            # one extra row records where and why the shard broke; the sample that was being read
            # (if any) is yielded above without its broken member and fails as unreadable later.
            yield f"<{Path(url).name}#broken-after-{n}>", {}, error
    finally:
        try:
            stream.close()
        except Exception:  # noqa: BLE001
            pass


def _split_member(name: str):
    from webdataset.tariterators import base_plus_ext

    key, ext = base_plus_ext(name)
    if key is None or key.startswith("__") or Path(key).name.startswith("."):
        return None, None
    return key, ext


def count_tar(url: str) -> list[Sample]:
    """Plan one shard: stream it once (headers + data skipped) and return its samples in order."""
    return list(_tar_plan(url))


def _tar_plan(url: str) -> Iterator[Sample]:
    for i, (key, members, error) in enumerate(_iter_tar(url, read_data=False)):
        img = next((members[e][0] for e in IMAGE_EXTS if e in members), None)
        cap = next((members[e][0] for e in CAPTION_EXTS if e in members), None)
        err, detail = None, ""
        if error is not None:
            err, detail = "unreadable", error
        elif img is None:
            err, detail = "no_image", f"tar sample has no image member (members: {sorted(members)})"
        yield Sample(key=key, source=f"{url}#{key}", load=TarRef(url, i, img, cap), error=err, detail=detail)


# -------------------------------------------------------------------------------------------- plan
def plan_inputs(inputs: Sequence[str | os.PathLike], *, on_disk: bool = True,
                tmp_dir: str | os.PathLike | None = None,
                exclude: Sequence[str | os.PathLike] = ()) -> PlanTable:
    """All inputs -> ordered sample plan (a :class:`PlanTable`; ``plan[i]`` is a :class:`Sample`).

    With ``on_disk`` (default) the plan is kept in anonymous temporary files in ``tmp_dir``
    (default ``TMPDIR``), so its size does not count against memory; walking a folder holds one
    branch of directory listings at a time and a tar shard is counted as a stream.
    ``exclude``: folders (the output store) that are never read: folder walks do not enter them and
    an input inside one is an error. Sources of local files are recorded as absolute paths.
    Raises :class:`InputError` for a missing input, an unlistable folder, an input inside ``exclude``,
    a shard that is not a regular file, or an empty corpus.
    """
    if not inputs:
        raise InputError("no input given; pass image folders, tar shards or a manifest")
    excluded = frozenset(os.path.realpath(os.fspath(x)) for x in exclude)
    _refuse_repeated_inputs(inputs)
    plan = PlanTable(on_disk=on_disk, tmp_dir=tmp_dir)
    for spec in inputs:
        plan.extend(_plan_one(os.fspath(spec), excluded))
    if not plan:
        raise InputError(f"no images found in {[os.fspath(i) for i in inputs]} (looked for {', '.join(IMAGE_EXTS)})")
    plan.seal()
    _mark_duplicate_keys(plan)
    return plan


def _refuse_repeated_inputs(inputs) -> None:
    seen: dict[str, str] = {}
    for spec in map(os.fspath, inputs):
        if not os.path.exists(spec):
            continue
        real = os.path.realpath(spec)
        if real in seen:
            raise InputError(f"input {spec!r} is given twice (also as {seen[real]!r}); give each input once")
        seen[real] = spec


def _mark_duplicate_keys(plan: PlanTable, block: int = 1 << 20) -> None:
    """Plan every file row (folder, manifest, single image) whose key an earlier file row has as skipped
    (``duplicate_key``): two folders with the same relative names, a manifest key used twice.

    Memory: the key hashes (:func:`~.plan.key_hash`, 8 bytes per row, sorted in place), then only the
    candidate rows; candidates are compared by their real keys, so a hash collision marks nothing.
    """
    n = len(plan)
    h = np.concatenate([plan.key_hashes(a, min(a + block, n)) for a in range(0, n, block)])
    h.sort()
    same = (h[1:] == h[:-1]) & (h[1:] != 0)
    values = np.unique(h[1:][same])
    del h, same
    if not values.size:
        return
    rows = np.concatenate([a + np.flatnonzero(np.isin(plan.key_hashes(a, min(a + block, n)), values))
                           for a in range(0, n, block)])
    first_of: dict[str, int] = {}
    dups, firsts = [], []
    for i in rows.tolist():
        j = first_of.setdefault(plan[i].key, i)
        if j != i:
            dups.append(i)
            firsts.append(j)
    if dups:
        plan.mark_duplicates(dups, firsts)


def _inside(path: str | os.PathLike, folders: frozenset[str]) -> str | None:
    """The folder of ``folders`` (real paths) that holds ``path`` (or is it), else ``None``."""
    real = os.path.realpath(os.fspath(path))
    for f in folders:
        if real == f or real.startswith(f.rstrip(os.sep) + os.sep):
            return f
    return None


def _refuse_inside_output(path: str, spec: str, excluded: frozenset[str]) -> None:
    out = _inside(path, excluded)
    if out is not None:
        raise InputError(f"input {spec!r} is inside the output folder {out} (--out); a run must not read its own "
                         "output: pass the image folder itself, or choose an --out outside the inputs")


def _plan_one(spec: str, excluded: frozenset[str]) -> Iterator[Sample]:
    p = Path(spec)
    if p.exists():
        _refuse_inside_output(spec, spec, excluded)
    if p.is_dir():
        return _folder_samples(p, excluded)
    if p.exists() and not p.is_file():
        check_regular(p)  # raises: a FIFO, a device or a socket given as an input
    if p.is_file() and p.suffix.lower() in (".jsonl", ".csv"):
        return _manifest_samples(p)
    if p.is_file() and _ext(p.name) in IMAGE_EXTS:
        src = os.path.abspath(p)
        return iter([Sample(key=p.stem, source=src, load=FileRef(src))])
    if is_tar_input(spec):
        return _shard_samples(spec, excluded)
    if not p.exists():
        raise InputError(f"input {spec!r} does not exist; pass image folders, tar shards or a .jsonl/.csv manifest")
    raise InputError(f"input {spec!r} is not a folder, an image, a tar shard or a .jsonl/.csv manifest")


def _shard_samples(spec: str, excluded: frozenset[str]) -> Iterator[Sample]:
    """Every shard of ``spec`` is checked (exists, regular file, not in the output) before any is read."""
    shards = []
    for url in expand_shards(spec):
        local = _local_path(url)
        if local is not None:
            if not local.exists():
                raise InputError(f"tar shard {url} does not exist (from input {spec!r}); check the path/pattern")
            try:
                check_regular(local)
            except InputError as e:
                raise InputError(f"tar shard {e} (from input {spec!r})") from e
            _refuse_inside_output(local, spec, excluded)
            if "://" not in url:
                url = os.path.abspath(url)
        shards.append(url)
    for url in shards:
        yield from _tar_plan(url)


def samples_from_images(images, captions=None, prefix: str = "sample") -> list[Sample]:
    """In-memory images (``(name, PIL image or uint8 array)`` pairs) -> samples holding PNG bytes.

    Used for the built-in sample corpus; nothing is written to disk.
    """
    import numpy as np
    from PIL import Image

    out = []
    for i, (name, im) in enumerate(images):
        if isinstance(im, np.ndarray):
            im = Image.fromarray(im)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        cap = captions[i] if captions is not None else ""
        out.append(Sample(key=str(name), source=f"{prefix}:{name}", load=buf.getvalue(), caption=cap))
    return out


def plan_fingerprint(plan: Sequence[Sample]) -> str:
    """SHA-256 over the planned keys and sources: identifies the corpus a store was built from."""
    h = hashlib.sha256()
    for s in plan:
        h.update(s.key.encode("utf-8", "surrogatepass") + b"\0" + s.source.encode("utf-8", "surrogatepass") + b"\n")
    return h.hexdigest()


# ------------------------------------------------------------------------------------- sample I/O
class SampleReader:
    """Fetch image bytes/paths and captions of planned samples, in increasing row order.

    Tar shards are streamed forward once; asking for an earlier sample of the same shard reopens it.
    One reader per DataLoader worker. ``max_bytes`` caps every file and tar member read (a larger
    one raises with reason ``too_large``; a caption above it counts as no caption).
    """

    def __init__(self, max_bytes: int | None = DEFAULT_MAX_INPUT_BYTES):
        self.max_bytes = max_bytes
        self._url = None
        self._it = None
        self._pos = -1
        self._cur = None

    def _tar_sample(self, ref: TarRef):
        # _pos = samples consumed from the open stream; _cur = the last one (index _pos - 1)
        if self._url != ref.url or ref.index < self._pos - 1:
            self.close()
            self._url, self._it, self._pos = ref.url, iter_tar_samples(ref.url, self.max_bytes), 0
        while self._pos <= ref.index:
            try:
                self._cur = next(self._it)
            except StopIteration:
                self._cur = None
                return None
            self._pos += 1
        return self._cur

    def fetch(self, s: Sample) -> tuple[bytes | str, str | None]:
        """Return ``(image bytes or path, caption or None)``. Raises ``InputError`` (reason in ``.reason``).

        A file path is returned only after :func:`~cascadekit.codec.input_files.check_regular` (a regular
        file within ``max_bytes``); the loader then opens it non-blocking and reads at most the cap.
        """
        ref = s.load
        if isinstance(ref, (bytes, bytearray)):
            return bytes(ref), s.caption
        if isinstance(ref, FileRef):
            check_regular(ref.path, self.max_bytes)  # InputFileError: not_a_file / too_large / unreadable
            caption = s.caption
            if caption is None and ref.caption_path is not None:
                try:
                    caption = parse_caption(read_regular(ref.caption_path, self.max_bytes), _ext(ref.caption_path))
                except (InputError, OSError):
                    caption = None
            return ref.path, caption
        return self._fetch_tar(s, ref)

    def _fetch_tar(self, s: Sample, ref: TarRef) -> tuple[bytes, str | None]:
        got = self._tar_sample(ref)
        if got is None:
            raise _Unreadable(f"{s.source}: sample vanished from the shard on re-read")
        key, members, error = got
        if error is not None:
            raise _Unreadable(f"{s.source}: {error}")
        cap = None
        for e in CAPTION_EXTS:
            if e in members:
                data = members[e][1]
                cap = None if isinstance(data, Oversize) else parse_caption(data, e)
                break
        name, img = next((members[e] for e in IMAGE_EXTS if e in members), (None, None))
        if img is None:
            raise _Unreadable(f"{s.source}: the image member cannot be read (tar stream broken)")
        if isinstance(img, Oversize):
            raise InputFileError("too_large", f"{s.source}: member {name} is {format_bytes(img.size)}, above the "
                                 f"input cap of {format_bytes(self.max_bytes)}; raise --max-input-bytes "
                                 "(Python: max_input_bytes=) if it is a legitimate input")
        return img, cap

    def close(self):
        if self._it is not None:
            self._it.close()
        self._url, self._it, self._pos, self._cur = None, None, -1, None


class _Unreadable(InputError):
    """A tar member could not be read back (reason ``unreadable``)."""

    reason = "unreadable"
