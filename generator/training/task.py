"""The one place a trained network plugs into the training core: a :class:`TrainTask`.

The core (:class:`~cascadekit.generator.training.loop.TrainingLoop`) owns everything that does not
depend on the network: the step plan over the store, micro-batches and accumulation, the random draws
of each update, the diffusion (``x0 -> x_t``, target, loss weight), the optimizer and schedule,
clipping, EMA, autocast, gradient checkpointing, DDP/FSDP, checkpoints and exact resume, logs,
previews and the NaN stop. A task says only what differs between trained things:

* :meth:`check` — why the store cannot feed it (messages, before any work);
* :meth:`build` — the training module (trainable AND frozen parts, e.g. ControlNet + frozen Stage C,
  LoRA factors + frozen base, a token delta + frozen text encoder); ``module(x_t, r, **cond)`` predicts
  the diffusion target (same shape as ``x0``);
* :meth:`trainable` — which parameters train (default: those with ``requires_grad``);
* :meth:`draws` — the random draws of one global batch beyond ``t`` (``noise`` shaped like ``x0``,
  which conditioning is dropped, ...), from the update's generator;
* :meth:`inputs` — how a store batch becomes ``x0`` and the conditioning keywords;
* :meth:`checkpoint_weights` / :attr:`weights_name` — what a checkpoint holds; :meth:`build` reads it
  back on resume;
* what may not change on resume: the fields of the task's config dataclass (see
  :mod:`~cascadekit.generator.training.settings`).

Everything is a method of one small object, so ControlNet (control from the store, frozen Stage C),
new-token LoRA (frozen text encoder, token deltas) and Stage B (Stage A latents as ``x0``, EfficientNet
+ pooled text as conditions) are new tasks, not changes of the core.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from cascadekit.codec.models.blocks import AttnBlock, ResBlock, TimestepBlock
from cascadekit.generator.batches import Group
from cascadekit.generator.data import TrainData

Rows = list[list[torch.Tensor]]  # image grid rows, (3,H,W) in [0,1]


class TrainTask:
    """Base class of a trained thing (override the methods marked *required*)."""

    #: what the log calls the run, e.g. "Stage C (tiny)"
    title: str = "model"
    #: file name of the trained weights inside a checkpoint folder (EMA weights go to ema.safetensors)
    weights_name: str = "model.safetensors"
    #: what the rows of a preview grid show (for the log)
    preview_caption: str = "previews"
    #: FSDP puts one unit around each module of these types (the official wrap policy)
    fsdp_units: tuple[type[nn.Module], ...] = (ResBlock, AttnBlock, TimestepBlock)

    def check(self, data: TrainData) -> list[str]:
        """Reasons this store cannot train the task (empty list: fine). Called before anything is built."""
        return []

    def build(self, data: TrainData, resume_from: Path | None, recorded: dict[str, Any] | None) -> nn.Module:
        """*Required.* The float32 training module on CPU. ``resume_from``: the checkpoint folder to read
        the trained weights from (None for a new run); ``recorded``: the run's ``run.json`` (or None)."""
        raise NotImplementedError

    def trainable(self, module: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """The trained parameters by name, in a stable order (the optimizer state is keyed by it)."""
        return [(n, p) for n, p in module.named_parameters() if p.requires_grad]

    def draws(self, generator: torch.Generator, n: int, group: Group) -> dict[str, torch.Tensor]:
        """*Required.* Random draws for the ``n`` samples of one global batch of ``group``, each (n, ...);
        must include ``noise`` shaped like ``x0``. Drawn after ``t`` from the update's generator."""
        raise NotImplementedError

    def inputs(self, batch: dict[str, Any], draws: dict[str, torch.Tensor],
               device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """*Required.* ``(x0 (b, ...) float32 on device, conditioning keywords of the module)`` for one
        micro-batch: ``batch`` as read from the store, ``draws`` this micro-batch's slice."""
        raise NotImplementedError

    def checkpoint_weights(self, module: nn.Module, full_state: Callable[[], dict[str, torch.Tensor]]
                           ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The tensors written to :attr:`weights_name` and its safetensors metadata. ``full_state()``
        gathers the unsharded state dict of the (possibly FSDP-wrapped) module with clean names
        (collective: every rank calls this method; rank 0 gets the tensors). Under FSDP the submodules of
        ``module`` are wrapped in place, so take parameter names from ``full_state()`` or from :meth:`build`."""
        return full_state(), {"format": "pt"}

    def record(self) -> dict[str, Any]:
        """Extra entries of ``run.json`` (e.g. init weights, model arguments)."""
        return {}

    def preview(self, module: nn.Module, data: TrainData, device: torch.device, autocast: Callable) -> Rows | None:
        """Image rows for ``previews/step_N.png`` with the current (EMA) weights, or None (no previews)."""
        return None
