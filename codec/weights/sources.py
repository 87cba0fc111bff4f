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

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from cascadekit.codec.errors import InputError, WeightsError
from cascadekit.codec.weights.io import safetensors_header

SIDECAR = "cascadekit.json"
MODELS = ("stage_a", "effnet", "previewer", "stage_b", "stage_c")
EXTRAS = ("text_encoder", "tokenizer", "image_encoder")
COMPONENTS = MODELS + EXTRAS
DEFAULT_NEED = ("stage_a", "effnet", "stage_b")
OFFICIAL_STAGE_A_SCALE = 0.43  # official StageA constructor default, applied inside encode/decode
DIFFUSERS_VQGAN_SCALE = 0.3764  # PaellaVQModel config default, applied by the pipeline

# the shape that tells lite from big in an official file: key -> {dim0: preset}
_SIGNATURE = {
    "stage_b": ("down_downscalers.1.1.weight", {640: "big", 576: "lite"}),
    "stage_c": ("clip_txt_mapper.weight", {2048: "big", 1536: "lite"}),
}


def official_names(component: str, variant: str | None = None) -> list[str]:
    """Official file names for a component, most preferred first (float32 before ``_bf16``)."""
    if component == "stage_a":
        return ["stage_a.safetensors"]
    if component == "effnet":
        return ["effnet_encoder.safetensors"]
    if component == "previewer":
        return ["previewer.safetensors"]
    if component in ("stage_b", "stage_c"):
        stem = component + ("_lite" if variant == "lite" else "")
        return [f"{stem}.safetensors", f"{stem}_bf16.safetensors"]
    raise ValueError(component)


def diffusers_folders(component: str, variant: str | None = None) -> list[str]:
    """diffusers subfolder names for a component (empty for effnet/previewer: no diffusers version)."""
    suffix = "_lite" if variant == "lite" else ""
    return {
        "stage_a": ["vqgan"],
        "stage_b": [f"decoder{suffix}"],
        "stage_c": [f"prior{suffix}"],
        "text_encoder": ["text_encoder"],
        "tokenizer": ["tokenizer"],
        "image_encoder": ["image_encoder"],
    }.get(component, [])


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


def _is_hub_id(source: str) -> bool:
    if os.path.exists(source) or source.startswith((".", "/", "~")) or "\\" in source:
        return False
    parts = source.split("/")
    return len(parts) == 2 and all(parts)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{path}: cannot read JSON ({e})") from None


def _sidecar(root: Path) -> dict:
    p = root / SIDECAR
    return _read_json(p) if p.is_file() else {}


