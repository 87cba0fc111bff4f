"""Export trained (or any) Stage C, Stage B and ControlNet weights for the other ecosystems.

``export_weights(source, out, to)``: ``source`` is a ``cascadekit train`` run (its newest intact checkpoint), one
checkpoint folder (``RUN/checkpoints/step_N``; ``ema=True`` takes its ``ema.safetensors``), a weights file in
the official or diffusers layout, or a diffusers model folder. ``to``:

``'diffusers'``  ``out/config.json`` + ``out/diffusion_pytorch_model.safetensors``: the layout of the ``prior/`` /
                 ``decoder/`` folders of ``stabilityai/stable-cascade``, loadable with
                 ``diffusers.StableCascadeUNet.from_pretrained(out)``. ControlNets have no diffusers class: an error.
``'official'``   one ``.safetensors`` in official key names, named as the release names it (``stage_c.safetensors``,
                 ``stage_c_lite_bf16.safetensors``, ``stage_b_lite.safetensors``, ``canny.safetensors`` ...): what
                 the official code and ComfyUI load.

``dtype``: ``'fp32'`` or ``'bf16'`` (floating tensors cast, the ``_bf16`` official name). ``out/export.json`` (written
last) records the source, its sha256 and the files. An earlier export in ``out`` is replaced only with
``overwrite=True`` (then the files its record lists are removed first); nothing else in ``out`` is touched.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cascadekit.codec.errors import InputError, OutputError, WeightsError
from cascadekit.codec.fsio import atomic_write, atomic_write_json, describe_os_error
from cascadekit.codec.models.controlnet import OFFICIAL_PROJ_BLOCKS
from cascadekit.codec.models.stage_b import infer_preset as infer_stage_b
from cascadekit.codec.models.stage_c import infer_preset as infer_stage_c
from cascadekit.codec.models.presets import preset_name_of
from cascadekit.codec.weights.controlnet import CONTROLNET_FILES, load_controlnet
from cascadekit.codec.weights.io import read_state_dict, sha256_file
from cascadekit.codec.weights.keys import official_to_diffusers, to_official
from cascadekit.codec.weights.load import diffusers_weights_file
from cascadekit.generator.checkpoint import META, checkpoint_weights, run_checkpoint
from cascadekit.generator.diffusers_unet_config import diffusers_unet_config
from cascadekit.generator.training.tensorfile import write_safetensors

TARGETS = ("diffusers", "official")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
RECORD = "export.json"
FORMAT = "cascadekit-export-1"
DIFFUSERS_FILE = "diffusion_pytorch_model.safetensors"
OFFICIAL_STEMS = {("stage_c", "big"): "stage_c", ("stage_c", "lite"): "stage_c_lite", ("stage_c", "tiny"): "stage_c_lite",
                  ("stage_b", "big"): "stage_b", ("stage_b", "lite"): "stage_b_lite", ("stage_b", "tiny"): "stage_b_lite"}


@dataclass(frozen=True)
class ExportSettings:
    """How to export: ``to`` 'diffusers' | 'official', ``dtype`` 'fp32' | 'bf16', ``ema`` (a checkpoint's EMA
    weights), ``overwrite`` (replace an earlier export in the output folder)."""

    to: str = "diffusers"
    dtype: str = "fp32"
    ema: bool = False
    overwrite: bool = False

    def check(self) -> None:
        if self.to not in TARGETS:
            raise InputError(f"export target must be one of {', '.join(TARGETS)}, got {self.to!r}")
        if self.dtype not in DTYPES:
            raise InputError(f"export dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")


@dataclass
class Model:
    """One network read for export: ``kind`` 'stage_b' | 'stage_c' | 'controlnet', official-key ``state``, its
    ``config`` (a model config dataclass), ``preset`` name and the weights ``path`` it came from."""

    kind: str
    state: dict[str, torch.Tensor]
    config: object
    preset: str
    path: Path


@dataclass
class ExportResult:
    """What :func:`export_weights` wrote: the files (record last), the network kind and preset, the source file."""

    files: list[Path] = field(default_factory=list)
    kind: str = ""
    preset: str = ""
    source: Path | None = None


# ------------------------------------------------------------------------------------------- the source
def weights_file(source: str | Path, ema: bool = False) -> Path:
    """The weights file or diffusers folder ``source`` names (a run -> its newest intact checkpoint -> its weights)."""
    p = Path(source)
    if not p.exists():
        raise InputError(f"{p} does not exist; give a training run, a checkpoint folder or a weights file")
    p = run_checkpoint(p)  # a run -> its newest intact checkpoint (as sampling and --stage-b-weights)
    if p.is_dir() and (p / META).is_file():
        lora = f"{p} is a LoRA checkpoint; export needs full weights (Stage C, Stage B or ControlNet)"
        return checkpoint_weights(p, ema, refuse=lambda name: lora if name == "lora.safetensors" else None)
    if ema:
        raise InputError("--ema needs a training run or checkpoint folder (with ema.safetensors)")
    if p.is_dir() and not (p / "config.json").is_file():
        raise InputError(f"{p} is a folder but neither a training run, a checkpoint nor a diffusers model folder")
    return p


def read_model(path: Path) -> Model:
    """The network at ``path`` (file or diffusers folder) in official key names, with its config.
    Stage A, the EfficientNet encoder and the Previewer are not exported (WeightsError)."""
    if path.is_dir():
        path = diffusers_weights_file(path)
    state = read_state_dict(path)
    if any(k.startswith("projections.") for k in state):
        net, info = load_controlnet(path)
        return Model("controlnet", net.state_dict(), info.config, info.control, path)
    state, kind = to_official(state)
    infer = {"stage_b": infer_stage_b, "stage_c": infer_stage_c}.get(kind)
    if infer is None:
        raise WeightsError(f"{path} holds {kind} weights; export supports Stage C, Stage B and ControlNet weights")
    cfg = infer(state)
    return Model(kind, state, cfg, preset_name_of(cfg), path)


# ------------------------------------------------------------------------------------------- the files
def _cast(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}


def official_name(model: Model, dtype: str) -> str:
    """The release's file name for ``model`` (``_bf16`` suffix for bf16 Stage B / C files)."""
    if model.kind == "controlnet":
        return CONTROLNET_FILES[model.preset][0]
    return OFFICIAL_STEMS[(model.kind, model.preset)] + ("_bf16" if dtype == "bf16" else "") + ".safetensors"


