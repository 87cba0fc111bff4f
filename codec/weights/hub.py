"""The Hugging Face hub side of weight resolution: hub ids, download patterns per phase, snapshot
downloads (offline: the local cache only), and hub-cache repo folders (``models--org--name``).

``huggingface_hub`` is imported lazily inside the functions: it is optional and only needed for hub ids.
"""
from __future__ import annotations

import os
from pathlib import Path

from cascadekit.codec.weights.layout import MODELS, diffusers_folders, official_names


def is_hub_id(source: str) -> bool:
    """Whether ``source`` reads as a hub id (``owner/name``) rather than a local path."""
    if os.path.exists(source) or source.startswith((".", "/", "~")) or "\\" in source:
        return False
    parts = source.split("/")
    return len(parts) == 2 and all(parts)


def hub_patterns(component: str, variant: str | None, phase: int) -> list[str]:
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


OFFLINE_VARS = ("CASCADEKIT_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")  # as metrics/download.py


def offline_reason() -> str | None:
    """``"HF_HUB_OFFLINE=1"`` (the first offline variable set), or None when the hub may be asked."""
    for var in OFFLINE_VARS:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var}={os.environ[var]}"
    return None


def hub_download(repo_id: str, patterns: list[str]) -> tuple[Path | None, str]:
    """Returns (snapshot folder or None, note for the error message)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None, "huggingface_hub is not installed"
    offline = offline_reason()
    try:
        folder = snapshot_download(repo_id, allow_patterns=patterns, local_files_only=bool(offline), etag_timeout=10)
    except Exception as e:  # offline, not cached, no network, gated, unknown repo ...
        cache = hub_cache_dir()
        where = f"the local hub cache {cache}" if cache else "the local hub cache"
        why = (f"offline ({offline}) and not in {where}" if offline else
               f"download failed and not in {where}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return None, why
    return Path(folder), "hub snapshot " + str(folder)


def hub_cache_dir() -> str | None:
    """The hub cache folder huggingface_hub actually reads (fixed when it was imported), for messages."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    return str(getattr(constants, "HF_HUB_CACHE", "")) or None


def hf_cache_snapshot(root: Path) -> Path | None:
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


__all__ = ["hf_cache_snapshot", "hub_cache_dir", "hub_download", "hub_patterns", "is_hub_id"]
