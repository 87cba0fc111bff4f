"""Aspect-ratio buckets of a build: which group (bucket) each planned sample goes to, from its header size."""
from __future__ import annotations

import io
import os
from typing import Sequence

from PIL import Image

from cascadekit.codec.errors import CascadeKitError
from cascadekit.codec.input_files import open_regular
from cascadekit.datasets.plan import Sample
from cascadekit.datasets.preprocess import PreprocessConfig, target_size
from cascadekit.datasets.sources import SampleReader
from cascadekit.datasets.spill import IntLog


def header_size(data) -> tuple[int, int] | None:
    """(width, height) after EXIF rotation from the header only, or None if it cannot be read."""
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
                    size = header_size(src)
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


def group_hw(gp: str, cfg: PreprocessConfig) -> tuple[int, int]:
    """(H, W) of the images of group ``gp``: the bucket named in its path, or the square crop for the root."""
    if not gp:
        return cfg.resolution, cfg.resolution
    h, w = gp.rsplit("/", 1)[1].split("x")
    return int(h), int(w)


__all__ = ["assign_groups", "group_hw", "header_size"]
