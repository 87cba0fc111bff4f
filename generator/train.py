"""Train Stage C on precomputed semantic latents (no image encoder in the loop).

The released recipe (``train/train_c.py``): epsilon objective under the cosine schedule (shift 1),
the network sees ``r = noise_cond(logSNR)``; per-sample MSE weighted by P2 (or the adaptive bucket
weighting), AdamW with linear warm-up, gradient clipping at 1.0, optional EMA, bf16 autocast on CUDA,
gradient accumulation, gradient checkpointing, DDP / FSDP through torchrun, LoRA.

Determinism: update ``s`` trains on global batch ``s`` of the plan (``batch_size`` samples of one
bucket, a pure function of ``(seed, epoch)``, :mod:`batches`), and every random draw of that batch
(diffusion time, noise, caption dropout, image-embedding choice) comes from a generator seeded by
``(seed, s)``; the batch and its draws are then cut into ``grad_accum_steps * world_size`` micro-batches.
The global RNG (dropout) is re-seeded from ``(seed, s, rank)`` at each update. So a run resumed from a
checkpoint continues exactly like the uninterrupted run, N processes compute what one does, and
``grad_accum_steps`` micro-batches give the gradient of the full batch (the adaptive loss buckets are
updated once per update with the whole batch).
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from cascadekit.codec.diffusion.gdf import GDF
from cascadekit.codec.errors import CascadeKitError, InputError
from cascadekit.generator import checkpoint as ckpt
from cascadekit.generator import distributed as dist_util
from cascadekit.generator.batches import BatchPlan, _mix, step_generator
from cascadekit.generator.conditioning import Conditioner, EmptyCaption
from cascadekit.generator.config import TrainConfig
from cascadekit.generator.data import TrainData, open_store
from cascadekit.generator.ema import EMA
from cascadekit.generator.lora import apply_lora, lora_parameters, lora_state_dict, read_lora
from cascadekit.generator.stage_c import StageC, StageCConfig

LOG_FILE = "train_log.jsonl"
MATH_KEYS = ("model", "batch_size", "grad_accum_steps", "lr", "lr_schedule", "warmup_steps", "weight_decay",
             "adam_betas", "adam_eps", "grad_clip", "ema_decay", "ema_start_step", "ema_every", "caption_dropout",
             "image_embedding_fraction", "loss_weighting", "shift", "loss_shift", "precision", "lora_rank",
             "lora_alpha", "lora_targets", "seed")


class TrainingDivergedError(CascadeKitError):
    """The loss or the gradient norm became NaN/inf; the last good checkpoint was left intact."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    last_checkpoint: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------- model setup