def planned_files(model: Model, settings: ExportSettings) -> dict[str, tuple[dict, dict]]:
    """file name -> (tensors, safetensors metadata) or, for ``config.json``, (config dict, {})."""
    state = _cast(model.state, DTYPES[settings.dtype])
    if settings.to == "official":
        meta = {"format": "pt"}
        if model.kind == "controlnet" and list(model.config.proj_blocks) != list(OFFICIAL_PROJ_BLOCKS):
            meta["proj_blocks"] = json.dumps(list(model.config.proj_blocks))  # read back by load_controlnet
        return {official_name(model, settings.dtype): (state, meta)}
    if model.kind == "controlnet":
        raise InputError("diffusers has no Stable Cascade ControlNet class, so a ControlNet cannot be exported "
                         "--to diffusers; use --to official (the file the official code and ComfyUI load)")
    config = diffusers_unet_config(model.config.kwargs(), model.kind)
    return {"config.json": (config, {}), DIFFUSERS_FILE: (official_to_diffusers(state, model.kind), {"format": "pt"})}


def _earlier_files(out: Path) -> list[Path]:
    """The files an earlier export in ``out`` wrote (its record's list, the record itself)."""
    record = out / RECORD
    if not record.is_file():
        return []
    try:
        names = json.loads(record.read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        names = []
    return [out / Path(str(n)).name for n in names if (out / Path(str(n)).name).is_file()] + [record]


def _claim(out: Path, names: list[str], overwrite: bool) -> None:
    """Refuse an earlier export (or files of the names about to be written) unless ``overwrite``; with it, remove
    what the earlier record lists (the record last)."""
    clash = sorted({p.name for p in _earlier_files(out)} | {n for n in names if (out / n).exists()})
    if clash and not overwrite:
        raise OutputError(f"{out} already holds an export ({', '.join(clash)}); pass --overwrite to replace it, "
                          "or choose another folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        for p in sorted(_earlier_files(out), key=lambda p: p.name == RECORD):
            p.unlink()
    except OSError as e:
        raise OutputError(describe_os_error(e, e.filename or out)) from None


def export_weights(source: str | Path, out: str | Path, to: str = "diffusers", *, dtype: str = "fp32",
                   ema: bool = False, overwrite: bool = False) -> ExportResult:
    """Export the Stage C / Stage B / ControlNet at ``source`` into the folder ``out`` (module docstring).

    Every check (source, kind, target, config, earlier export) runs before anything is written; each file is
    written atomically and ``export.json`` last. Raises InputError / WeightsError / OutputError.
    """
    settings = ExportSettings(to, dtype, ema, overwrite)
    settings.check()
    model = read_model(weights_file(source, ema))
    files = planned_files(model, settings)
    out = Path(out)
    _claim(out, list(files) + [RECORD], overwrite)
    written = []
    for name, (content, meta) in files.items():
        if name.endswith(".json"):
            written.append(atomic_write_json(out / name, content))
        else:
            written.append(atomic_write(out / name, lambda f, t=content, m=meta: write_safetensors(f, t, m)))
    record = {"format": FORMAT, "to": to, "kind": model.kind, "preset": model.preset, "dtype": dtype,
              "source": str(model.path), "source_sha256": sha256_file(model.path), "files": list(files)}
    written.append(atomic_write_json(out / RECORD, record))
    return ExportResult(files=written, kind=model.kind, preset=model.preset, source=model.path)


__all__ = ["ExportResult", "ExportSettings", "export_weights", "official_name", "read_model", "weights_file"]