def _diffusers_weights_present(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors*"))


def unet_kwargs_from_diffusers(cfg: dict, component: str) -> dict:
    """Translate a diffusers ``StableCascadeUNet`` config into official StageB/StageC constructor kwargs."""
    letters = {"SDCascadeResBlock": "C", "SDCascadeTimestepBlock": "T", "SDCascadeAttnBlock": "A"}
    try:
        kw = {
            "c_in": cfg["in_channels"],
            "c_out": cfg["out_channels"],
            "c_r": cfg.get("timestep_ratio_embedding_dim", 64),
            "patch_size": cfg["patch_size"],
            "c_cond": cfg["conditioning_dim"],
            "c_hidden": list(cfg["block_out_channels"]),
            "nhead": [h if h else -1 for h in cfg["num_attention_heads"]],
            "blocks": [list(cfg["down_num_layers_per_block"]), list(cfg["up_num_layers_per_block"])],
            "block_repeat": [list(cfg["down_blocks_repeat_mappers"]), list(cfg["up_blocks_repeat_mappers"])],
            "level_config": ["".join(letters[b] for b in types) for types in cfg["block_types_per_layer"]],
            "c_clip_seq": cfg.get("clip_seq", 4),
            "kernel_size": cfg.get("kernel_size", 3),
            "dropout": _per_level(cfg.get("dropout", 0.0), len(cfg["block_out_channels"])),
            "self_attn": _uniform_self_attn(cfg.get("self_attn", True)),
            "t_conds": list(cfg.get("timestep_conditioning_type", ["sca"])),
        }
        if component == "stage_b":
            kw.update(c_clip=cfg["clip_text_pooled_in_channels"], c_effnet=cfg["effnet_in_channels"],
                      c_pixels=cfg["pixel_mapper_in_channels"])
        else:
            kw.update(c_clip_text=cfg["clip_text_in_channels"], c_clip_text_pooled=cfg["clip_text_pooled_in_channels"],
                      c_clip_img=cfg["clip_image_in_channels"], switch_level=cfg.get("switch_level") or [False])
    except KeyError as e:
        raise WeightsError(f"diffusers UNet config lacks {e}; is it a Stable Cascade prior/decoder config?") from None
    return kw


def _per_level(value, levels: int) -> list:
    """diffusers allows one dropout for every level (a number) or one per level (a list)."""
    if isinstance(value, (int, float)):
        return [value] * levels
    return list(value)


def _uniform_self_attn(value) -> bool:
    """diffusers allows ``self_attn`` per level; the official networks have one flag for all levels."""
    if isinstance(value, bool):
        return value
    flags = set(bool(v) for v in value)
    if len(flags) != 1:
        raise WeightsError(f"diffusers UNet config has self_attn={list(value)} per level; the official "
                           "Stage B/C networks support only one value for every level")
    return flags.pop()


def vqgan_kwargs_from_diffusers(cfg: dict) -> dict:
    """Translate a diffusers ``PaellaVQModel`` config into official StageA kwargs (scale_factor as configured)."""
    return {
        "levels": cfg.get("levels", 2),
        "bottleneck_blocks": cfg.get("bottleneck_blocks", 12),
        "c_hidden": cfg.get("embed_dim", 384),
        "c_latent": cfg.get("latent_channels", 4),
        "codebook_size": cfg.get("num_vq_embeddings", 8192),
        "scale_factor": float(cfg.get("scale_factor", DIFFUSERS_VQGAN_SCALE)),
    }


def _single_model_folder(root: Path) -> str | None:
    """If ``root`` is itself one diffusers model folder, which component it is."""
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        return None
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    cls = cfg.get("_class_name")
    if cls == "PaellaVQModel":
        return "stage_a"
    if cls == "StableCascadeUNet":
        return "stage_b" if cfg.get("effnet_in_channels") else "stage_c"
    return None


def _find_local(root: Path, component: str, variant: str | None) -> tuple[Path, str] | None:
    """``(path, format)`` of ``component`` inside ``root``, or None."""
    if component in MODELS:
        for name in official_names(component, variant):
            if (root / name).is_file():
                return root / name, "official"
        for sub in diffusers_folders(component, variant):
            if _diffusers_weights_present(root / sub):
                return root / sub, "diffusers"
        if _single_model_folder(root) == component and _diffusers_weights_present(root):
            return root, "diffusers"
        return None
    sub = root / component
    if component == "tokenizer":
        if (sub / "vocab.json").is_file() or (sub / "tokenizer.json").is_file():
            return sub, "transformers"
        return None
    if (sub / "config.json").is_file():
        return sub, "transformers"
    return None


def _expected_text(component: str, variant: str | None) -> str:
    names = [f"{n}" for n in official_names(component, variant)] if component in MODELS else []
    names += [f"{d}/ (diffusers)" for d in diffusers_folders(component, variant)]
    if component == "tokenizer":
        names = ["tokenizer/ (vocab.json + merges.txt or tokenizer.json)"]
    elif component in EXTRAS:
        names = [f"{component}/ (config.json + weights)"]
    return " or ".join(names)


def _hub_patterns(component: str, variant: str | None, phase: int) -> list[str]:
    """allow_patterns for a hub download. Phase 1: official root files (``_bf16`` for Stage B/C, as the
    official configs use), transformers folders. Phase 2: the float32 official file and diffusers
    bf16 variants. Phase 3: diffusers float32 files."""
    if phase == 1:
        if component in ("stage_b", "stage_c"):
            return [official_names(component, variant)[1]]
        if component in MODELS:
            return official_names(component, variant)
        if component == "tokenizer":
            return ["tokenizer/*"]
        pats = [f"{component}/*.json", f"{component}/model.safetensors", f"{component}/model.safetensors.index.json",
                f"{component}/model-*.safetensors"]
        if component == "image_encoder":
            pats.append("feature_extractor/*")
        return pats
    if component not in MODELS:
        return []
    pats = official_names(component, variant)[:1] if (phase == 2 and component in ("stage_b", "stage_c")) else []
    for sub in diffusers_folders(component, variant):
        if phase == 2:
            pats += [f"{sub}/config.json", f"{sub}/*.bf16.safetensors", f"{sub}/*.safetensors.index.bf16.json"]
        else:
            pats += [f"{sub}/config.json", f"{sub}/diffusion_pytorch_model.safetensors",
                     f"{sub}/diffusion_pytorch_model.safetensors.index.json", f"{sub}/diffusion_pytorch_model-*.safetensors"]
    return pats


def _hub_download(repo_id: str, patterns: list[str]) -> tuple[Path | None, str]:
    """Returns (snapshot folder or None, note for the error message)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None, "huggingface_hub is not installed"
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        folder = snapshot_download(repo_id, allow_patterns=patterns, local_files_only=offline, etag_timeout=10)
    except Exception as e:  # offline, not cached, no network, gated, unknown repo ...
        cache = _hub_cache_dir()
        where = f"the local hub cache {cache}" if cache else "the local hub cache"
        why = (f"offline (HF_HUB_OFFLINE=1) and not in {where}" if offline else
               f"download failed and not in {where}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return None, why
    return Path(folder), "hub snapshot " + str(folder)


def _hub_cache_dir() -> str | None:
    """The hub cache folder huggingface_hub actually reads (fixed when it was imported), for messages."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    return str(getattr(constants, "HF_HUB_CACHE", "")) or None


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
    variants = {"stage_b": stage_b, "stage_c": stage_c}
    wanted = [c for c in COMPONENTS if not (c == "stage_c" and stage_c is None)]

    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if not sources:
        raise WeightsError("no weights source given")
    found: dict[str, tuple[Path, str, Path]] = {}  # component -> (path, format, root)
    searched: list[str] = []
    roots: list[Path] = []

    def scan(root: Path, label: str) -> None:
        roots.append(root)
        searched.append(f"{root} ({label})")
        for comp in wanted:
            if comp not in found:
                hit = _find_local(root, comp, variants.get(comp))
                if hit:
                    found[comp] = (hit[0], hit[1], root)

    for src in sources:
        s = str(src)
        if isinstance(src, str) and _is_hub_id(s):
            for phase in (1, 2, 3):
                todo = [c for c in need if c not in found]
                pats = sorted({p for c in todo for p in _hub_patterns(c, variants.get(c), phase)})
                if not pats:
                    continue
                folder, note = _hub_download(s, pats + [SIDECAR])
                if folder is None:
                    searched.append(f"hub:{s} ({note})")
                    break
                scan(folder, f"hub:{s} snapshot, phase {phase}")
            continue
        root = Path(os.path.expanduser(s))
        if not root.exists():
            searched.append(f"{root} (does not exist)")
            continue
        if not root.is_dir():
            searched.append(f"{root} (not a folder)")
            continue
        snap = _hf_cache_snapshot(root)
        if snap is not None:
            scan(snap.resolve(), f"hub cache snapshot of {root.name}")
        else:
            scan(root.resolve(), "folder")

    missing = [c for c in need if c not in found]
    if missing:
        lines = [f"cannot find the weights for: {', '.join(missing)}"]
        for c in missing:
            lines.append(f"  {c}{' (' + variants[c] + ')' if variants.get(c) else ''}: expected {_expected_text(c, variants.get(c))}")
        lines.append("searched:")
        lines += [f"  {p}" for p in searched] or ["  (nothing)"]
        lines.append(
            "Pass a folder with the official Stable Cascade files, a diffusers snapshot of "
            "stabilityai/stable-cascade (decoder) and/or stabilityai/stable-cascade-prior, or a hub id while online. "
            "The effnet encoder and previewer exist only as official files (root of stabilityai/stable-cascade)."
        )
        raise WeightsError("\n".join(lines))

    ws = WeightSet(stage_b_variant=stage_b, stage_c_variant=stage_c, roots=tuple(dict.fromkeys(roots)))
    for comp, (path, fmt, root) in found.items():
        setattr(ws, comp, path)
        ws.formats[comp] = fmt
        if comp not in MODELS:
            continue
        side = _sidecar(root)
        if side.get("tiny_random_weights"):
            ws.tiny = True
            ws.warning = side.get("warning") or "tiny RANDOM weights: outputs are meaningless"
        kw = (side.get("models") or {}).get(comp)
        if kw is not None:
            ws.model_kwargs[comp] = dict(kw)
        elif fmt == "diffusers":
            cfg = _read_json(path / "config.json")
            ws.model_kwargs[comp] = vqgan_kwargs_from_diffusers(cfg) if comp == "stage_a" else unet_kwargs_from_diffusers(cfg, comp)
        else:
            ws.presets[comp] = _official_preset(path, comp, variants.get(comp))

    if ws.image_encoder is not None:
        for cand in (ws.image_encoder, ws.image_encoder.parent / "feature_extractor"):
            if (cand / "preprocessor_config.json").is_file():
                ws.image_processor = cand
                break

    if ws.stage_a is not None:
        if ws.formats["stage_a"] == "diffusers":
            ws.scale_factor = float(_read_json(ws.stage_a / "config.json").get("scale_factor", DIFFUSERS_VQGAN_SCALE))
            ws.scale_in_model = False
        else:
            ws.scale_factor = float(ws.model_kwargs.get("stage_a", {}).get("scale_factor", OFFICIAL_STAGE_A_SCALE))
            ws.scale_in_model = True
    if ws.tiny:
        warnings.warn(f"{ws.weights_dir}: {ws.warning}", stacklevel=2)
    return ws


def _hf_cache_snapshot(root: Path) -> Path | None:
    """For a hub-cache repo folder (``models--org--name`` with ``snapshots/``), its ``refs/main`` snapshot
    (else the most recently modified one); None for any other folder."""
    snaps = root / "snapshots"
    if not snaps.is_dir() or any((root / n).is_file() for n in ("config.json", "stage_a.safetensors")):
        return None
    ref = root / "refs" / "main"
    if ref.is_file() and (snaps / ref.read_text().strip()).is_dir():
        return snaps / ref.read_text().strip()
    found = sorted((d for d in snaps.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime)
    return found[-1] if found else None


def _official_preset(path: Path, component: str, variant: str | None) -> str:
    """Preset named by the file, checked against the header shapes where lite and big differ."""
    if component not in _SIGNATURE:
        return "official"
    if path.suffix != ".safetensors":
        return variant
    key, table = _SIGNATURE[component]
    info = safetensors_header(path).get(key)
    if info is None:
        raise WeightsError(f"{path}: has no {key!r}; it is not an official {component} checkpoint")
    actual = table.get(int(info["shape"][0]))
    if actual is None:
        raise WeightsError(
            f"{path}: {key} has shape {info['shape']}, which is neither the lite nor the big {component}; "
            f"add its constructor kwargs to {SIDECAR} beside it"
        )
    if actual != variant:
        raise WeightsError(f"{path}: the file name says {variant} but its shapes are those of the {actual} {component}")
    return actual