def stage_c_config(cfg: TrainConfig, overrides: dict[str, Any] | None = None) -> StageCConfig:
    import dataclasses

    sc = StageCConfig.preset(cfg.model)
    if overrides:
        known = {f.name for f in dataclasses.fields(StageCConfig)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise InputError(f"unknown StageC argument(s) {bad}")
        sc = dataclasses.replace(sc, **overrides)
    return sc


def _load_init_state(init: str | Path, preset: str) -> dict[str, torch.Tensor]:
    """Official-key Stage C weights from a file, folder, diffusers snapshot or hub id."""
    from cascadekit.codec.weights.load import load_weights

    from cascadekit.codec.weights.sources import resolve_source

    p = Path(init)
    if not p.is_file():
        # tiny models are stored under the lite file names (the tiny random weight set)
        p = resolve_source(str(init), stage_c="big" if preset == "big" else "lite", need=("stage_c",)).path("stage_c")
    # float32 master weights, converted while reading (bf16 releases never exist twice in memory)
    return load_weights(p, dtype=torch.float32, kind="stage_c")


def _lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    warm, total = cfg.warmup_steps, cfg.steps

    def f(step: int) -> float:  # step = number of updates done; factor for the next update
        if warm > 0 and step < warm:
            return (step + 1) / warm
        if cfg.lr_schedule == "cosine":
            done = (step - warm) / max(1, total - warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
        return 1.0

    return f


# ---------------------------------------------------------------------------- checks
def check_data(data: TrainData, model_cfg: StageCConfig, cfg: TrainConfig, has_text_encoder: bool) -> None:
    """Raise InputError before training if the store cannot feed this model/config."""
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
    if has_emb:
        shapes = getattr(data, "field_shapes", {})
        t = shapes.get("clip_text")
        if t is not None and t[-1] != model_cfg.c_clip_text:
            errs.append(f"stored clip_text width {t[-1]} != model c_clip_text {model_cfg.c_clip_text}")
        p = shapes.get("clip_text_pooled")
        if p is not None and p[-1] != model_cfg.c_clip_text_pooled:
            errs.append(f"stored clip_text_pooled width {p[-1]} != model c_clip_text_pooled {model_cfg.c_clip_text_pooled}")
    i = getattr(data, "field_shapes", {}).get("clip_img")
    if i is not None and i[-1] != model_cfg.c_clip_img:
        errs.append(f"stored clip_img width {i[-1]} != model c_clip_img {model_cfg.c_clip_img}")
    if cfg.caption_dropout > 0 and data.empty is None and not has_text_encoder:
        errs.append("caption_dropout > 0 needs the empty-caption embeddings: the store has none and no text "
                    "encoder was given (pass --text-encoder, or set caption_dropout: 0)")
    if errs:
        raise InputError("cannot train on this store:\n  " + "\n  ".join(errs))


# ---------------------------------------------------------------------------- the trainer
class Trainer:
    """One training run (see :func:`train`)."""

    def __init__(self, data: TrainData, cfg: TrainConfig, run_dir: str | Path, *, init: str | Path | None = None,
                 resume: bool = False, device: str | torch.device | None = None,
                 text_encoder: Any = None, previewer: nn.Module | None = None,
                 model_overrides: dict[str, Any] | None = None, log: Callable[[str], None] = print):
        self.cfg = cfg.validate()
        self.run_dir = Path(run_dir)
        self.log_fn = log
        self.info = dist_util.setup(device)
        self.device = self.info.device
        self.data = data
        self.model_cfg = stage_c_config(cfg, model_overrides)
        self.previewer = previewer
        self.text_encoder = text_encoder
        self.micro = cfg.micro_batch(self.info.world_size)

        # ---- everything that can be wrong is checked before any training step
        check_data(data, self.model_cfg, cfg, text_encoder is not None)
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            except ImportError:
                raise InputError("tensorboard: true needs the `tensorboard` package (pip install tensorboard), "
                                 "or set tensorboard: false (train_log.jsonl is always written)") from None
        self.plan = BatchPlan(data.groups, cfg.batch_size, cfg.seed)  # one plan batch = one update
        latest = ckpt.latest_checkpoint(self.run_dir)
        if latest is not None and not resume:
            raise InputError(f"{self.run_dir} already holds a training run (checkpoint {latest.name}); "
                             "pass --resume to continue it or choose a new --out folder")
        self.resume_from = latest if resume else None
        if self.resume_from is not None:
            self._check_same_run()
        lora_base = None
        if cfg.lora_rank > 0 and init is None:
            lora_base = self._recorded_init()
            if lora_base is None:
                raise InputError("LoRA training needs base weights: pass --init with official Stage C weights")
        init = init if init is not None else lora_base

        empty = data.empty
        encode = None
        if text_encoder is not None:
            encode = text_encoder.encode
            if empty is None:
                t, p = text_encoder.encode([""])
                empty = EmptyCaption(t[:1].float().cpu(), p[:1].float().cpu())
        self.conditioner = Conditioner(c_clip_img=self.model_cfg.c_clip_img, empty=empty, encode_text=encode)

        # ---- model: from the checkpoint (full fine-tune resume), the --init weights, or random (official init)
        self.init = str(init) if init is not None else None
        state = None
        if self.resume_from is not None and cfg.lora_rank == 0:
            from safetensors.torch import load_file

            state = load_file(str(self.resume_from / "model.safetensors"))
        elif init is not None:
            state = _load_init_state(init, cfg.model)
        if state is not None:  # built on the meta device, weights assigned: no random init, no second copy
            from cascadekit.codec.weights.assign import build

            model = build(lambda: StageC.from_config(self.model_cfg), state, device="cpu", dtype=torch.float32,
                          name="Stage C")
            del state
        else:
            torch.manual_seed(_mix(cfg.seed, -7))
            model = StageC.from_config(self.model_cfg)
        model = model.float()
        if cfg.lora_rank > 0:
            apply_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, seed=cfg.seed)
            if self.resume_from is not None:
                tensors, _ = read_lora(self.resume_from / "lora.safetensors")
                with torch.no_grad():
                    for k, p in lora_parameters(model):
                        p.copy_(tensors[k])
        model.gradient_checkpointing = cfg.gradient_checkpointing
        if not (cfg.fsdp and self.info.enabled):  # FSDP moves unit by unit to its device_id (low peak memory)
            model.to(self.device)
        model.train()
        self.model = model
        self.trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if cfg.lora_rank > 0:
            self.trainable = lora_parameters(model)
        self.wrapped = dist_util.wrap(model, self.info, fsdp=cfg.fsdp)
        params = [p for _, p in self.trainable] if not dist_util.is_fsdp(self.wrapped) else \
            [p for p in self.wrapped.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps,
                                           weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(cfg))
        self.ema = EMA(self.trainable, cfg.ema_decay, cfg.ema_start_step) if cfg.ema_decay else None
        self.gdf = GDF.official(adaptive_loss_weight=cfg.loss_weighting == "adaptive")
        self.autocast_dtype = None
        if cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda"):
            self.autocast_dtype = torch.bfloat16
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.last_checkpoint: Path | None = self.resume_from
        if self.resume_from is not None:
            self._load_state()

    # ------------------------------------------------------------------ run bookkeeping
    def _run_json(self) -> Path:
        return self.run_dir / "run.json"

    def _recorded_init(self) -> str | None:
        p = self._run_json()
        return json.loads(p.read_text()).get("init") if p.is_file() else None

    def _check_same_run(self) -> None:
        p = self._run_json()
        if not p.is_file():
            return
        old = json.loads(p.read_text())["config"]
        new = self.cfg.to_dict()
        diff = [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in MATH_KEYS if old.get(k) != new[k]]
        if diff:
            raise InputError("--resume with a config that changes the training maths:\n  " + "\n  ".join(diff)
                             + "\n  (only steps and the log/preview/save intervals may change on resume)")

    def _write_run_json(self) -> None:
        if not self.info.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        info = {"config": self.cfg.to_dict(), "init": self.init, "model_config": self.model_cfg.kwargs(),
                "world_size": self.info.world_size}
        tmp = self._run_json().with_suffix(".json.tmp")
        tmp.write_text(json.dumps(info, indent=2))
        tmp.replace(self._run_json())

    def log(self, msg: str) -> None:
        if self.info.is_main:
            self.log_fn(msg)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "optimizer": dist_util.full_optim_state(self.wrapped, self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "gdf": self.gdf.state_dict(),
            "rng": ckpt.rng_state(),
            "data": {"global_batches": self.step, "seed": self.cfg.seed, "global_batch": self.cfg.batch_size},
            "config": self.cfg.to_dict(),
        }

    def _load_state(self) -> None:
        st = ckpt.load_state(self.resume_from)
        if st["data"].get("global_batch") != self.cfg.batch_size:
            raise InputError(f"the checkpoint was written with batch_size {st['data'].get('global_batch')}, "
                             f"this run has {self.cfg.batch_size}")
        dist_util.load_optim_state(self.wrapped, self.optimizer, st["optimizer"], [n for n, _ in self.trainable])
        self.scheduler.load_state_dict(st["scheduler"])
        if self.ema is not None:
            if st["ema"] is None:
                raise InputError("the checkpoint has no EMA state but ema_decay is set")
            self.ema.load_state_dict(st["ema"])
        self.gdf.load_state_dict(st["gdf"])
        ckpt.set_rng_state(st["rng"])
        self.step = int(st["step"])
        self.log(f"resumed from {self.resume_from} at step {self.step}")

    def weights(self) -> tuple[dict[str, torch.Tensor], str, dict[str, torch.Tensor] | None]:
        """(tensors to save, file name, EMA tensors) — official Stage C keys, or LoRA factors."""
        if self.cfg.lora_rank > 0:
            w = {k: v.float().cpu() for k, v in lora_state_dict(self.model).items()}
            name = "lora.safetensors"
        else:
            w = dist_util.full_state_dict(self.wrapped)
            name = "model.safetensors"
        ema = {k: v.cpu() for k, v in self.ema.shadow.items()} if self.ema is not None else None
        return w, name, ema

    def save(self) -> Path | None:
        weights, name, ema = self.weights()
        state = self.state_dict()
        path = None
        if self.info.is_main:
            meta = {"format": "cascadekit-lora", "rank": str(self.cfg.lora_rank), "alpha": repr(self.cfg.lora_alpha),
                    "targets": json.dumps(self.cfg.lora_targets)} if self.cfg.lora_rank > 0 else \
                {"format": "pt", "model": f"StageC/{self.cfg.model}"}
            path = ckpt.save_checkpoint(self.run_dir, self.step, weights=weights, weights_name=name,
                                        weights_metadata=meta, ema=ema, state=state, keep=self.cfg.keep_checkpoints)
            self.last_checkpoint = path
            self.log(f"saved checkpoint {path}")
        dist_util.barrier(self.info)
        return path

    # ------------------------------------------------------------------ one micro-batch
    def _update_draws(self) -> dict[str, Any]:
        """The random draws of the whole global batch of this update (identical for any split)."""
        g = step_generator(self.cfg.seed, self.step)
        n = self.cfg.batch_size
        group = self.plan.batch(self.step)[0]
        return {"t": self.gdf.sample_t(n, g),  # official training t draw
                "noise": torch.randn((n, *group.shape), generator=g),
                "drop": torch.rand(n, generator=g) < self.cfg.caption_dropout,
                "use_img": torch.rand(n, generator=g) < self.cfg.image_embedding_fraction}

    def _micro_batch(self, m: int, draws: dict[str, Any]):
        """Micro-batch ``m`` of this update on this rank: its slice of the update's global batch.

        The global batch (``batch_size`` samples, one bucket) is cut into ``grad_accum_steps * world_size``
        equal parts; part ``m * world_size + rank`` is this process's micro-batch ``m``. Data and draws are
        those of the global batch, so accumulation and DDP give the result of one full batch."""
        parts = self.cfg.grad_accum_steps * self.info.world_size
        part = m * self.info.world_size + self.info.rank
        group, idx, epoch = self.plan.batch(self.step, part, parts)
        batch = self.data.read(group.name, idx)
        x0 = batch["latents"].to(self.device, torch.float32)  # (b,16,h,w)
        sl = slice(part * self.micro, (part + 1) * self.micro)
        t, noise, drop, use_img = (draws[k][sl] for k in ("t", "noise", "drop", "use_img"))
        d = self.gdf.diffuse(x0, t, noise.to(self.device), shift=self.cfg.shift, loss_shift=self.cfg.loss_shift)
        cond = self.conditioner(batch, drop, use_img, self.device)
        # d.noise_cond: the r (b,) the network sees; d.loss_weight: P2 / adaptive weight (b,)
        return d.x_t, d.noise_cond.to(self.device), cond, d.target, d.loss_weight.to(self.device), d.logsnr, epoch

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------ one update
    def train_step(self) -> dict[str, Any]:
        cfg = self.cfg
        torch.manual_seed(_mix(cfg.seed, self.step, self.info.rank))  # dropout masks: a function of the step
        t0 = time.perf_counter()
        raw_losses, weighted = [], 0.0
        logsnrs = []
        epoch = 0
        draws = self._update_draws()
        for m in range(cfg.grad_accum_steps):
            noised, r, cond, target, weight, logsnr, epoch = self._micro_batch(m, draws)
            last = m == cfg.grad_accum_steps - 1
            sync = contextlib.nullcontext() if (last or not self.info.enabled) else self.wrapped.no_sync()
            with sync:
                with self._autocast():
                    pred = self.wrapped(noised, r, **cond)
                loss_per = F.mse_loss(pred.float(), target, reduction="none").mean(dim=(1, 2, 3))  # (b,)
                loss = (loss_per * weight).mean() / cfg.grad_accum_steps
                if not dist_util.all_finite(loss, self.info):
                    self._diverged(f"the loss is {loss.item()} at step {self.step + 1}")
                loss.backward()
            raw_losses.append(dist_util.all_gather_cat(loss_per.detach(), self.info))
            logsnrs.append(dist_util.all_gather_cat(logsnr, self.info))
            weighted += float(loss.detach())
        if cfg.loss_weighting == "adaptive":  # buckets see the whole global batch once per update, on every rank
            self.gdf.update_loss_weight(torch.cat(logsnrs), torch.cat(raw_losses))
        grad_params = [p for _, p in self.trainable] if not dist_util.is_fsdp(self.wrapped) else None
        if grad_params is None:
            grad_norm = self.wrapped.clip_grad_norm_(cfg.grad_clip)
        else:
            grad_norm = nn.utils.clip_grad_norm_(grad_params, cfg.grad_clip)
        if not dist_util.all_finite(grad_norm, self.info):
            self._diverged(f"the gradient norm is {float(grad_norm)} at step {self.step + 1}")
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.ema is not None and self.step % cfg.ema_every == 0:
            self.ema.update(self.trainable, self.step)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - t0
        return {"step": self.step, "loss": float(torch.cat(raw_losses).mean()), "loss_weighted": weighted,
                "lr": lr, "grad_norm": float(grad_norm), "samples_per_s": cfg.batch_size / dt,
                "step_time_s": dt, "epoch": epoch}

    def _diverged(self, what: str) -> None:
        where = f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else \
            "no checkpoint was written yet"
        raise TrainingDivergedError(
            f"training stopped: {what} (not finite). Nothing was saved after this; {where}. "
            "Check the store for NaN/inf latents or embeddings, lower lr, or use precision: fp32.")

    # ------------------------------------------------------------------ previews
    def preview(self) -> Path | None:
        """Sample a few prompts of the store with the current (EMA) weights; previewer-decoded PNG grid."""
        if self.previewer is None or not self.info.is_main:
            return None
        if dist_util.is_fsdp(self.wrapped):  # the unwrapped module holds only this rank's shard
            self.log("previews are skipped under FSDP (sample from a saved checkpoint instead)")
            return None
        from cascadekit.codec.diffusion.samplers import sample_final
        from cascadekit.codec.images import save_grid

        cfg = self.cfg
        group = self.data.groups[0]
        idx = list(range(min(cfg.preview_count, group.size)))
        batch = self.data.read(group.name, idx)
        n = len(idx)
        model = self.model
        was_training = model.training
        model.eval()
        saved = None
        if self.ema is not None:
            saved = {k: p.detach().clone() for k, p in self.trainable}
            _copy_named(self.trainable, self.ema.shadow)
        try:
            with torch.no_grad(), self._autocast():
                cond = self.conditioner(batch, torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool),
                                        self.device)
                uncond = self.conditioner.unconditional(n, self.device) if self.conditioner.empty is not None else None
                g = torch.Generator().manual_seed(cfg.seed)
                out = sample_final(model, None, shape=(n, *group.shape), steps=cfg.preview_steps, cfg=4.0,
                                   shift=2.0, model_inputs=cond, unconditional_inputs=uncond, generator=g,
                                   device=self.device)
                real = self.previewer(batch["latents"].to(self.device, next(self.previewer.parameters()).dtype))
                fake = self.previewer(out.x0.to(real.dtype))
        finally:
            if saved is not None:
                _copy_named(self.trainable, saved)
            model.train(was_training)
        rows = [[im.float().clamp(0, 1).cpu() for im in real], [im.float().clamp(0, 1).cpu() for im in fake]]
        path = save_grid(rows, self.run_dir / "previews" / f"step_{self.step:06d}.png")
        self.log(f"preview {path} (top: store latents, bottom: samples)")
        return path

    # ------------------------------------------------------------------ loop
    def run(self, stop_after: int | None = None) -> TrainResult:
        """Train until ``cfg.steps`` updates (or ``stop_after`` more updates, to simulate an interruption)."""
        cfg = self.cfg
        self._write_run_json()
        log_path = self.run_dir / LOG_FILE
        if self.resume_from is not None and self.info.is_main and log_path.is_file():
            _truncate_log(log_path, self.step)  # drop lines of steps that will be redone
        self.log(f"training Stage C ({cfg.model}{', LoRA r=%d' % cfg.lora_rank if cfg.lora_rank else ''}) "
                 f"for {cfg.steps} updates of {cfg.batch_size} samples on {self.info.world_size} process(es), "
                 f"device {self.device}, starting at step {self.step}")
        end = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)
        tb = None
        if cfg.tensorboard and self.info.is_main:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        while self.step < end:
            rec = self.train_step()
            self.history.append(rec)
            if self.info.is_main and (self.step % cfg.log_every == 0 or self.step == end or self.step == 1):
                rec = dict(rec, time=time.time())
                if self.device.type == "cuda":
                    rec["peak_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
                with open(log_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(rec) + "\n")
                if tb is not None:
                    for k in ("loss", "loss_weighted", "lr", "grad_norm", "samples_per_s"):
                        tb.add_scalar(f"train/{k}", rec[k], rec["step"])
                self.log(f"step {rec['step']:>6}  loss {rec['loss']:.4f}  lr {rec['lr']:.2e}  "
                         f"grad_norm {rec['grad_norm']:.3f}  {rec['samples_per_s']:.1f} samples/s")
            if cfg.preview_every and self.step % cfg.preview_every == 0:
                self.preview()
            if self.step % cfg.save_every == 0 or self.step == cfg.steps:
                self.save()
        if tb is not None:
            tb.close()
        return TrainResult(self.run_dir, self.step, self.last_checkpoint, self.history)

    def close(self) -> None:
        dist_util.teardown(self.info)


def _truncate_log(path: Path, step: int) -> None:
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:  # a line cut off by a kill
            continue
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(x + "\n" for x in keep), encoding="utf-8")
    tmp.replace(path)


