"""The Stage C prior as a training task: full fine-tuning or LoRA, as released (``train/train_c.py``).

* ``x0`` = the stored semantic latents (B,16,h,w); ε target; the network sees ``clip_text``,
  ``clip_text_pooled`` and ``clip_img`` (:class:`~cascadekit.generator.conditioning.Conditioner`).
* Draws per global batch, after ``t``: ``noise`` like the latents, ``drop`` (caption dropout -> the
  empty-caption embeddings) and ``use_img`` (the stored CLIP image embedding, else zeros) — in this order,
  so runs and checkpoints made before the training core was split continue identically.
* Full fine-tune: every Stage C parameter trains; checkpoints hold ``model.safetensors`` (official keys).
  LoRA (``lora_rank > 0``): Stage C frozen, only the factors train; checkpoints hold ``lora.safetensors``.
* Previews: samples with the current (EMA) weights next to the store latents, decoded by a Previewer.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file
from torch import nn

from cascadekit.codec.diffusion.samplers import sample_final
from cascadekit.codec.errors import InputError
from cascadekit.codec.weights.assign import build
from cascadekit.codec.weights.load import load_weights
from cascadekit.codec.weights.sources import resolve_source
from cascadekit.generator.batches import Group
from cascadekit.generator.conditioning import Conditioner, EmptyCaption
from cascadekit.generator.config import TrainConfig
from cascadekit.generator.data import TrainData
from cascadekit.generator.lora import apply_lora, lora_parameters, lora_state_dict, read_lora
from cascadekit.generator.stage_c import StageC, StageCConfig
from cascadekit.generator.training.loop import init_seed
from cascadekit.generator.training.task import Rows, TrainTask


def stage_c_config(cfg: TrainConfig, overrides: dict[str, Any] | None = None) -> StageCConfig:
    """The Stage C preset of ``cfg.model`` with constructor arguments replaced by ``overrides``."""
    sc = StageCConfig.preset(cfg.model)
    if overrides:
        known = {f.name for f in dataclasses.fields(StageCConfig)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise InputError(f"unknown StageC argument(s) {bad}")
        sc = dataclasses.replace(sc, **overrides)
    return sc


def load_init_state(init: str | Path, preset: str) -> dict[str, torch.Tensor]:
    """Official-key Stage C weights from a file, folder, diffusers snapshot or hub id (float32)."""
    p = Path(init)
    if not p.is_file():
        # tiny models are stored under the lite file names (the tiny random weight set)
        p = resolve_source(str(init), stage_c="big" if preset == "big" else "lite", need=("stage_c",)).path("stage_c")
    # float32 master weights, converted while reading (bf16 releases never exist twice in memory)
    return load_weights(p, dtype=torch.float32, kind="stage_c")


def data_problems(data: TrainData, model_cfg: StageCConfig, cfg: TrainConfig, has_text_encoder: bool) -> list[str]:
    """Why the store cannot feed this Stage C / config (latent channels, text, embedding widths)."""
    errs = []
    if "latents" not in data.fields:
        errs.append("the store has no latents")
    for g in data.groups:
        if g.shape[0] != model_cfg.c_in:
            errs.append(f"group {g.name!r}: latents have {g.shape[0]} channels, Stage C expects {model_cfg.c_in} "
                        f"(shape {tuple(g.shape)}); was the store encoded with the EfficientNet encoder?")
        if min(g.shape[1:]) < 1:
            errs.append(f"group {g.name!r}: empty latent size {tuple(g.shape)}")
    has_emb = {"clip_text", "clip_text_pooled"} <= data.fields
    if not has_emb and not ("captions" in data.fields and has_text_encoder):
        if "captions" not in data.fields:
            errs.append("the store has neither captions nor text embeddings; Stage C is text-conditional "
                        "(encode the store with captions, then optionally `cascadekit embed-text`)")
        else:
            errs.append("the store has captions but no text embeddings and no text encoder was given; run "
                        "`cascadekit embed-text STORE` or pass --text-encoder")
    shapes = getattr(data, "field_shapes", {})
    widths = [("clip_text", model_cfg.c_clip_text, "c_clip_text"),
              ("clip_text_pooled", model_cfg.c_clip_text_pooled, "c_clip_text_pooled"),
              ("clip_img", model_cfg.c_clip_img, "c_clip_img")]
    for name, want, arg in widths:
        got = shapes.get(name)
        if got is not None and (has_emb or name == "clip_img") and got[-1] != want:
            errs.append(f"stored {name} width {got[-1]} != model {arg} {want}")
    if cfg.caption_dropout > 0 and data.empty is None and not has_text_encoder:
        errs.append("caption_dropout > 0 needs the empty-caption embeddings: the store has none and no text "
                    "encoder was given (pass --text-encoder, or set caption_dropout: 0)")
    return errs


class StageCTask(TrainTask):
    """Stage C full fine-tuning (``lora_rank == 0``) or LoRA, from a latent store (see the module docstring).

    init: official Stage C weights (file/folder/hub id; required for LoRA, else the recorded ones of the
    run). text_encoder: ``encode(captions) -> (clip_text, clip_text_pooled)``, for stores without text
    embeddings or without empty-caption embeddings. previewer: a Previewer for PNG previews.
    model_overrides: StageC constructor arguments replacing the preset's (e.g. ``{"dropout": [0, 0]}``).
    """

    preview_caption = "top: store latents, bottom: samples"

    def __init__(self, cfg: TrainConfig, *, init: str | Path | None = None, text_encoder: Any = None,
                 previewer: nn.Module | None = None, model_overrides: dict[str, Any] | None = None):
        self.cfg = cfg
        self.init = str(init) if init is not None else None
        self.text_encoder = text_encoder
        self.previewer = previewer
        self.model_cfg = stage_c_config(cfg, model_overrides)
        self.lora = cfg.lora_rank > 0
        self.title = f"Stage C ({cfg.model}{', LoRA r=%d' % cfg.lora_rank if self.lora else ''})"
        self.weights_name = "lora.safetensors" if self.lora else "model.safetensors"
        self.conditioner: Conditioner | None = None

    # ------------------------------------------------------------------ before training
    def check(self, data: TrainData) -> list[str]:
        return data_problems(data, self.model_cfg, self.cfg, self.text_encoder is not None)

    def _conditioner(self, data: TrainData) -> Conditioner:
        empty, encode = data.empty, None
        if self.text_encoder is not None:
            encode = self.text_encoder.encode
            if empty is None:
                t, p = self.text_encoder.encode([""])
                empty = EmptyCaption(t[:1].float().cpu(), p[:1].float().cpu())
        return Conditioner(c_clip_img=self.model_cfg.c_clip_img, empty=empty, encode_text=encode)

    def build(self, data: TrainData, resume_from: Path | None, recorded: dict[str, Any] | None) -> nn.Module:
        """Stage C from the checkpoint (full fine-tune resume), the init weights, or random (official init);
        LoRA: the base weights + factors (read back from the checkpoint on resume)."""
        if self.lora and self.init is None:
            self.init = (recorded or {}).get("init")
            if self.init is None:
                raise InputError("LoRA training needs base weights: pass --init with official Stage C weights")
        self.conditioner = self._conditioner(data)
        state = None
        if resume_from is not None and not self.lora:
            state = load_file(str(resume_from / self.weights_name))
        elif self.init is not None:
            state = load_init_state(self.init, self.cfg.model)
        if state is not None:  # built on the meta device, weights assigned: no random init, no second copy
            model = build(lambda: StageC.from_config(self.model_cfg), state, device="cpu", dtype=torch.float32,
                          name="Stage C")
            del state
        else:
            torch.manual_seed(init_seed(self.cfg))
            model = StageC.from_config(self.model_cfg)
        if self.lora:
            self._add_lora(model.float(), resume_from)
        return model

    def _add_lora(self, model: StageC, resume_from: Path | None) -> None:
        cfg = self.cfg
        apply_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, seed=cfg.seed, init=cfg.lora_init)
        if resume_from is not None:
            tensors, _ = read_lora(resume_from / self.weights_name)
            with torch.no_grad():
                for k, p in lora_parameters(model):
                    p.copy_(tensors[k])

    def trainable(self, module: nn.Module) -> list[tuple[str, nn.Parameter]]:
        return lora_parameters(module) if self.lora else super().trainable(module)

    def record(self) -> dict[str, Any]:
        return {"init": self.init, "model_config": self.model_cfg.kwargs()}

    # ------------------------------------------------------------------ each update
    def draws(self, generator: torch.Generator, n: int, group: Group) -> dict[str, torch.Tensor]:
        return {"noise": torch.randn((n, *group.shape), generator=generator),
                "drop": torch.rand(n, generator=generator) < self.cfg.caption_dropout,
                "use_img": torch.rand(n, generator=generator) < self.cfg.image_embedding_fraction}

    def inputs(self, batch: dict[str, Any], draws: dict[str, torch.Tensor],
               device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x0 = batch["latents"].to(device, torch.float32)  # (b,16,h,w)
        return x0, self.conditioner(batch, draws["drop"], draws["use_img"], device)

    def checkpoint_weights(self, module: nn.Module, full_state: Callable[[], dict[str, torch.Tensor]]
                           ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        cfg = self.cfg
        if self.lora:
            meta = {"format": "cascadekit-lora", "rank": str(cfg.lora_rank), "alpha": repr(cfg.lora_alpha),
                    "targets": json.dumps(cfg.lora_targets)}
            return {k: v.float().cpu() for k, v in lora_state_dict(module).items()}, meta
        return full_state(), {"format": "pt", "model": f"StageC/{cfg.model}"}

    # ------------------------------------------------------------------ previews
    def preview(self, module: nn.Module, data: TrainData, device: torch.device, autocast: Callable) -> Rows | None:
        """Top row: the first ``preview_count`` store latents; bottom row: samples for their captions."""
        if self.previewer is None:
            return None
        cfg = self.cfg
        group = data.groups[0]
        idx = list(range(min(cfg.preview_count, group.size)))
        batch = data.read(group.name, idx)
        n = len(idx)
        with autocast():
            off = torch.zeros(n, dtype=torch.bool)
            cond = self.conditioner(batch, off, off, device)
            uncond = self.conditioner.unconditional(n, device) if self.conditioner.empty is not None else None
            g = torch.Generator().manual_seed(cfg.seed)
            out = sample_final(module, None, shape=(n, *group.shape), steps=cfg.preview_steps, cfg=4.0, shift=2.0,
                               model_inputs=cond, unconditional_inputs=uncond, generator=g, device=device)
            real = self.previewer(batch["latents"].to(device, next(self.previewer.parameters()).dtype))
            fake = self.previewer(out.x0.to(real.dtype))
        return [[im.float().clamp(0, 1).cpu() for im in real], [im.float().clamp(0, 1).cpu() for im in fake]]
