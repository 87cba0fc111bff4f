"""Click parameter types every command shares, so a bad number is refused at parse time, before any weights
load, with a message that names the flag (click prefixes ``Invalid value for '--flag':``), exit status 2.

- counts: :data:`BATCH`, :data:`STEPS`, :data:`COUNT` (>= 1); :data:`WORKERS`, :data:`NON_NEGATIVE` (>= 0)
- :data:`SEED`: 0 <= seed < 2**63 (what a torch generator takes)
- :class:`FiniteFloat`: a float that is not NaN/inf, optionally in a range (``--guidance``, ``--strength``)
- :class:`PixelSide`: an image side in pixels, a multiple of ``multiple``, within the pixel budget
- :data:`DEVICE`: cpu / cuda / cuda:N / mps / auto, checked against the devices this machine has
- :class:`OutFolder`: an output folder that is (or can be created as) a writable folder; nothing is created

:data:`MAX_PIXELS` is the pixel budget of one image (``--size``, ``--resolution``, ``--height`` x ``--width``,
and ``reconstruct``'s resized inputs): larger outputs are refused before anything is allocated.
:data:`MAX_BATCH_PIXELS` is the budget of one ``sample`` batch (``--n`` x PROMPTs x ``--height`` x ``--width``,
generated together), checked by :func:`check_batch_pixels`.
"""
from __future__ import annotations

import errno
import math
import os
from pathlib import Path

import click

MAX_PIXELS = 4096 * 4096  # 16.8 MP: 16x the 1024² Stable Cascade was trained at
MAX_BATCH_PIXELS = 4 * MAX_PIXELS  # 67 MP: 64 images of 1024² in one sample batch (its fp32 images alone: 0.8 GB)
MAX_SIDE = 16384  # longest side of a rectangle (--height / --width), whose area is checked against MAX_PIXELS
SEED_LIMIT = 2**63

BATCH = click.IntRange(min=1)
STEPS = click.IntRange(min=1)
COUNT = click.IntRange(min=1)
NON_NEGATIVE = click.IntRange(min=0)
WORKERS = NON_NEGATIVE
SEED = click.IntRange(min=0, max=SEED_LIMIT - 1)


class FiniteFloat(click.FloatRange):
    """A float that is finite (``nan``/``inf`` are refused up front) and within the optional range."""

    name = "finite float"

    def convert(self, value, param, ctx):
        rv = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(rv, param, ctx)

    def _describe_range(self) -> str:
        """The range in ``--help`` (``x>0``, ``0<x<=1``); nothing for an unbounded one (click writes ``x<=None``)."""
        return "" if self.min is None and self.max is None else super()._describe_range()


FINITE = FiniteFloat()


class PixelSide(click.IntRange):
    """An image side in pixels: ``minimum`` <= side <= ``max_side`` and a multiple of ``multiple``. The default
    ``max_side`` keeps a square of that side within :data:`MAX_PIXELS` (for ``--size`` / ``--resolution``);
    options of one side of a rectangle pass a larger one and call :func:`check_pixel_budget` on the pair."""

    name = "pixels"

    def __init__(self, multiple: int = 1, minimum: int | None = None, max_side: int | None = None):
        self.multiple = multiple
        super().__init__(min=minimum or multiple, max=max_side or math.isqrt(MAX_PIXELS))

    def convert(self, value, param, ctx):
        rv = click.INT.convert(value, param, ctx)
        if self.min <= rv <= self.max and rv % self.multiple:
            self.fail(f"{rv} is not a multiple of {self.multiple}.", param, ctx)
        return super().convert(rv, param, ctx)

    def _describe_range(self) -> str:
        rule = f", a multiple of {self.multiple}" if self.multiple > 1 else ""
        return f"{self.min} to {self.max} pixels{rule}"