def _copy_named(named: list[tuple[str, torch.Tensor]], values: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in named:
            p.copy_(values[n].to(p.dtype))


def train(data: str | Path | TrainData, config: TrainConfig, out: str | Path, *, init: str | Path | None = None,
          resume: bool = False, device: str | torch.device | None = None, text_encoder: Any = None,
          previewer: nn.Module | None = None, model_overrides: dict[str, Any] | None = None,
          stop_after: int | None = None, log: Callable[[str], None] = print) -> TrainResult:
    """Train Stage C on a latent store (path or :class:`~cascadekit.generator.data.TrainData`).

    out: the run folder (checkpoints/, previews/, train_log.jsonl, run.json). init: official Stage C
    weights to fine-tune (file/folder/hub id; required for LoRA). resume: continue from the run's latest
    checkpoint. text_encoder: an object with ``encode(captions) -> (clip_text, clip_text_pooled)``,
    needed when the store has no text embeddings (or for empty-caption embeddings). previewer: a
    Previewer for PNG previews every ``preview_every`` updates. model_overrides: StageC constructor
    arguments that replace the preset's (e.g. ``{"dropout": [0, 0]}``).
    Raises InputError before training for bad config/data, TrainingDivergedError on NaN/inf.
    """
    if not isinstance(data, (str, Path)):
        source = data
    else:
        source = open_store(data)
    trainer = Trainer(source, config, out, init=init, resume=resume, device=device, text_encoder=text_encoder,
                      previewer=previewer, model_overrides=model_overrides, log=log)
    try:
        return trainer.run(stop_after=stop_after)
    finally:
        trainer.close()
