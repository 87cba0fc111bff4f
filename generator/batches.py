"""Deterministic, resumable, world-size independent batch plan over a (bucketed) latent store.

The plan of epoch ``e`` is a pure function of ``(seed, e)`` and the group layout: every group (aspect
bucket) is shuffled with its own generator, cut into GLOBAL batches of ``global_batch`` samples
(incomplete tails are dropped), and the groups' batch sequences are interleaved at random, each kept in
its own order (so that consecutive batches of a group reuse its decoded chunks). A group stored
in chunks of ``chunk`` rows is shuffled chunk-aware (the order of its chunks is permuted, then the
samples inside each window of ``window`` consecutive chunks), so that a batch touches few chunks and
consecutive batches reuse decoded chunks; a group that fits in one chunk gets a full permutation. Global batch
``k`` of the run is ``plan(e)[k - offset(e)]``; each of ``world_size`` processes takes the contiguous
slice ``[rank * per_rank, (rank + 1) * per_rank)`` of it. So the position of a run is ONE integer
(the number of global batches consumed), a resumed run reads exactly what the uninterrupted run
would have read, and N processes together read the same samples as one process.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from cascadekit.codec.errors import InputError


@dataclass(frozen=True)
class Group:
    """One shape group of the store: ``name`` (bucket key), ``size`` (samples), latent ``shape`` (C, h, w),
    ``chunk``: samples per storage chunk (0: the whole group is one block, e.g. in memory)."""

    name: str
    size: int
    shape: tuple[int, int, int]
    chunk: int = 0


class BatchPlan:
    """Maps a global batch index to (group name, sample indices) — see the module docstring."""

    def __init__(self, groups: Sequence[Group], global_batch: int, seed: int, shuffle: bool = True, window: int = 8):
        self.groups = list(groups)
        self.window = int(window)
        self.global_batch = int(global_batch)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.batches_per_epoch = sum(g.size // self.global_batch for g in self.groups)
        if self.batches_per_epoch == 0:
            sizes = {g.name: g.size for g in self.groups}
            raise InputError(f"the store has no group with at least batch_size={self.global_batch} samples "
                             f"(group sizes {sizes}); lower batch_size or add data")
        # the two most recent epochs' plans: a read-ahead asks for the next epoch's first batches while training
        # finishes this one (one cached epoch would then be recomputed at every call near the boundary)
        self._cache: dict[int, list[tuple[int, torch.Tensor]]] = {}

    def _epoch(self, epoch: int) -> list[tuple[int, torch.Tensor]]:
        if epoch in self._cache:
            return self._cache[epoch]
        batches = []
        for gi, g in enumerate(self.groups):
            if self.shuffle:
                gen = torch.Generator().manual_seed(_mix(self.seed, epoch, gi))
                order = _block_shuffle(g.size, g.chunk, self.window, gen)
            else:
                order = torch.arange(g.size)
            n = g.size // self.global_batch
            for b in range(n):
                batches.append((gi, order[b * self.global_batch:(b + 1) * self.global_batch]))
        if self.shuffle:
            gen = torch.Generator().manual_seed(_mix(self.seed, epoch, -1))
            batches = _interleave(batches, gen)
        self._cache = {e: b for e, b in self._cache.items() if e == epoch - 1} | {epoch: batches}
        return batches

    def batch(self, index: int, rank: int = 0, world_size: int = 1) -> tuple[Group, list[int], int]:
        """(group, this rank's sample indices (sorted as planned), epoch) of global batch ``index``."""
        epoch, k = divmod(int(index), self.batches_per_epoch)
        gi, idx = self._epoch(epoch)[k]
        per = self.global_batch // world_size
        return self.groups[gi], idx[rank * per:(rank + 1) * per].tolist(), epoch


def _interleave(batches: list[tuple[int, torch.Tensor]], gen: torch.Generator) -> list[tuple[int, torch.Tensor]]:
    """A random interleaving of the groups' batch sequences keeping each group's order: the group labels are
    permuted, and the k-th occurrence of a group takes that group's k-th batch. (A full shuffle of the batches
    sent every batch to a random shuffle window, so a reader decoded each chunk about once per batch.)"""
    queues: dict[int, list[torch.Tensor]] = {}
    for gi, idx in batches:
        queues.setdefault(gi, []).append(idx)
    labels = torch.tensor([gi for gi, _ in batches], dtype=torch.long)
    taken = dict.fromkeys(queues, 0)
    out = []
    for gi in labels[torch.randperm(len(labels), generator=gen)].tolist():
        out.append((gi, queues[gi][taken[gi]]))
        taken[gi] += 1
    return out


def _block_shuffle(n: int, chunk: int, window: int, gen: torch.Generator) -> torch.Tensor:
    """A permutation of range(n): chunk order permuted, then samples shuffled within windows of chunks."""
    if chunk <= 0 or chunk * window >= n:
        return torch.randperm(n, generator=gen)
    starts = torch.arange(0, n, chunk)
    blocks = [torch.arange(int(a), min(int(a) + chunk, n)) for a in starts[torch.randperm(len(starts), generator=gen)]]
    parts = []
    for w in range(0, len(blocks), window):
        ids = torch.cat(blocks[w:w + window])
        parts.append(ids[torch.randperm(len(ids), generator=gen)])
    return torch.cat(parts)


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 over the sequence), stable across runs and platforms."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        h = (h + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        h = z ^ (z >> 31)
    return h & 0x7FFFFFFFFFFFFFFF


def step_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator for the random draws of one (update, micro-batch): independent of history."""
    return torch.Generator().manual_seed(_mix(seed, *keys))
