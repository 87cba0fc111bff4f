"""Resolve where each Stable Cascade model's weights live: a folder, a diffusers snapshot, or a hub id.

``resolve_source(source, stage_b='lite', stage_c=None, need=(...))`` returns a :class:`WeightSet`
(paths, formats, constructor kwargs/presets, the Stage A latent scale, the tiny flag).

Accepted ``source`` values (a single one or a list; every component is taken from the FIRST source
that has it, so ``[prior_snapshot, decoder_snapshot]`` works):

(a) **Official folder**: ``stage_a.safetensors``, ``effnet_encoder.safetensors``, ``previewer.safetensors``,
    ``stage_b[_lite][_bf16].safetensors``, ``stage_c[_lite][_bf16].safetensors``, optional
    ``text_encoder/``, ``tokenizer/``, ``image_encoder/`` (+ ``feature_extractor/``). When both the
    float32 file and the ``_bf16`` file exist, the float32 one is used (it is the more precise copy;
    cast with ``dtype=`` when loading); otherwise whichever exists.
(b) **diffusers snapshot**: ``decoder/`` or ``decoder_lite/`` (Stage B), ``prior/`` or ``prior_lite/``
    (Stage C), ``vqgan/`` (Stage A), ``text_encoder/``, ``tokenizer/``, ``image_encoder/``,
    ``feature_extractor/``. diffusers keeps the prior (``stabilityai/stable-cascade-prior``) and the
    decoder (``stabilityai/stable-cascade``) in separate repos: pass either, or both as a list.
    The VQGAN's ``vqgan/config.json`` ``scale_factor`` (default 0.3764 when absent) is used and, as in
    diffusers, it is applied OUTSIDE the model (see :attr:`WeightSet.outside_scale`). A folder that
    is itself one diffusers model (``config.json`` with ``_class_name`` ``StableCascadeUNet`` or
    ``PaellaVQModel``) is accepted as that component.
    When a folder holds both official files and diffusers subfolders (the ``stabilityai/stable-cascade``
    repo does), the official files win.
(c) **Hub id** (``owner/name`` that is not an existing local path): fetched with
    ``huggingface_hub.snapshot_download`` limited to the needed files (official ``*_bf16`` files at
    the repo root first, since the official inference configs use them; diffusers subfolders only
    for what is still missing). Offline (``HF_HUB_OFFLINE=1``) only the local hub cache is used.

The EfficientNet encoder and the Previewer exist only as official files (diffusers has no
counterpart): they must come from an official folder or the root of ``stabilityai/stable-cascade``.

A ``cascadekit.json`` sidecar in a weights folder may carry constructor kwargs per model
(``{"models": {"stage_b": {...}, ...}, "tiny_random_weights": true, "warning": "..."}``); the tiny
random weight set (:mod:`cascadekit.codec.weights.tiny`) relies on it. Without it, official files
get the preset their name says (``lite`` / ``big`` / ``official``), checked against the shapes in the
file header, and diffusers folders get kwargs translated from their ``config.json``.

If something needed cannot be found, ONE :class:`WeightsError` lists every missing component with
the file names expected and every place that was searched.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from cascadekit.codec.errors import InputError, WeightsError
from cascadekit.codec.models.presets import FILE_SIGNATURES, preset_from_shapes
from cascadekit.codec.weights.diffusers_config import (DIFFUSERS_VQGAN_SCALE, unet_kwargs_from_diffusers,
                                                       vqgan_kwargs_from_diffusers)
from cascadekit.codec.weights.hub import hf_cache_snapshot, hub_patterns, is_hub_id
from cascadekit.codec.weights.hub import hub_download as _hub_download  # a module global: tests replace it
from cascadekit.codec.weights.io import safetensors_header
from cascadekit.codec.weights.layout import (COMPONENTS, EXTRAS, MODELS, SIDECAR, diffusers_folders, expected_text,
                                             find_local, official_names, read_json, sidecar)

__all__ = ["COMPONENTS", "DEFAULT_NEED", "DIFFUSERS_VQGAN_SCALE", "EXTRAS", "MODELS", "OFFICIAL_STAGE_A_SCALE",
           "SIDECAR", "WeightSet", "diffusers_folders", "official_names", "resolve_source",
           "unet_kwargs_from_diffusers", "vqgan_kwargs_from_diffusers"]

DEFAULT_NEED = ("stage_a", "effnet", "stage_b")
OFFICIAL_STAGE_A_SCALE = 0.43  # official StageA constructor default, applied inside encode/decode


@dataclass
class WeightSet:
    """Resolved weight locations. Paths are ``None`` for components that were not needed and not found.

    ``formats[c]`` is ``'official'`` or ``'diffusers'``; ``model_kwargs[c]`` holds explicit constructor
    kwargs (from ``cascadekit.json`` or a diffusers ``config.json``); ``presets[c]`` the preset name
    otherwise (``'official'``, ``'lite'``, ``'big'``). ``scale_factor`` is the Stage A latent scale and
    ``scale_in_model`` says whether the Stage A model applies it itself (official) or the caller must
    (diffusers VQGAN, see :attr:`outside_scale`).
    """

    stage_a: Path | None = None
    effnet: Path | None = None
    previewer: Path | None = None
    stage_b: Path | None = None
    stage_c: Path | None = None
    text_encoder: Path | None = None
    tokenizer: Path | None = None
    image_encoder: Path | None = None
    image_processor: Path | None = None  # folder with preprocessor_config.json
    stage_b_variant: str = "lite"
    stage_c_variant: str | None = None
    formats: dict = field(default_factory=dict)
    model_kwargs: dict = field(default_factory=dict)
    presets: dict = field(default_factory=dict)
    scale_factor: float = OFFICIAL_STAGE_A_SCALE
    scale_in_model: bool = True
    tiny: bool = False
    warning: str | None = None
    roots: tuple = ()  # every local folder searched, in order

    def path(self, component: str) -> Path:
        """The resolved path of ``component``; :class:`WeightsError` if it was not found."""
        p = getattr(self, component)
        if p is None:
            raise WeightsError(
                f"no {component} weights were resolved from {[str(r) for r in self.roots]}; "
                f"pass need=(..., '{component}') to resolve_source to get a full list of what was looked for"
            )
        return p

    @property
    def outside_scale(self) -> float:
        """Factor the caller applies around a Stage A model built with ``stage_a_kwargs()``.

        Multiply Stage B's latents by it before ``StageA.decode`` and divide ``StageA.encode``'s
        output by it. 1.0 for official weights (the model scales by 0.43 itself); the VQGAN
        ``scale_factor`` for diffusers weights (the model is built with ``scale_factor=1``).
        """
        return 1.0 if self.scale_in_model else self.scale_factor

    def stage_a_kwargs(self) -> dict | None:
        """Explicit Stage A kwargs (scale_factor 1.0 for diffusers, see :attr:`outside_scale`), or None for a preset."""
        kw = self.model_kwargs.get("stage_a")
        if kw is None:
            return None
        kw = dict(kw)
        kw["scale_factor"] = self.scale_factor if self.scale_in_model else 1.0
        return kw

    @property
    def weights_dir(self) -> Path | None:
        """The first folder searched (where caches such as ``empty_caption.safetensors`` go)."""
        return self.roots[0] if self.roots else None


class _Search:
    """What the search of the sources found so far: component -> (path, format, root), and where it looked."""

    def __init__(self, wanted: list[str], variants: dict[str, str | None]):
        self.wanted, self.variants = wanted, variants
        self.found: dict[str, tuple[Path, str, Path]] = {}
        self.searched: list[str] = []
        self.roots: list[Path] = []

    def scan(self, root: Path, label: str) -> None:
        """Take every still-missing component ``root`` holds."""
        self.roots.append(root)
        self.searched.append(f"{root} ({label})")
        for comp in self.wanted:
            if comp not in self.found:
                hit = find_local(root, comp, self.variants.get(comp))
                if hit:
                    self.found[comp] = (hit[0], hit[1], root)

    def hub(self, repo_id: str, need: tuple[str, ...]) -> None:
        """Download what is still missing from hub repo ``repo_id``, in phases (see :func:`hub_patterns`)."""
        for phase in (1, 2, 3):
            todo = [c for c in need if c not in self.found]
            pats = sorted({p for c in todo for p in hub_patterns(c, self.variants.get(c), phase)})
            if not pats:
                continue
            folder, note = _hub_download(repo_id, pats + [SIDECAR])
            if folder is None:
                self.searched.append(f"hub:{repo_id} ({note})")
                return
            self.scan(folder, f"hub:{repo_id} snapshot, phase {phase}")

    def local(self, root: Path) -> None:
        """Search a local folder (a hub-cache repo folder at its ``refs/main`` snapshot)."""
        if not root.exists():
            self.searched.append(f"{root} (does not exist)")
        elif not root.is_dir():
            self.searched.append(f"{root} (not a folder)")
        else:
            snap = hf_cache_snapshot(root)
            if snap is not None:
                self.scan(snap.resolve(), f"hub cache snapshot of {root.name}")
            else:
                self.scan(root.resolve(), "folder")

    def missing_error(self, missing: list[str]) -> WeightsError:
        """ONE error naming every missing component, the names expected and every place searched."""
        lines = [f"cannot find the weights for: {', '.join(missing)}"]
        for c in missing:
            v = self.variants.get(c)
            lines.append(f"  {c}{' (' + v + ')' if v else ''}: expected {expected_text(c, v)}")
        lines.append("searched:")
        lines += [f"  {p}" for p in self.searched] or ["  (nothing)"]
        lines.append(
            "Pass a folder with the official Stable Cascade files, a diffusers snapshot of "
            "stabilityai/stable-cascade (decoder) and/or stabilityai/stable-cascade-prior, or a hub id while online. "
            "The effnet encoder and previewer exist only as official files (root of stabilityai/stable-cascade)."
        )
        return WeightsError("\n".join(lines))


def _check_request(stage_b: str, stage_c: str | None, need: Iterable[str]) -> tuple[tuple[str, ...], dict]:
    """``(need, variants)`` checked: known variants and component names (InputError otherwise)."""
    if stage_b not in ("lite", "big"):
        raise InputError(f"stage_b must be 'lite' or 'big', got {stage_b!r}")
    if stage_c not in ("lite", "big", None):
        raise InputError(f"stage_c must be 'lite', 'big' or None, got {stage_c!r}")
    need = tuple(need)
    unknown = [c for c in need if c not in COMPONENTS]
    if unknown:
        raise InputError(f"unknown component(s) {unknown}; choose from {COMPONENTS}")
    if "stage_c" in need and stage_c is None:
        stage_c = "lite"
    return need, {"stage_b": stage_b, "stage_c": stage_c}


def resolve_source(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    stage_b: str = "lite",
    stage_c: str | None = None,
    need: Iterable[str] = DEFAULT_NEED,
) -> WeightSet:
    """Find the weight files of every needed component (and any optional one that is present).

    ``stage_b``: ``'lite'`` (700M) or ``'big'`` (1.5B); ``stage_c``: ``'lite'`` (1B), ``'big'`` (3.6B)
    or None (not wanted; ``'lite'`` is assumed when ``need`` contains ``stage_c``). ``need``: components
    that must be found, from ``stage_a, effnet, previewer, stage_b, stage_c, text_encoder, tokenizer,
    image_encoder``. A hub-cache folder (``models--org--name``) is read at its ``refs/main`` snapshot.
    Raises one :class:`WeightsError` naming every missing component, the file names expected and
    every place searched.
    """
    need, variants = _check_request(stage_b, stage_c, need)
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if not sources:
        raise WeightsError("no weights source given")
    search = _Search([c for c in COMPONENTS if not (c == "stage_c" and variants["stage_c"] is None)], variants)
    for src in sources:
        if isinstance(src, str) and is_hub_id(str(src)):
            search.hub(str(src), need)
        else:
            search.local(Path(os.path.expanduser(str(src))))
    missing = [c for c in need if c not in search.found]
    if missing:
        raise search.missing_error(missing)
    ws = _weight_set(search, variants)
    if ws.tiny:
        warnings.warn(f"{ws.weights_dir}: {ws.warning}", stacklevel=2)
    return ws


def _weight_set(search: _Search, variants: dict) -> WeightSet:
    """The :class:`WeightSet` of what the search found: paths, formats, kwargs or presets, Stage A scale."""
    ws = WeightSet(stage_b_variant=variants["stage_b"], stage_c_variant=variants["stage_c"],
                   roots=tuple(dict.fromkeys(search.roots)))
    for comp, (path, fmt, root) in search.found.items():
        setattr(ws, comp, path)
        ws.formats[comp] = fmt
        if comp in MODELS:
            _describe_model(ws, comp, path, fmt, sidecar(root), variants.get(comp))
    if ws.image_encoder is not None:
        for cand in (ws.image_encoder, ws.image_encoder.parent / "feature_extractor"):
            if (cand / "preprocessor_config.json").is_file():
                ws.image_processor = cand
                break
    if ws.stage_a is not None:
        if ws.formats["stage_a"] == "diffusers":
            ws.scale_factor = float(read_json(ws.stage_a / "config.json").get("scale_factor", DIFFUSERS_VQGAN_SCALE))
            ws.scale_in_model = False
        else:
            ws.scale_factor = float(ws.model_kwargs.get("stage_a", {}).get("scale_factor", OFFICIAL_STAGE_A_SCALE))
            ws.scale_in_model = True
    return ws


def _describe_model(ws: WeightSet, comp: str, path: Path, fmt: str, side: dict, variant: str | None) -> None:
    """Record how to build model ``comp``: sidecar kwargs, else diffusers config kwargs, else its preset."""
    if side.get("tiny_random_weights"):
        ws.tiny = True
        ws.warning = side.get("warning") or "tiny RANDOM weights: outputs are meaningless"
    kw = (side.get("models") or {}).get(comp)
    if kw is not None:
        ws.model_kwargs[comp] = dict(kw)
    elif fmt == "diffusers":
        cfg = read_json(path / "config.json")
        ws.model_kwargs[comp] = vqgan_kwargs_from_diffusers(cfg) if comp == "stage_a" else unet_kwargs_from_diffusers(cfg, comp)
    else:
        ws.presets[comp] = _official_preset(path, comp, variant)


def _official_preset(path: Path, component: str, variant: str | None) -> str:
    """Preset named by the file, checked against the header shapes where lite and big differ
    (:func:`~cascadekit.codec.models.presets.preset_from_shapes`)."""
    if component not in FILE_SIGNATURES:
        return "official"
    if path.suffix != ".safetensors":
        return variant
    shapes = {k: v["shape"] for k, v in safetensors_header(path).items() if isinstance(v, dict) and "shape" in v}
    return preset_from_shapes(shapes, component, variant, str(path), f"add its constructor kwargs to {SIDECAR} beside it")
