"""Where each component's weights sit in a folder: official file names, diffusers subfolders, the
``cascadekit.json`` sidecar, and the search of one folder for one component."""
from __future__ import annotations

import json
from pathlib import Path

from cascadekit.codec.errors import InputError, WeightsError

SIDECAR = "cascadekit.json"
MODELS = ("stage_a", "effnet", "previewer", "stage_b", "stage_c")
EXTRAS = ("text_encoder", "tokenizer", "image_encoder")
COMPONENTS = MODELS + EXTRAS


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
    raise InputError(f"unknown model component {component!r}; choose one of {', '.join(MODELS)}")


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


def read_json(path: Path) -> dict:
    """A JSON file as a dict; a :class:`WeightsError` naming the file when it cannot be read."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{path}: cannot read JSON ({e})") from None


def sidecar(root: Path) -> dict:
    """The ``cascadekit.json`` sidecar of a weights folder ({} when there is none)."""
    p = root / SIDECAR
    return read_json(p) if p.is_file() else {}


def diffusers_weights_present(folder: Path) -> bool:
    """Whether ``folder`` holds a diffusers model: ``config.json`` and a safetensors file (or index)."""
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors*"))


def single_model_folder(root: Path) -> str | None:
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


def find_local(root: Path, component: str, variant: str | None) -> tuple[Path, str] | None:
    """``(path, format)`` of ``component`` inside ``root``, or None."""
    if component in MODELS:
        for name in official_names(component, variant):
            if (root / name).is_file():
                return root / name, "official"
        for sub in diffusers_folders(component, variant):
            if diffusers_weights_present(root / sub):
                return root / sub, "diffusers"
        if single_model_folder(root) == component and diffusers_weights_present(root):
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


def expected_text(component: str, variant: str | None) -> str:
    """The file / folder names ``component`` may have, for the not-found message."""
    names = [f"{n}" for n in official_names(component, variant)] if component in MODELS else []
    names += [f"{d}/ (diffusers)" for d in diffusers_folders(component, variant)]
    if component == "tokenizer":
        names = ["tokenizer/ (vocab.json + merges.txt or tokenizer.json)"]
    elif component in EXTRAS:
        names = [f"{component}/ (config.json + weights)"]
    return " or ".join(names)


__all__ = ["COMPONENTS", "EXTRAS", "MODELS", "SIDECAR", "diffusers_folders", "diffusers_weights_present",
           "expected_text", "find_local", "official_names", "read_json", "sidecar", "single_model_folder"]
