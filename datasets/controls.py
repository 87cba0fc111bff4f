"""ControlNet controls precomputed into a latent store: the fields, their arrays, and how they are made.

Per sample group, one array per control plus its own status (``<array>_status``, 0 pending / 1 ok / 2 skipped),
written chunk by chunk, **data first, status last** (the latents' rule), so readers and resumes never see a
half-written control and a control can be added to a finished store later (:mod:`.add_controls`):

* ``control_canny``   (N, 224, 224) uint8: the official ``CannyFilter(resize=224)`` edge map (0 / 255) of the
  crop, i.e. :func:`cascadekit.generator.controls.canny_map`; the filter's last step (/255 + bilinear resize to
  the image size) happens at training time, so the result equals the official filter exactly.
* ``control_sr``      (N, 16, h/2, w/2) latent dtype: the EfficientNet latents of the crop nearest-downscaled ×0.5
  (:func:`~cascadekit.generator.controls.sr_latents`; the crop first resized as the encoder resizes it); the
  official ``SREffnetFilter``'s nearest ×2 happens at training time.
* ``control_inpaint`` (N, 3, H, W) uint8: the crop's pixels exactly as the encoder got them, stored
  **lossless** (zstd), so inpainting masks are drawn at training time on the true pixels.

* ``effnet_scales``  (N, S, 16, h_max, w_max) latent dtype: the EfficientNet latents of the crop nearest-downscaled
  by each factor of ``--effnet-scales`` (Stage B's condition, :mod:`.effnet_scales`); the group attributes
  ``effnet_scales`` / ``effnet_scale_sizes`` describe the slots. Same machinery, status and resume as the others.

Control names on the command line: ``canny``, ``sr``, ``inpaint`` (``--controls``); the scales have their own
option, ``--effnet-scales 0.5,0.75,1.0``, because they take factors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from cascadekit.codec.errors import InputError
from cascadekit.datasets import effnet_scales as ES
from cascadekit.datasets import store as S

if TYPE_CHECKING:
    from cascadekit.datasets.preprocess import PreprocessConfig

CONTROLS = ("canny", "sr", "inpaint")
ARRAY_OF = {"canny": "control_canny", "sr": "control_sr", "inpaint": "control_inpaint", ES.FIELD: ES.FIELD}
KINDS = (*CONTROLS, ES.FIELD)  # every kind of array this module writes (the scales: --effnet-scales)
CHUNK_BYTES = 8 << 20  # most raw bytes per control chunk (a divisor of chunk_rows rows)


def parse_controls(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"canny,sr"`` / ``["canny"]`` -> ``("canny", "sr")`` (store order, no repeats); unknown names: InputError."""
    if value is None:
        return ()
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if str(v).strip()]
    bad = [n for n in names if n not in CONTROLS]
    if bad:
        raise InputError(f"unknown control(s) {', '.join(map(repr, bad))} for --controls; choose from "
                         f"{', '.join(CONTROLS)} (comma-separated, e.g. --controls canny,sr)")
    return tuple(c for c in CONTROLS if c in names)


def control_chunk_rows(chunk_rows: int, row_bytes: int) -> int:
    """Rows per control chunk: the largest divisor of ``chunk_rows`` keeping a chunk <= :data:`CHUNK_BYTES`."""
    return max(d for d in range(1, chunk_rows + 1) if chunk_rows % d == 0 and (d == 1 or d * row_bytes <= CHUNK_BYTES))


@dataclass(frozen=True)
class ControlSpec:
    """One control array of a group: per-row shape and dtype (+ group attributes describing it)."""

    array: str
    shape: tuple[int, ...]
    dtype: str
    attrs: dict = field(default_factory=dict, hash=False)


def _sr_latents(encoder: Any, x: torch.Tensor) -> torch.Tensor:
    """EfficientNet latents of ``x`` (B,3,H,W in [0,1]) nearest-downscaled ×0.5, as the encoder sees images.

    A ``Codec`` (``effnet`` + ``encoder_resolution``): the crop is resized as ``Codec.encode`` resizes it, then
    :func:`~cascadekit.generator.controls.sr_latents`. Any other encoder: ``encode`` of the halved crop."""
    from cascadekit.codec.codec import resize_short_side_tensor
    from cascadekit.generator.controls import sr_latents

    effnet = getattr(encoder, "effnet", None)
    if isinstance(effnet, torch.nn.Module):
        x = resize_short_side_tensor(x, int(encoder.encoder_resolution))
        return sr_latents(x, effnet, downscale=True)
    return encoder.encode(F.interpolate(x.float(), scale_factor=0.5, mode="nearest")).float()


