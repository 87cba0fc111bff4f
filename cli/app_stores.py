"""The Stores tab's jobs, all through the store reader (``datasets.access.LatentStore``, ``datasets.inspect``): a
store's counts / statistics / skip reasons, a page of previewer decodes of its usable rows with keys and captions,
and one sample's full decode (Stage B + Stage A)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cascadekit.cli.app_jobs import AppConfig, Models
from cascadekit.codec.errors import InputError
from cascadekit.codec.images import tensor_to_pil
from cascadekit.datasets.access import LatentStore
from cascadekit.datasets.inspect import format_report, inspect_store

PAGE = 12
SKIPS_SHOWN = 100  # skipped samples listed per group (the counts per reason cover all of them)


@dataclass
class StoreIndex:
    """The usable rows of one store in order: per group its path and row numbers (numpy, 8 bytes a row), and
    where each group starts in the overall numbering."""

    store: LatentStore
    groups: list[tuple[str, np.ndarray]]
    starts: np.ndarray
    _caches: dict = field(default_factory=dict)  # (group, field) -> ChunkCache: a page reads each chunk once

    @classmethod
    def open(cls, path: Path) -> "StoreIndex":
        st = LatentStore(path)
        groups = [(gv.path, gv.select(("latents",)).rows) for gv in st.groups]
        return cls(st, groups, np.cumsum([0] + [len(r) for _, r in groups]))

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def pages(self) -> int:
        return max(1, -(-len(self) // PAGE))

    def sample(self, i: int) -> dict:
        """{"key", "caption", "latents" (1,16,h,w) float32} of usable sample ``i``."""
        if not 0 <= i < len(self):
            raise InputError(f"sample {i} is outside the store's {len(self)} usable rows")
        g = int(np.searchsorted(self.starts, i, side="right")) - 1
        path, rows = self.groups[g]
        row = rows[i - self.starts[g]: i - self.starts[g] + 1]
        gv = self.store.group(path)
        text = {f: str(self._cache(gv, f).rows(row)[0]) if gv.has(f) else "" for f in ("keys", "captions")}
        lat = self._cache(gv, "latents").rows(row)
        return {"key": text["keys"], "caption": text["captions"],
                "latents": torch.from_numpy(np.asarray(lat, np.float32))}

    def _cache(self, gv, name: str):
        if (gv.path, name) not in self._caches:
            self._caches[(gv.path, name)] = gv.cache(name, keep=2)
        return self._caches[(gv.path, name)]


def store_of(label: str | None, config: AppConfig) -> Path:
    """The path of a store the app was started with (only those; never a typed path)."""
    if label not in config.stores:
        raise InputError(f"unknown store {label!r}; the app was started with {sorted(config.stores)}")
    return config.stores[label]


def summary(path: Path) -> str:
    """The `cascadekit inspect` text of the store (counts, statistics, skip reasons), without writing to it."""
    return report(path)[0]


def report(path: Path) -> tuple[str, list[list]]:
    """(the `cascadekit inspect` text, [group, row, key, skip reason] of the first :data:`SKIPS_SHOWN` skipped
    samples of each group): one read-only inspect pass."""
    r = inspect_store(path, n_preview=0, write=False, max_errors=SKIPS_SHOWN)
    skips = [[group, e["row"], e["key"], e["reason"]] for group, g in r["groups"].items() for e in g["skip_examples"]]
    return format_report(r), skips


def page(index: StoreIndex, number: int, models: Models) -> list[tuple]:
    """Previewer decodes of page ``number`` (0-based): [(PIL image, "i · key · caption")]."""
    if not 0 <= number < index.pages:
        raise InputError(f"page {number + 1} does not exist; the store has {index.pages} pages")
    codec = models.previewer()
    items = []
    for i in range(number * PAGE, min(len(index), (number + 1) * PAGE)):
        s = index.sample(i)
        img = codec.preview(s["latents"])[0].float().cpu()
        items.append((tensor_to_pil(img), f"{i} · {s['key']} · {s['caption'][:80]}"))
    return items


def full_decode(index: StoreIndex, i: int, models: Models, seed: int = 0, steps: int = 10):
    """(PIL image of sample ``i`` decoded by Stage B + Stage A, its key, its caption)."""
    s = index.sample(i)
    img = models.codec().decode(s["latents"], seed=seed, steps=steps)[0].float().cpu()
    return tensor_to_pil(img), s["key"], s["caption"]
