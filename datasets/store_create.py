"""Creating the store of a build, or checking that an existing one may be resumed (rank 0).

A store records every setting its bytes depend on (:func:`store_settings`); a rerun with the same
settings resumes it, with others it is refused (or rebuilt with ``overwrite``).
"""
from __future__ import annotations

import os
from pathlib import Path

from cascadekit.codec.errors import CascadeKitError, InputError
from cascadekit.datasets import store as S
from cascadekit.datasets.controls import create_control_arrays
from cascadekit.datasets.remote import RemotePath, check_writable


def check_output(out: Path | RemotePath) -> None:
    """An :class:`InputError` before any work when the store folder ``out`` cannot be written (object stores: the
    bucket must exist and accept a probe write)."""
    if isinstance(out, RemotePath):
        check_writable(out)
        if out.is_file():
            raise InputError(f"{out} is an object, not a store prefix; choose another --out")
        return
    parent = out.parent if not out.exists() else out
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write the store {out}: {parent} is not writable; choose another --out")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is a file, not a store folder; choose another --out")


def store_settings(cfg, dtype, spaces, chunk_rows, batch_rows, identity, fingerprint, n, controls=(),
                   effnet_scales=()) -> dict:
    """Everything the stored bytes depend on. ``batch_rows`` (the effective encoder batch) is part of
    it: an encoder's kernels may round differently for other batch sizes (cuDNN/oneDNN pick
    algorithms by shape), so a resume with another batch could change the latents' last bits."""
    extra = {"controls": list(controls)} if controls else {}  # only when asked: older stores still resume
    if effnet_scales:
        extra["effnet_scales"] = [float(f) for f in effnet_scales]
    return {
        **extra,
        "preprocess": cfg.to_dict(),
        "dtype": dtype,
        "spaces": list(spaces),
        "chunk_rows": chunk_rows,
        "batch_size": batch_rows,
        "encoder": identity,
        "corpus": {"rows": n, "sha256": fingerprint},
    }


def settings_diff(a, b, prefix="") -> list[str]:
    """Every leaf where the nested dicts ``a`` (the store's) and ``b`` (this run's) differ, as readable lines."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += settings_diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: store has {a!r}, this run has {b!r}"]


def _create(out: Path, layouts, chunk_rows, dtype, settings, attrs, controls) -> None:
    """A new store at final size; with ``controls`` ({group path: [ControlSpec]}) also their arrays."""
    root = S.create_store(out, layouts, chunk_rows=chunk_rows, dtype=dtype, attrs={**attrs, "settings": settings})
    for gp, specs in (controls or {}).items():
        create_control_arrays(S.sample_group(root, gp), specs, chunk_rows)


def prepare_store(out: Path, layouts, chunk_rows, dtype, settings, attrs, overwrite, controls=None) -> str | None:
    """Rank 0: create, or validate for resume. Returns an error message instead of raising (broadcast).
    ``controls``: {group path: [ControlSpec]} of ``encode --controls`` (created with the store)."""
    try:
        if S.has_content(out):  # the lock file alone does not count
            if not S.is_store(out):
                return f"{out} exists and is not a cascadekit latent store; choose another --out"
            root = S.open_store(out, mode="r")
            if root.attrs.get("initializing", False):  # killed while being created: holds no data
                S.remove_store(out)
                _create(out, layouts, chunk_rows, dtype, settings, attrs, controls)
                return None
            old = root.attrs.get("settings")
            diffs = settings_diff(old, settings) if old is not None else ["settings: missing"]
            if diffs and not overwrite:
                hint = ("\nControls are added to a finished store with `cascadekit add-controls STORE --controls ...`"
                        " (EfficientNet scales: --effnet-scales ...)."
                        if any(d.startswith(("controls", "effnet_scales")) for d in diffs) else "")
                return (f"{out} was built with different settings:\n  " + "\n  ".join(diffs[:12])
                        + "\nRerun with the same settings to resume, or pass --overwrite to rebuild from scratch." + hint)
            if not diffs:
                for p in [] if isinstance(out, RemotePath) else out.rglob("*.partial"):  # temp files of writes
                    p.unlink(missing_ok=True)  # cut off by a kill (object stores write whole objects: none)
                return None
            S.remove_store(out)
        _create(out, layouts, chunk_rows, dtype, settings, attrs, controls)
        return None
    except CascadeKitError as e:
        return str(e)
    except OSError as e:
        return f"cannot create the store {out}: {e}"


__all__ = ["check_output", "prepare_store", "settings_diff", "store_settings"]
