"""Stage B training data from a latent store: Stage A latents (the target) plus the stored conditions.

A store made by ``cascadekit encode --stage-a`` holds per sample ``stage_a`` (4, H/4, W/4: un-quantised
Stage A latents / 0.43, 512 KB in float16 for a 1024² crop), ``latents`` (16, h, w: the EfficientNet latents
of the crop at ``--encoder-resolution``) and, with ``--effnet-scales``, ``effnet_scales`` (S, 16, h_max, w_max:
the EfficientNet latents of the crop nearest-downscaled by each stored factor, zero-padded to the largest;
the group attributes ``effnet_scales`` / ``effnet_scale_sizes`` say which factor and size each slot is).
The slots are written by :mod:`cascadekit.datasets.effnet_scales` (a control kind with its own
``effnet_scales_status``). Text: ``clip_text_pooled`` (1, P) from ``cascadekit embed-text`` when stored, else the
captions. With ``pixels=True`` (``--on-the-fly-effnet``) also ``control_inpaint`` (3, H, W) uint8: the crop's exact
pixels (``--controls inpaint``), from which the task recomputes the EfficientNet condition.

Streaming: the Stage A rows are read through a :class:`~cascadekit.datasets.access.ChunkCache` that keeps
at most :data:`STAGE_A_KEEP` decoded chunks (two shuffle windows of the batch plan, whatever the store's
size), so memory stays flat however large the store is; the plan's groups use the Stage A chunking.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from cascadekit.codec.errors import InputError
from cascadekit.datasets.access import GroupView, LatentStore
from cascadekit.datasets.remote import store_path
from cascadekit.generator._store import ChunkedGroupReader, float32_tensor
from cascadekit.generator.batches import Group

WINDOW = 8  # BatchPlan's shuffle window (chunks)
STAGE_A_KEEP = 2 * WINDOW  # a batch lies in one window or straddles two
SCALES_FIELD = "effnet_scales"
PIXELS_FIELD = "control_inpaint"  # the crop's uint8 pixels, lossless (`--controls inpaint`)


@dataclass(frozen=True)
class StoredScales:
    """The EfficientNet scales stored for a group: factors (S,) and latent sizes [(h, w)] in slot order."""

    factors: tuple[float, ...]
    sizes: tuple[tuple[int, int], ...]

    def size_of(self, factor: float) -> tuple[int, int]:
        return self.sizes[self.factors.index(factor)]


def stored_scales(gv: GroupView) -> StoredScales | None:
    """The scales a group stores (None without ``effnet_scales``)."""
    if not gv.has(SCALES_FIELD):
        return None
    attrs = dict(gv.g.attrs)
    factors = tuple(float(f) for f in attrs.get("effnet_scales", []))
    sizes = tuple((int(h), int(w)) for h, w in attrs.get("effnet_scale_sizes", []))
    if not factors or len(factors) != len(sizes) or len(factors) != gv.shape(SCALES_FIELD)[0]:
        raise InputError(f"{gv.store.path}: group {gv.name!r} has an effnet_scales array whose attributes "
                         f"(effnet_scales {factors}, effnet_scale_sizes {sizes}) do not describe it; re-encode")
    return StoredScales(factors, sizes)


class StageBData:
    """A latent store as Stage B training data (see the module docstring).

    Attributes (the :class:`~cascadekit.generator.data.TrainData` protocol): ``groups`` (one per bucket,
    ``shape`` = the Stage A latent shape (4, H/4, W/4), ``chunk`` = Stage A rows per chunk), ``fields``,
    ``empty`` (always None: the empty caption comes from the weights, see the task), ``field_shapes``
    (``latents``, ``stage_a``, ``clip_text_pooled`` per-sample shapes), ``scales`` (group -> StoredScales
    or None), ``effnet_shape`` (group -> (16, h, w) of the stored latents).

    pixels: also read the crops' stored pixels (:data:`PIXELS_FIELD`) where the store has them (then in
    ``fields``); the task says what to do when it lacks them.

    Raises :class:`InputError` when the store cannot train Stage B (no ``stage_a``, text pending, missing
    chunk files, no complete sample) — before any work.
    """

    def __init__(self, path: str | Path, pixels: bool = False):
        self.path = store_path(path)  # a folder or an fsspec URL (s3://...)
        self.pixels = bool(pixels)
        store = LatentStore(self.path)
        self.groups: list[Group] = []
        self.scales: dict[str, StoredScales | None] = {}
        self.effnet_shape: dict[str, tuple[int, ...]] = {}
        self.field_shapes: dict[str, tuple[int, ...]] = {}
        self.empty = None
        self._readers: dict[str, _GroupReader] = {}
        per_group_fields = []
        for gv in store.groups:
            fields = self._open_group(gv)
            if fields is not None:
                per_group_fields.append(fields)
        if not self.groups:
            raise InputError(f"latent store {self.path} has no complete samples (status ok); did `cascadekit encode` "
                             "finish?")
        self.fields = set.intersection(*per_group_fields)

    def _open_group(self, gv: GroupView) -> set[str] | None:
        if not gv.has("stage_a"):
            raise InputError(f"latent store {self.path} has no Stage A latents (group {gv.name!r}): Stage B trains on "
                             "them; encode the store with `cascadekit encode ... --stage-a` (e.g. --resolution 1024 "
                             "--encoder-resolution 768 --stage-a)")
        optional = ("clip_text_pooled", SCALES_FIELD) + ((PIXELS_FIELD,) if self.pixels else ())
        wanted = ["stage_a", "latents"] + [f for f in optional if gv.has(f)]
        sel = gv.select(wanted)
        sel.require_complete(str(self.path), gv.name)
        if len(sel.rows) == 0:
            return None
        fields = set(wanted) | {"effnet"}
        captions = None
        if gv.has("captions"):
            caps = gv.cache("captions", keep=0).rows(sel.rows)
            if any(str(c).strip() for c in caps):
                captions = [str(c) for c in caps]
                fields.add("captions")
        for f in wanted:
            self.field_shapes[f] = gv.shape(f)
        self.scales[gv.name] = stored_scales(gv)
        self.effnet_shape[gv.name] = gv.shape("latents")
        self.groups.append(Group(gv.name, int(len(sel.rows)), gv.shape("stage_a"), chunk=gv.chunk_rows("stage_a")))
        self._readers[gv.name] = _GroupReader(gv, sel.rows, captions, [f for f in wanted if f != "stage_a"])
        return fields

    def read(self, group: str, indices: Sequence[int]) -> dict[str, Any]:
        """Samples ``indices`` of ``group`` (positions among its usable rows): ``stage_a`` (B,4,H,W),
        ``effnet`` (B,16,h,w: the stored latents), optional ``effnet_scales`` (B,S,16,h_max,w_max),
        ``effnet_scale_sizes`` (S,2) (valid h, w per slot), ``clip_text_pooled`` (B,1,P), ``captions`` (B str),
        ``control_inpaint`` (B,3,H,W) uint8 (``pixels``); other tensors float32; in ``indices`` order."""
        return self._readers[group].read(list(indices))

    def fetch(self, group: str, indices: Sequence[int]) -> Any:
        """Decode the chunks samples ``indices`` of ``group`` need (the trainer's read-ahead, on its own thread;
        ``generator/training/prefetch.py``); ``assemble(group, indices, fetch(group, indices)) == read(...)``."""
        return self._readers[group].fetch(list(indices))

    def assemble(self, group: str, indices: Sequence[int], fetched: Any) -> dict[str, Any]:
        """The batch :meth:`read` returns, gathered from what :meth:`fetch` decoded."""
        return self._readers[group].assemble(list(indices), fetched)

    def cached_chunks(self, group: str) -> int:
        """Decoded Stage A chunks held right now for ``group`` (at most :data:`STAGE_A_KEEP`)."""
        return len(self._readers[group].caches["stage_a"].chunks)


class _GroupReader(ChunkedGroupReader):
    """Stage B batches of one group: Stage A latents, EfficientNet latents (+ their scale sizes), captions."""

    def __init__(self, gv: GroupView, rows: np.ndarray, captions: list[str] | None, others: list[str]):
        self.rows, self.captions = rows, captions
        sc = stored_scales(gv)
        self.sizes = torch.tensor(sc.sizes, dtype=torch.long) if sc is not None else None
        self.caches = {"stage_a": gv.cache("stage_a", keep=STAGE_A_KEEP), **{f: gv.cache(f) for f in others}}

    def assemble(self, indices: list[int], fetched: dict[str, dict[int, np.ndarray]]) -> dict[str, Any]:
        idx = np.asarray(indices, dtype=np.int64)
        sel = self.rows[idx]
        out: dict[str, Any] = {name: _tensor(c.rows(sel, fetched.get(name))) for name, c in self.caches.items()}
        out["effnet"] = out.pop("latents")
        if self.sizes is not None:
            out["effnet_scale_sizes"] = self.sizes  # (S, 2): the valid (h, w) of each slot
        if self.captions is not None:
            out["captions"] = [self.captions[i] for i in idx.tolist()]
        return out


def _tensor(rows: np.ndarray) -> torch.Tensor:
    """uint8 rows (pixels) as they are, any other dtype as float32."""
    return torch.from_numpy(rows) if rows.dtype == np.uint8 else float32_tensor(rows)
