"""What ``cascadekit inspect`` says about a group's ControlNet controls, and its preview row of canny maps."""
from __future__ import annotations

import numpy as np
import torch

from cascadekit.codec.images import save_grid
from cascadekit.datasets import store as S
from cascadekit.datasets.controls import ARRAY_OF, stored_controls
from cascadekit.datasets.remote import write_via_local

PREVIEW_NAME = "controls_canny.png"


def _disk_bytes(path) -> int:
    try:
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    except (OSError, AttributeError):  # object stores: not counted
        return 0


def control_report(gv) -> dict:
    """``{control: {array, shape, dtype, ok, pending, bytes_per_sample}}`` of one sample group (``GroupView``);
    ``effnet_scales`` also has ``factors``."""
    out = {}
    for c in stored_controls(gv.g):
        arr = ARRAY_OF[c]
        st = np.concatenate([S.read_status(gv.g, a, a + len(s), S.status_of(arr)) for a, s in gv.iter_status()])
        ok = int((st == S.STATUS_OK).sum())
        folder = gv.store.path / gv.path / arr if gv.path else gv.store.path / arr
        out[c] = {"array": arr, "shape": list(gv.shape(arr)), "dtype": str(gv.array(arr).dtype), "ok": ok,
                  "pending": int((st == S.STATUS_PENDING).sum()),
                  "bytes_per_sample": _disk_bytes(folder) / max(1, ok)}
        if arr == "effnet_scales":  # what the slots are (datasets/effnet_scales.py)
            out[c]["factors"] = list(gv.g.attrs.get("effnet_scales", []))
    return out


def write_canny_preview(store_root, groups, n: int = 8) -> str | None:
    """A row of up to ``n`` stored canny maps (the first ok rows) -> ``STORE/inspect/controls_canny.png``."""
    maps = []
    for gv in groups:
        if "canny" not in stored_controls(gv.g) or len(maps) >= n:
            continue
        st = S.read_status(gv.g, 0, None, S.status_of(ARRAY_OF["canny"]))
        rows = np.flatnonzero(st == S.STATUS_OK)[: n - len(maps)]
        if len(rows):
            edges = gv.cache(ARRAY_OF["canny"], keep=1).rows(rows)
            maps += [torch.from_numpy(e).float().div(255).expand(3, -1, -1) for e in edges]
    if not maps:
        return None
    target = store_root / "inspect" / PREVIEW_NAME
    return str(write_via_local(target, lambda local: save_grid([maps], local)))


__all__ = ["control_report", "write_canny_preview"]
