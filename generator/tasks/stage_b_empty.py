"""The empty caption's pooled CLIP embedding of a Stage B run, kept in the run so ``--resume`` needs no source.

Dropped captions (``caption_dropout``), and every sample of a store without text, are conditioned on the
empty caption's pooled embedding (1, 1, c_clip). It is part of the training maths, so ``run.json`` records
it exactly (float32 little-endian bytes in base64, with its shape and sha256): a resumed run takes it from
there, and its source (the ``--init`` weights folder, ``--text-encoder`` or ``empty_pooled``) need not be given
again. One given again must be bit-equal; a different one is refused rather than changed mid-run, since
N/2 + resume + N/2 updates must equal N straight ones and the dropped samples would otherwise learn a
second meaning of "no caption". How the store's text is read (stored / text encoder / empty) must not
change either.
"""
from __future__ import annotations

import base64
import hashlib
from typing import Any

import numpy as np
import torch

from cascadekit.codec.errors import InputError

KEY = "empty_caption"  # the run.json entry


def empty_record(empty: torch.Tensor | None) -> dict[str, Any] | None:
    """``{shape, sha256, float32_base64}`` of the (1, 1, c_clip) embedding (None stays None)."""
    if empty is None:
        return None
    raw = empty.detach().float().cpu().contiguous().reshape(1, 1, -1).numpy().astype("<f4").tobytes()
    return {"shape": [1, 1, len(raw) // 4], "sha256": hashlib.sha256(raw).hexdigest(),
            "float32_base64": base64.b64encode(raw).decode("ascii")}


def empty_from_record(rec: dict[str, Any], where: str = "run.json") -> torch.Tensor:
    """The (1, 1, c_clip) float32 tensor of :func:`empty_record`; InputError when the entry is damaged."""
    try:
        raw = base64.b64decode(rec["float32_base64"], validate=True)
        shape = tuple(int(s) for s in rec["shape"])
        ok = hashlib.sha256(raw).hexdigest() == rec["sha256"] and len(raw) == 4 * int(np.prod(shape))
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{where}: the recorded empty-caption embedding is damaged ({type(e).__name__}: {e})") from None
    if not ok:
        raise InputError(f"{where}: the recorded empty-caption embedding does not match its sha256 / shape (damaged)")
    return torch.from_numpy(np.frombuffer(raw, dtype="<f4").copy()).reshape(shape)


def resumed_empty(recorded: dict[str, Any], given: torch.Tensor | None) -> torch.Tensor | None:
    """The empty-caption embedding of a resumed run: the recorded one (``given`` must then be bit-equal), or
    ``given`` for a run recorded without one (older run.json)."""
    rec = recorded.get(KEY)
    if rec is None:
        return given
    saved = empty_from_record(rec)
    if given is not None and not torch.equal(given.detach().float().cpu().reshape(saved.shape), saved):
        raise InputError("--resume: the empty caption's pooled embedding given now (from --init, --text-encoder "
                         "or empty_pooled) differs from the one this run was trained with (recorded in run.json); "
                         "leave the source out to use the recorded one, or train into a new --out folder")
    return saved


def check_text_source(recorded: dict[str, Any], now: str) -> None:
    """How the store's text becomes Stage B's clip input must not change on resume."""
    was = recorded.get("text")
    if was is not None and was != now:
        hint = " (pass --text-encoder again)" if was == "text encoder" else ""
        raise InputError(f"--resume: this run read its text as {was!r}, now it would be {now!r}{hint}; that changes "
                         "the training maths")