class ControlMaker:
    """Computes the requested controls of decoded crops (what ``encode --controls`` and ``add-controls`` store).

    controls: names of :data:`CONTROLS`; encoder: needed for ``sr`` and the scales (a ``Codec``, or any object
    whose ``encode`` maps images to latents); dtype: the store's latent dtype (``sr``, scales); effnet_scales:
    downscale factors in (0, 1] of the ``effnet_scales`` array (:mod:`.effnet_scales`; none: not made).
    """

    def __init__(self, controls: Iterable[str], encoder: Any = None, dtype: str = "float16",
                 effnet_scales: Iterable[float] | str = ()):
        self.controls = parse_controls(list(controls))
        self.scales = ES.parse_effnet_scales(effnet_scales) if effnet_scales else ()
        self.encoder, self.dtype = encoder, dtype
        if "sr" in self.controls and encoder is None:
            raise InputError("the sr control needs the EfficientNet encoder (pass the weights / a codec)")
        if self.scales and encoder is None:
            raise InputError("--effnet-scales needs the EfficientNet encoder (pass the weights / a codec)")

    @property
    def arrays(self) -> list[str]:
        """The arrays this maker writes, in store order."""
        return [ARRAY_OF[c] for c in self.controls] + ([ES.FIELD] if self.scales else [])

    def compute(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        """uint8 crops (n, 3, H, W) -> ``{array: (n, *shape)}`` for every requested control."""
        from cascadekit.generator.controls import canny_map

        out: dict[str, np.ndarray] = {}
        x = images.float().div(255.0)
        for c in self.controls:
            if c == "canny":
                out[ARRAY_OF[c]] = canny_map(x.cpu()).numpy()
            elif c == "sr":
                dev = getattr(self.encoder, "device", None) or "cpu"
                with torch.inference_mode():
                    out[ARRAY_OF[c]] = _sr_latents(self.encoder, x.to(dev)).float().cpu().numpy()
            else:
                out[ARRAY_OF[c]] = images.cpu().numpy().astype(np.uint8)
        if self.scales:
            out[ES.FIELD] = ES.pad_slots(self._scale_slots(x))
        return out

    def _scale_slots(self, x: torch.Tensor) -> list[torch.Tensor]:
        dev = getattr(self.encoder, "device", None) or "cpu"
        return ES.scale_slots(x.to(dev), self.encoder, self.scales)

    def specs(self, hw: tuple[int, int]) -> list[ControlSpec]:
        """Array specs of the controls of ``hw`` crops (found by computing them on a grey probe crop).
        InputError when a scale leaves a side of such a crop below 32 px."""
        if self.scales:
            ES.check_fits(self.scales, hw)
        grey = torch.full((1, 3, *hw), 128, dtype=torch.uint8)
        probe = self.compute(grey)
        attrs = {ES.FIELD: ES.group_attrs(self.scales, self._scale_slots(grey.float().div(255.0)))} \
            if self.scales else {}
        return [ControlSpec(a, tuple(v.shape[1:]), "uint8" if v.dtype == np.uint8 else self.dtype, attrs.get(a, {}))
                for a, v in probe.items()]


def create_control_arrays(g, specs: Iterable[ControlSpec], chunk_rows: int, replace: bool = False) -> None:
    """Create each control array of ``specs`` and its status in sample group ``g`` (pending), unless present
    with the same shape and dtype (``replace``: always recreate)."""
    n = int(g["status"].shape[0])
    version = S.FORMAT_VERSION
    names = set(g.array_keys())
    for sp in specs:
        same_attrs = all(g.attrs.get(k) == v for k, v in sp.attrs.items())  # e.g. other --effnet-scales
        if not replace and sp.array in names and tuple(g[sp.array].shape[1:]) == sp.shape \
                and str(g[sp.array].dtype) == sp.dtype and S.status_of(sp.array) in names and same_attrs:
            continue
        for name in (sp.array, S.status_of(sp.array)):
            if name in names:
                del g[name]
        row_bytes = int(np.prod(sp.shape)) * np.dtype(sp.dtype).itemsize
        cr = control_chunk_rows(chunk_rows, row_bytes)
        S.create_row_array(g, sp.array, (n, *sp.shape), (cr, *sp.shape), sp.dtype, 0, version)
        S.create_row_array(g, S.status_of(sp.array), (n,), (chunk_rows,), "uint8", S.STATUS_PENDING, version)
        g.attrs.update(sp.attrs)
    g.attrs["controls"] = sorted({*g.attrs.get("controls", []), *(sp.array for sp in specs)})


def preprocess_of(attrs: dict) -> "PreprocessConfig":
    """The :class:`~.preprocess.PreprocessConfig` a store was encoded with (its ``preprocess`` attribute)."""
    from cascadekit.datasets.preprocess import PreprocessConfig

    pre = dict(attrs.get("preprocess") or {})
    keys = ("resolution", "min_size", "max_pixels", "buckets", "max_input_bytes")
    return PreprocessConfig(**{k: pre[k] for k in keys if k in pre})


def is_file_source(source: str) -> bool:
    """Whether a stored ``source`` names a regular file that can be read again (not a tar member / memory)."""
    import os

    return bool(source) and os.path.isfile(source)


def load_crops(sources: list[str], cfg: "PreprocessConfig") -> tuple[torch.Tensor, list[str]]:
    """The crops of stored file ``sources`` prepared as ``encode`` prepared them: ``(uint8 (k,3,H,W) of the
    readable ones, reason per source ('' = read))``; a source that cannot be read again gets a skip reason."""
    from cascadekit.codec.errors import CascadeKitError
    from cascadekit.datasets.preprocess import load_and_prepare

    crops, reasons = [], []
    for src in sources:
        if not is_file_source(src):
            reasons.append("source_not_a_file")
            continue
        try:
            crops.append(load_and_prepare(src, cfg, src)[0])
            reasons.append("")
        except CascadeKitError as e:
            reasons.append(getattr(e, "reason", None) or "unreadable")
    if not crops:
        return torch.zeros((0, 3, 1, 1), dtype=torch.uint8), reasons
    return torch.from_numpy(np.stack(crops)), reasons


def stored_controls(g) -> list[str]:
    """Control names (of :data:`KINDS`: the controls and ``effnet_scales``) whose array and status exist in
    sample group ``g``."""
    names = set(g.array_keys())
    return [c for c in KINDS if ARRAY_OF[c] in names and S.status_of(ARRAY_OF[c]) in names]


__all__ = ["ARRAY_OF", "CONTROLS", "KINDS", "ControlMaker", "ControlSpec", "create_control_arrays", "is_file_source",
           "load_crops", "parse_controls", "preprocess_of", "stored_controls"]