def check_pixel_budget(height: int, width: int, flags: str = "--height x --width") -> None:
    """Refuse an output of ``height`` x ``width`` pixels above :data:`MAX_PIXELS` (a click.UsageError naming
    ``flags``), before anything is allocated."""
    if height * width > MAX_PIXELS:
        raise click.UsageError(f"{flags} = {height}x{width} = {height * width} pixels is above the budget of "
                               f"{MAX_PIXELS} pixels per image ({math.isqrt(MAX_PIXELS)}²); choose a smaller size")


def check_batch_pixels(n: int, prompts: int, height: int, width: int) -> None:
    """Refuse a ``sample`` batch of ``n`` images per prompt x ``prompts`` x ``height`` x ``width`` pixels above
    :data:`MAX_BATCH_PIXELS` (a click.UsageError naming ``--n``), before anything is allocated."""
    total = n * prompts * height * width
    if total > MAX_BATCH_PIXELS:
        fits = max(1, MAX_BATCH_PIXELS // (prompts * height * width))
        raise click.UsageError(f"--n {n} x {prompts} prompt(s) x {height}x{width} = {total} pixels in one batch is "
                               f"above the budget of {MAX_BATCH_PIXELS} pixels; use --n {fits} or less (or fewer "
                               "prompts / a smaller size) and run sample again for more images")


class DeviceType(click.ParamType):
    """``--device``: kept as the string given, after :func:`cascadekit.cli.common.check_device` accepted it."""

    name = "device"

    def convert(self, value, param, ctx):
        from cascadekit.cli.common import check_device
        from cascadekit.codec.errors import InputError

        if value in (None, "auto", "cpu"):  # always there; checking needs no torch import
            return value
        try:
            check_device(value, flag="")
        except InputError as e:
            self.fail(str(e), param, ctx)
        return value


DEVICE = DeviceType()


class OutFolder(click.Path):
    """An output folder: an existing writable folder, or a path whose nearest existing parent is a writable
    folder (it is created later, when work starts). A file in its place, a read-only file system or a folder
    without write permission is refused at parse time; nothing is created or written here."""

    def __init__(self):
        super().__init__(file_okay=False, dir_okay=True, path_type=str)

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        problem = out_folder_problem(Path(value))
        if problem:
            self.fail(problem, param, ctx)
        return value


def out_folder_problem(out: Path) -> str | None:
    """Why ``out`` cannot be (created as) a writable folder, or None."""
    probe = out
    while not probe.exists():
        if probe.is_symlink():
            return f"{probe} is a broken symbolic link"
        if probe.parent == probe:
            return f"no existing parent folder of {out}"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a folder" if probe == out else f"{probe} (a parent of {out}) is a file"
    if _read_only_fs(probe):
        return f"{probe} is on a read-only file system; choose another folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable (permission denied); choose another folder"
    return None


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError as e:
        return e.errno == errno.EROFS


OUT_FOLDER = OutFolder()


class StoreLocation(click.ParamType):
    """A latent store argument: an fsspec URL (``s3://bucket/corpus.zarr``, ``gs://...``) is passed through as is
    (checked when the store is opened: credentials come from the environment, see datasets/remote.py); a
    ``file://`` URL or a local path is checked by ``local`` as before."""

    name = "store"

    def __init__(self, local: click.ParamType):
        self.local = local

    def convert(self, value, param, ctx):
        if not (isinstance(value, str) and "://" in value):  # a local path: no need to import fsspec & co
            return self.local.convert(value, param, ctx)
        from cascadekit.datasets.remote import is_url, store_path

        if is_url(value):
            return value
        if isinstance(value, str) and value.lower().startswith(("file://", "local://")):
            value = str(store_path(value))
        return self.local.convert(value, param, ctx)


STORE_OUT = StoreLocation(OUT_FOLDER)  # encode --out
STORE_IN = StoreLocation(click.Path(exists=True, file_okay=False))  # inspect / embed-text STORE, evaluate --store
STORE_DATA = StoreLocation(click.Path())  # train --data (checked when opened)
