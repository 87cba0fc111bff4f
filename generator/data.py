"""Training data sources: random access to latents + captions / embeddings, grouped by latent shape.

A source exposes ``groups`` (one :class:`~cascadekit.generator.batches.Group` per aspect bucket),
``fields`` (what each sample carries: ``latents``, ``captions``, ``clip_text``, ``clip_text_pooled``,
``clip_img``), an optional ``empty`` caption embedding stored with the data, and
``read(group, indices) -> batch dict``. :class:`~cascadekit.generator.batches.BatchPlan` decides
which indices are read, so the order is deterministic and resumable whatever the source.

* :class:`TensorData`: in-memory tensors (one group), for experiments, tests and benchmarks.
* :func:`open_train_data`: a Zarr latent store written by ``cascadekit encode``, read through
  :mod:`cascadekit.datasets.access` (``open_store`` is its former name, kept as an alias; the zarr-level
  opener is :func:`cascadekit.datasets.store.open_store`).

A source that also has ``fetch(group, indices)`` and ``assemble(group, indices, fetched)`` (a store: decode the
chunks, then gather the batch) is read ahead on background threads by the trainer
(:mod:`cascadekit.generator.training.prefetch`); one without them (in memory) is read on the training thread.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence

import torch

from cascadekit.codec.errors import InputError
from cascadekit.generator.batches import Group
from cascadekit.generator.conditioning import EmptyCaption


class TrainData(Protocol):
    """What the trainer reads: groups, the fields each sample has, their per-sample shapes
    (``field_shapes``: e.g. ``{"clip_text": (77, 1280)}``, every field except ``latents`` and ``captions``),
    an optional empty-caption embedding, and :meth:`read`."""

    groups: list[Group]
    fields: set[str]
    empty: EmptyCaption | None
    field_shapes: dict[str, tuple[int, ...]]

    def read(self, group: str, indices: Sequence[int]) -> dict[str, Any]:
        """Samples ``indices`` of ``group``: ``latents`` (B,16,h,w) plus any of ``captions`` (B str),
        ``clip_text`` (B,T,C), ``clip_text_pooled`` (B,1,P), ``clip_img`` (B,1,I), in ``indices`` order."""
        ...


class TensorData:
    """In-memory source: latents (N,16,h,w) and any of captions (N str), clip_text (N,T,C),
    clip_text_pooled (N,1,P), clip_img (N,1,I)."""

    def __init__(self, latents: torch.Tensor, captions: Sequence[str] | None = None, *,
                 clip_text: torch.Tensor | None = None, clip_text_pooled: torch.Tensor | None = None,
                 clip_img: torch.Tensor | None = None, empty: EmptyCaption | None = None):
        if latents.dim() != 4:
            raise InputError(f"latents must be (N, C, h, w), got {tuple(latents.shape)}")
        n = latents.shape[0]
        self.arrays: dict[str, Any] = {"latents": latents}
        for name, v in (("captions", captions), ("clip_text", clip_text), ("clip_text_pooled", clip_text_pooled),
                        ("clip_img", clip_img)):
            if v is not None:
                if len(v) != n:
                    raise InputError(f"{name} has {len(v)} entries for {n} latents")
                self.arrays[name] = list(v) if name == "captions" else v
        self.fields = set(self.arrays)
        self.groups = [Group("all", n, tuple(latents.shape[1:]))]
        self.empty = empty
        self.field_shapes = {k: tuple(v.shape[1:]) for k, v in self.arrays.items() if k not in ("latents", "captions")}

    def read(self, group: str, indices: Sequence[int]) -> dict[str, Any]:
        """Rows ``indices`` of every field (see :meth:`TrainData.read`); there is one group, ``"all"``."""
        idx = list(indices)
        out: dict[str, Any] = {}
        for k, v in self.arrays.items():
            out[k] = [v[i] for i in idx] if k == "captions" else v[torch.tensor(idx, dtype=torch.long)]
        return out


def open_train_data(path: str | Path, extra: tuple[str, ...] = ()) -> TrainData:
    """Open a latent store for training (see :class:`StoreData`; ``extra``: further fields to read)."""
    return StoreData(path, extra)


open_store = open_train_data  # the former name (callers written against it keep working)


class StoreData:
    """A Zarr latent store (``docs/dataset_format.md``) read through ``cascadekit.datasets``."""

    def __init__(self, path: str | Path, extra: tuple[str, ...] = ()):
        from cascadekit.datasets.remote import store_path
        from cascadekit.generator._store import open_groups

        self.path = store_path(path)  # a folder or an fsspec URL (s3://...)
        # extra: further store fields read with each batch where every group has them (e.g. ControlNet controls)
        self._groups, self.fields, self.empty, self.field_shapes = open_groups(self.path, tuple(extra))
        self.groups = [g for g, _ in self._groups]
        self._readers = {g.name: r for g, r in self._groups}

    def read(self, group: str, indices: Sequence[int]) -> dict[str, Any]:
        """Samples ``indices`` of ``group`` (positions among its complete rows, 0..Group.size-1; see
        :meth:`TrainData.read`)."""
        return self._readers[group].read(list(indices))

    def fetch(self, group: str, indices: Sequence[int]) -> Any:
        """Decode the chunks samples ``indices`` of ``group`` need (the read-ahead's first stage, on its own thread);
        ``assemble(group, indices, fetch(group, indices)) == read(group, indices)``."""
        return self._readers[group].fetch(list(indices))

    def assemble(self, group: str, indices: Sequence[int], fetched: Any) -> dict[str, Any]:
        """The batch :meth:`read` returns, gathered from what :meth:`fetch` decoded (the read-ahead's second stage)."""
        return self._readers[group].assemble(list(indices), fetched)
