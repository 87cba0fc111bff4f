"""Load weights under OFFICIAL key names, whatever format they were stored in.

``load_weights(path)`` accepts

* an official file (``stage_a.safetensors``, ``stage_b_lite_bf16.safetensors``, ...; also
  ``.pt/.pth/.bin/.ckpt`` through ``torch.load(weights_only=True)``),
* a diffusers file (``diffusion_pytorch_model*.safetensors``) or sharded index,
* a diffusers model folder (``config.json`` + ``diffusion_pytorch_model[.bf16].safetensors`` or a
  sharded ``diffusion_pytorch_model*.safetensors.index.json``).

The format and model kind are detected from the keys (:func:`keys.detect_format`) and diffusers
names are converted back to official ones (:func:`keys.diffusers_to_official`):

=============================================  ==============================================
official (returned)                            diffusers (accepted)
=============================================  ==============================================
``P.attention.attn.in_proj_weight`` [3C, C]     ``P.attention.to_q/to_k/to_v.weight`` [C, C], cat q,k,v on dim 0
``P.attention.attn.in_proj_bias`` [3C]          ``P.attention.to_q/to_k/to_v.bias`` [C]
``P.attention.attn.out_proj.{weight,bias}``     ``P.attention.to_out.0.{weight,bias}``
``clip_mapper.*`` (Stage B)                     ``clip_txt_pooled_mapper.*`` (decoder)
``vquantizer.codebook.weight`` (Stage A)        ``vquantizer.embedding.weight`` (PaellaVQModel)
=============================================  ==============================================

Every other key is identical. Note that the diffusers VQGAN scales latents outside the model
(``vqgan/config.json`` ``scale_factor``), see :mod:`cascadekit.codec.weights.sources`.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from cascadekit.codec.errors import WeightsError
from cascadekit.codec.weights.io import read_state_dict
from cascadekit.codec.weights.keys import to_official

DIFFUSERS_STEM = "diffusion_pytorch_model"


def diffusers_weights_file(folder: str | os.PathLike, prefer: str = "fp32") -> Path:
    """Pick the weights file of a diffusers model folder.

    Looks for (in order, ``prefer='fp32'``) ``diffusion_pytorch_model.safetensors``, its sharded index,
    then the ``.bf16`` / ``.fp16`` variants (``prefer='bf16'`` tries the bf16 variant first).
    """
    folder = Path(folder)
    plain = [f"{DIFFUSERS_STEM}.safetensors", f"{DIFFUSERS_STEM}.safetensors.index.json"]
    variants = []
    for v in ("bf16", "fp16"):
        variants += [f"{DIFFUSERS_STEM}.{v}.safetensors", f"{DIFFUSERS_STEM}.safetensors.index.{v}.json"]
    names = (variants + plain) if prefer == "bf16" else (plain + variants)
    for n in names:
        if (folder / n).is_file():
            return folder / n
    # any other single diffusers file, e.g. model.safetensors
    found = sorted(folder.glob("*.safetensors"))
    if len(found) == 1:
        return found[0]
    raise WeightsError(
        f"{folder}: no diffusers weights file found; expected one of {', '.join(names)}"
        + (f" (found several .safetensors files: {[f.name for f in found]})" if found else "")
    )


def load_weights(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    kind: str | None = None,
) -> dict[str, torch.Tensor]:
    """Return the state dict at ``path`` with official key names.

    ``dtype`` casts floating-point tensors (integer buffers such as ``num_batches_tracked`` keep
    their dtype), one tensor at a time, so converting needs the converted weights plus one tensor,
    never both full copies. ``kind`` (``'stage_a'``, ``'stage_b'``, ``'stage_c'``, ``'effnet'``, ``'previewer'``)
    makes a file of another model an error instead of a surprise later.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise WeightsError(
                f"{path} is a folder but not a diffusers model folder (no config.json); pass a weights file "
                "or a folder such as decoder_lite/ or prior/"
            )
        path = diffusers_weights_file(path)
    sd = read_state_dict(path, device)
    if not sd:
        raise WeightsError(f"{path}: contains no tensors")
    sd, _ = to_official(sd, kind)
    if dtype is not None:  # in place, one tensor at a time: each source tensor is freed once converted
        for k, v in sd.items():
            if v.is_floating_point() and v.dtype != dtype:
                sd[k] = v.to(dtype)
    return sd
