"""ControlNet training on a latent store, as released (``train/train_c_controlnet.py``), as a task of the core.

* The training module is :class:`ControlledStageC`: the ControlNet (trained) feeding a **frozen** Stage C
  (``requires_grad`` off, eval mode, but in the graph: gradients flow through it to the ControlNet). Only the
  ControlNet's parameters reach the optimizer (AdamW 1e-4, warm-up, clipping 1.0: the core's). Its backbone
  stays in eval mode during training (BatchNorm statistics frozen, as the official ``backbone.eval()``).
* ``x0`` = the stored latents; ε target, P2 weight (the core's GDF); ``offset_noise`` is added to ε in
  :meth:`ControlNetTask.draws` (``offset · N(0,1)`` per sample and channel, the official GDF's), so the draw is a
  function of the update like every other; conditioning is Stage C's (5 % caption dropout -> empty caption, stored
  CLIP image embeddings on 10 %).
* The control comes from the store's precomputed field (``encode --controls`` / ``add-controls``, no filter and no
  image encoder in the loop) or, where the store lacks it, is computed on the fly from the source images
  (:mod:`cascadekit.generator.control_inputs`; slower, the log says so).
* Inpainting masks are drawn per update from its generator (geometric masks, or the official saliency masks with
  ``saliency_model``), so they are part of the exact-resume guarantee.
* Checkpoints hold ``controlnet.safetensors`` in the official key layout (loads in the official code, ComfyUI and
  :func:`cascadekit.codec.weights.controlnet.load_controlnet`), with ``proj_blocks`` in its metadata.
* FSDP (``fsdp: true``): the frozen Stage C's blocks are units as for Stage C, the ControlNet one unit of its own
  (:attr:`ControlNetTask.fsdp_units`); the checkpoint is cut from the gathered full state dict.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file
from torch import nn

from cascadekit.codec.errors import InputError, WeightsError
from cascadekit.codec.models.controlnet import ControlNet, ControlNetConfig, resblock_call_channels
from cascadekit.codec.weights.assign import build
from cascadekit.codec.weights.controlnet import check_fits_stage_c
from cascadekit.generator.batches import Group
from cascadekit.generator.control_inputs import ControlInputs, control_source_problems
from cascadekit.generator.controlnet_init import init_backbone, resolve_blocks
from cascadekit.generator.data import TrainData
from cascadekit.generator.saliency import MicroResNet, load_saliency_model
from cascadekit.generator.stage_c import StageC
from cascadekit.generator.tasks.controlnet_config import C_IN, ControlNetTrainConfig
from cascadekit.generator.tasks.stage_c import StageCTask, load_init_state
from cascadekit.generator.training.loop import init_seed

WEIGHTS_NAME = "controlnet.safetensors"


class ControlledStageC(nn.Module):
    """``stage_c(x, r, cnet=controlnet(control), **cond)`` with Stage C frozen; see the module docstring.

    forward: x (B,16,h,w), r (B,), control (B, c_in, H, W), Stage C's conditioning keywords -> (B,16,h,w).
    """

    def __init__(self, controlnet: ControlNet, stage_c: nn.Module):
        super().__init__()
        self.controlnet = controlnet
        self.stage_c = stage_c.requires_grad_(False)

    def train(self, mode: bool = True) -> "ControlledStageC":
        super().train(mode)
        self.stage_c.eval()  # frozen prior: no dropout
        self.controlnet.backbone.eval()  # official: BatchNorm statistics stay those of the start
        return self

    def forward(self, x: torch.Tensor, r: torch.Tensor, control: torch.Tensor, **cond: Any) -> torch.Tensor:
        return self.stage_c(x, r, cnet=self.controlnet(control), **cond)


class ControlNetTask(StageCTask):
    """A ControlNet for the frozen Stage C ``cfg.model`` (weights from ``init``; random, seeded, without it).

    image_encoder: a ``Codec`` (EfficientNet) for the sr control computed on the fly, and the Stable Cascade
    backbone start of an effnet ControlNet when torchvision's ImageNet weights are not cached.
    """

    preview_caption = "ControlNet"
    #: FSDP: the frozen Stage C sharded block by block (the official policy) and the trained ControlNet as one
    #: unit of its own (its parameters never share a flat parameter with frozen Stage C ones)
    fsdp_units = (*StageCTask.fsdp_units, ControlNet)

    def __init__(self, cfg: ControlNetTrainConfig, *, init: str | Path | None = None, text_encoder: Any = None,
                 image_encoder: Any = None, model_overrides: dict[str, Any] | None = None,
                 log: Callable[[str], None] = print):
        super().__init__(cfg, init=init, text_encoder=text_encoder, model_overrides=model_overrides)
        self.cfg: ControlNetTrainConfig = cfg
        self.image_encoder, self.log = image_encoder, log
        self.title = f"ControlNet {cfg.control} ({cfg.bottleneck} bottleneck) for Stage C {cfg.model}"
        self.weights_name = WEIGHTS_NAME
        self.blocks: list[int] = []
        self.c_proj = 0
        self.controls: ControlInputs | None = None
        self.saliency: MicroResNet | None = None  # the official saliency model (inpainting), read by check()
        self.backbone_start = "n/a"

    # ------------------------------------------------------------------ before training
    def check(self, data: TrainData) -> list[str]:
        errs = super().check(data)
        with torch.device("meta"):
            meta = StageC.from_config(self.model_cfg)
        try:
            self.blocks, self.c_proj = resolve_blocks(self.cfg.controlnet_blocks, resblock_call_channels(meta))
            check_fits_stage_c(ControlNetConfig(c_in=C_IN[self.cfg.control], c_proj=self.c_proj,
                                                proj_blocks=self.blocks), meta, "controlnet_blocks")
        except (InputError, WeightsError) as e:
            errs.append(str(e))
        errs += control_source_problems(data, self.cfg.control, self.image_encoder)
        if self.cfg.saliency_model:  # read now: a bad file is refused before anything is built or written
            try:
                self.saliency = load_saliency_model(self.cfg.saliency_model)
            except (InputError, WeightsError) as e:
                errs.append(f"saliency_model: {e}")
        return errs

    def build(self, data: TrainData, resume_from: Path | None, recorded: dict[str, Any] | None) -> nn.Module:
        """Frozen Stage C (``--init`` / the recorded init, else seeded random) + the ControlNet (checkpoint on
        resume, ``controlnet_init``, or new with the official init)."""
        if self.init is None and recorded is not None:
            self.init = recorded.get("init")
        self.conditioner = self._conditioner(data)
        self.controls = ControlInputs(data, self.cfg.control, self.image_encoder, self.saliency)
        self.log(f"control {self.cfg.control}: {self.controls.describe()}")
        if self.cfg.control == "inpainting":
            self.log(f"inpainting masks: {self.mask_source()}")
        return ControlledStageC(self._controlnet(resume_from), self._stage_c())

    def mask_source(self) -> str:
        """Which inpainting training masks this run draws (for the log and run.json)."""
        if self.saliency is not None:
            return (f"the official saliency masks ({self.cfg.saliency_model}: thresholds U(0.04, 0.4), "
                    f"blur 141, > 0.5; inverted with p {self.cfg.p_outpaint})")
        return (f"geometric (rectangles / brush strokes / borders, inverted with p {self.cfg.p_outpaint}); "
                "set saliency_model to the official saliency_model.pt for the official masks")

    def _stage_c(self) -> nn.Module:
        if self.init is None:
            self.log("no --init: the frozen Stage C is random (seeded from the run's seed); give official Stage C "
                     "weights for a real ControlNet")
            torch.manual_seed(init_seed(self.cfg))
            return StageC.from_config(self.model_cfg)
        state = load_init_state(self.init, self.cfg.model)
        return build(lambda: StageC.from_config(self.model_cfg), state, device="cpu", dtype=torch.float32,
                     name="Stage C")

    def _new_controlnet(self) -> ControlNet:
        cfg = self.cfg
        return ControlNet(c_in=C_IN[cfg.control], c_proj=self.c_proj, proj_blocks=self.blocks,
                          bottleneck_mode=cfg.bottleneck, large_widths=cfg.large_widths)

    def _controlnet(self, resume_from: Path | None) -> ControlNet:
        source = resume_from / WEIGHTS_NAME if resume_from is not None else (
            Path(self.cfg.controlnet_init) if self.cfg.controlnet_init else None)
        if source is None:
            torch.manual_seed(init_seed(self.cfg) + 1)
            net = self._new_controlnet()  # the last projection convs start at zero (official)
            self.backbone_start = init_backbone(net, self.cfg.backbone_init, self.image_encoder, self.init)
            self.log(f"ControlNet backbone: {self.backbone_start}")
            return net
        if not source.is_file():
            raise InputError(f"controlnet_init {source} is not a file")
        try:
            return build(self._new_controlnet, load_file(str(source)), device="cpu", dtype=torch.float32,
                         name=f"ControlNet ({source})")
        except WeightsError as e:
            raise InputError(f"{source} does not fit this ControlNet config ({self.cfg.control}, "
                             f"{self.cfg.bottleneck}, blocks {self.blocks}): {e}") from None

    def trainable(self, module: nn.Module) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in module.named_parameters() if n.startswith("controlnet.")]

    def record(self) -> dict[str, Any]:
        cfg = self.cfg
        info = {"control": cfg.control, "c_in": C_IN[cfg.control], "c_proj": self.c_proj, "proj_blocks": self.blocks,
                "bottleneck_mode": cfg.bottleneck, "backbone_start": self.backbone_start,
                "control_source": self.controls.describe() if self.controls else None,
                "masks": self.mask_source() if cfg.control == "inpainting" else None}
        return {**super().record(), "controlnet": info}

    # ------------------------------------------------------------------ each update
    def draws(self, generator: torch.Generator, n: int, group: Group) -> dict[str, torch.Tensor]:
        out = super().draws(generator, n, group)  # noise, caption dropout, image embeddings (Stage C's order)
        if self.cfg.offset_noise > 0:
            offset = torch.randn((n, group.shape[0], 1, 1), generator=generator)
            out["noise"] = out["noise"] + offset * self.cfg.offset_noise
        if self.cfg.control == "inpainting":  # masks (or, for saliency masks, their seeds) of this update
            h, w = (32 * s for s in group.shape[1:])
            out["mask"] = self.controls.masks(n, h, w, generator, self.cfg.p_outpaint)
        return out

    def inputs(self, batch: dict[str, Any], draws: dict[str, torch.Tensor],
               device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x0, cond = super().inputs(batch, draws, device)
        size = tuple(32 * s for s in x0.shape[-2:])  # the image the latents were encoded from
        cond["control"] = self.controls.control(batch, size, draws.get("mask"), device).to(device)
        return x0, cond

    def checkpoint_weights(self, module: nn.Module, full_state: Callable[[], dict[str, torch.Tensor]]
                           ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        state = full_state()
        weights = {k[len("controlnet."):]: v for k, v in state.items() if k.startswith("controlnet.")}
        meta = {"format": "pt", "proj_blocks": json.dumps(self.blocks), "control": self.cfg.control,
                "model": f"ControlNet/{self.cfg.control} for StageC/{self.cfg.model}"}
        return weights, meta

    def preview(self, module: nn.Module, data: TrainData, device: torch.device, autocast: Callable) -> None:
        return None  # sample from a checkpoint: `cascadekit sample --controlnet RUN`


__all__ = ["ControlNetTask", "ControlledStageC", "WEIGHTS_NAME"]
