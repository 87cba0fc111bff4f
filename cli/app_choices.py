"""The weights choices a `cascadekit app` launch offers, made once from its ``--run`` / ``--stage-b-weights``
paths (nothing typed in the page is ever opened): the Stage C weights of training runs for Generate, and the
decoders of Reconstruct (each Stage B variant of ``--weights``, plus every fine-tuned Stage B). A run or checkpoint
that kept EMA weights is offered twice, ``LABEL`` and ``LABEL (ema)``.

What a run holds is read from its newest intact checkpoint (``generator.checkpoint.run_checkpoint``, its
``meta.json``); loading goes through the library (``TextToImagePipeline.load_stage_c(path, ema)``,
``generator.stage_b_weights.use_stage_b_weights(codec, path, ema)``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cascadekit.codec.errors import InputError
from cascadekit.generator.checkpoint import META, checkpoint_holds, run_checkpoint

EMA = " (ema)"


@dataclass(frozen=True)
class WeightsChoice:
    """One dropdown entry. path: a launch path (None: the Stage B of ``--weights`` itself); ema: its EMA weights;
    variant: the Stage B variant of ``--weights`` it is (base decoders) or is tried first (fine-tuned ones)."""

    path: Path | None = None
    ema: bool = False
    variant: str = "lite"


def run_kind(path: str | Path, flag: str = "--run") -> tuple[str, bool]:
    """("stage_c" | "stage_b", has EMA weights) of a launch path: a weights file or diffusers ``prior/`` folder is
    Stage C weights; a run / checkpoint folder is what its newest intact checkpoint holds. InputError for a LoRA or
    ControlNet run (they have their own inputs) or a run without an intact checkpoint."""
    folder = run_checkpoint(path)
    if not (folder.is_dir() and (folder / META).is_file()):
        return "stage_c", False
    name, ema = checkpoint_holds(folder)
    if name.startswith("stage_b"):
        return "stage_b", ema
    if name == "model.safetensors":
        return "stage_c", ema
    hint = {"lora.safetensors": "a LoRA run: upload its lora.safetensors in Generate's LoRA files",
            "controlnet.safetensors": "a ControlNet run: give it with --controlnet"}.get(name, "unknown weights")
    raise InputError(f"{flag} {path}: its checkpoint {folder.name} holds {name or 'no weights'} ({hint})")


def _with_ema(label: str, path: Path, ema: bool, variant: str = "lite") -> dict[str, WeightsChoice]:
    entries = {label: WeightsChoice(path, False, variant)}
    if ema:
        entries[label + EMA] = WeightsChoice(path, True, variant)
    return entries


def stage_c_choices(runs: dict[str, Path]) -> dict[str, WeightsChoice]:
    """{label: choice} of the Stage C runs among ``runs`` ({label: path} of ``--run``), ``LABEL (ema)`` too when
    the run kept EMA weights."""
    out: dict[str, WeightsChoice] = {}
    for label, path in runs.items():
        kind, ema = run_kind(path)
        if kind == "stage_c":
            out.update(_with_ema(label, Path(path), ema))
    return out


def _variant_hint(path: Path, variants: list[str]) -> str:
    """The variant a fine-tuned Stage B is tried against first: ``big`` for ``stage_b.safetensors`` files and runs
    that write them (the official names), else the first variant of the weights."""
    from cascadekit.generator.stage_b_weights import stage_b_weights_file

    name = stage_b_weights_file(path).name
    return "big" if name == "stage_b.safetensors" and "big" in variants else variants[0]


def decoder_choices(runs: dict[str, Path], stage_b_weights: dict[str, Path],
                    variants: list[str]) -> dict[str, WeightsChoice]:
    """{label: choice} of Reconstruct's decoders: each Stage B ``variant`` of ``--weights`` (label = the variant),
    then the Stage B runs among ``runs`` and every ``--stage-b-weights`` run / checkpoint / file (``(ema)`` entries
    where EMA weights were kept). InputError for a ``--stage-b-weights`` path that is not Stage B weights."""
    out = {v: WeightsChoice(None, False, v) for v in variants}
    tuned = {label: p for label, p in runs.items() if run_kind(p)[0] == "stage_b"}
    for label, p in stage_b_weights.items():
        kind, _ = run_kind(p, "--stage-b-weights")
        if kind != "stage_b" and Path(p).is_dir():
            raise InputError(f"--stage-b-weights {p} is a Stage C run; give it with --run")
        if label in tuned:
            raise InputError(f"--stage-b-weights {p}: the label {label!r} is also a --run's; rename one of them")
        tuned[label] = p
    for label, p in tuned.items():
        if label in out:
            raise InputError(f"--stage-b-weights / --run label {label!r} is also a Stage B variant name; rename it")
        out.update(_with_ema(label, Path(p), run_kind(p)[1], _variant_hint(Path(p), variants)))
    return out
