"""The network-agnostic diffusion training core: one :class:`TrainingLoop` drives any :class:`TrainTask`.

Determinism: update ``s`` trains on global batch ``s`` of the plan (``batch_size`` samples of one
bucket, a pure function of ``(seed, epoch)``, :mod:`~cascadekit.generator.batches`), and every random
draw of that batch (diffusion time ``t`` here, then the task's draws: noise, condition dropout, ...)
comes from a generator seeded by ``(seed, s)``; the batch and its draws are then cut into
``grad_accum_steps * world_size`` micro-batches. The global RNG (dropout) is re-seeded from
``(seed, s, rank)`` at each update. So a run resumed from a checkpoint continues exactly like the
uninterrupted run, N processes compute what one does, and ``grad_accum_steps`` micro-batches give the
gradient of the full batch (the adaptive loss buckets are updated once per update with the whole batch).

The objective is the released one: ``x_t`` from :class:`~cascadekit.codec.diffusion.gdf.GDF` (cosine
schedule, ``shift``), the module sees ``r = noise_cond``, per-sample MSE to the GDF target weighted by
P2 or the adaptive buckets. AdamW + warm-up, clipping, EMA of the trained parameters, bf16 autocast on
CUDA, gradient checkpointing (every submodule with a ``gradient_checkpointing`` flag), DDP / FSDP,
checkpoints with optimizer / scheduler / EMA / loss buckets / RNG / data position, JSONL and
TensorBoard logs, previews and a stop on a non-finite loss or gradient.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from cascadekit.codec import distributed as D
from cascadekit.codec.compile import CompileSettings, compile_checked
from cascadekit.codec.diffusion.gdf import GDF
from cascadekit.codec.errors import CascadeKitError, InputError, OutputError
from cascadekit.codec.fsio import AdvisoryLock, atomic_write_json, describe_os_error
from cascadekit.codec.images import save_grid
from cascadekit.generator import checkpoint as ckpt
from cascadekit.generator.batches import BatchPlan, _mix, step_generator
from cascadekit.generator.data import TrainData
from cascadekit.generator.ema import EMA
from cascadekit.generator.training import parallel
from cascadekit.generator.training.logs import TrainLog, check_tensorboard
from cascadekit.generator.training.optim import make_optimizer
from cascadekit.generator.training.prefetch import ReadAhead, ReadAheadSettings, StagedData
from cascadekit.generator.training.resume import RUN_JSON, check_same_run, choose_start, read_run_json
from cascadekit.generator.training.settings import CoreConfig
from cascadekit.generator.training.task import TrainTask

RNG_MODEL_INIT = -7  # key of the seed that initialises a randomly built network


class TrainingDivergedError(CascadeKitError):
    """The loss or the gradient norm became NaN/inf; the last good checkpoint was left intact."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    last_checkpoint: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)


def set_gradient_checkpointing(module: nn.Module, on: bool) -> None:
    """Set the ``gradient_checkpointing`` flag of every submodule that has one (the networks' convention)."""
    for m in module.modules():
        if hasattr(m, "gradient_checkpointing"):
            m.gradient_checkpointing = on


def init_seed(cfg: CoreConfig) -> int:
    """The seed a task uses for a randomly initialised network (a pure function of the run's seed)."""
    return _mix(cfg.seed, RNG_MODEL_INIT)


class TrainingLoop:
    """One training run of ``task`` on ``data`` into ``run_dir`` (see the module docstring).

    Everything that can be wrong (config, store, an existing run without ``resume``, an unusable
    checkpoint, an unwritable ``run_dir``, a second process on the same run) raises before any step.
    ``compile``: run the forward through ``torch.compile`` (:mod:`cascadekit.codec.compile`, checked
    against eager on the first step); a runtime choice like ``device``, not part of the run's config.
    ``read_ahead``: how :meth:`run` reads the coming micro-batches of a store on background threads
    (:mod:`~cascadekit.generator.training.prefetch`; same batches); None, or a source without ``fetch`` /
    ``assemble`` (in memory), reads each batch on the training thread.
    """

    def __init__(self, task: TrainTask, data: TrainData, cfg: CoreConfig, run_dir: str | Path, *,
                 resume: bool = False, device: str | torch.device | None = None,
                 log: Callable[[str], None] = print, compile: CompileSettings | None = None,
                 read_ahead: ReadAheadSettings | None = ReadAheadSettings()):
        self.task, self.data, self.cfg = task, data, cfg.validate()
        self.compile_settings = compile
        self.read_ahead = read_ahead
        self._reads: ReadAhead | None = None  # the read-ahead of a running loop
        self.run_dir = Path(run_dir)
        self.log_fn = log
        info = D.from_env()
        self.device = D.local_device(device, info)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self._lock: AdvisoryLock | None = None
        self._made_dirs: list[Path] = []  # folders and lock file this run created (removed again if it is refused)
        self._made_lock = False
        self._owns_group = D.init(info, self.device)
        self.info = D.current(info)
        try:
            self._check()
            self.plan = BatchPlan(data.groups, cfg.batch_size, cfg.seed)  # one plan batch = one update
            self._lock = self._take_lock()
            self._start(resume)
        except BaseException:
            self._remove_own_traces()  # a refused run leaves nothing it created (lock file, empty run folder)
            self.close()  # lock released, process group left if this run started it
            raise

    # ------------------------------------------------------------------ setup
    def _check(self) -> None:
        self.micro = self.cfg.micro_batch(self.info.world_size)
        errs = self.task.check(self.data)
        if errs:
            raise InputError("cannot train on this store:\n  " + "\n  ".join(errs))
        if self.cfg.tensorboard:
            check_tensorboard()

    def _take_lock(self) -> AdvisoryLock | None:
        """Rank 0 holds ``AdvisoryLock(run_dir, "training run")`` for the whole run."""
        if not self.info.is_main:
            return None
        self._made_dirs = [d for d in (self.run_dir, *self.run_dir.parents) if not d.exists()]  # deepest first
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(describe_os_error(e, self.run_dir) + " (--out)") from None
        lock = AdvisoryLock(self.run_dir, "training run")
        self._made_lock = not lock.path.exists()
        return lock.acquire()

    def _remove_own_traces(self) -> None:
        """After a refusal during setup: the lock file this run created (removed while still held, so no other
        process can hold it) and the folders it made, if they are still empty."""
        if self._lock is not None and self._lock.held and self._made_lock:
            self._lock.path.unlink(missing_ok=True)
        for d in self._made_dirs:
            try:
                d.rmdir()  # only an empty folder; a foreign or new file keeps it
            except OSError:
                break

    def _start(self, resume: bool) -> None:
        cfg = self.cfg
        self.resume_from = choose_start(self.run_dir, resume, self.log)
        recorded = read_run_json(self.run_dir) if self.resume_from is not None else None
        check_same_run(recorded, cfg)
        model = self.task.build(self.data, self.resume_from, recorded).float()
        set_gradient_checkpointing(model, cfg.gradient_checkpointing)
        if not (cfg.fsdp and self.info.active):  # FSDP moves unit by unit to its device_id (low peak memory)
            model.to(self.device)
        model.train()
        self.model = model
        self.trainable = self.task.trainable(model)
        self.wrapped = parallel.wrap(model, self.info, self.device, fsdp=cfg.fsdp, units=self.task.fsdp_units)
        # the training forward: the wrapped model, or it compiled (checked against eager on the first step)
        cs = self.compile_settings
        self.forward = self.wrapped if cs is None else compile_checked(self.wrapped, cs, "training forward")
        params = [p for p in self.wrapped.parameters() if p.requires_grad] if self._fsdp else \
            [p for _, p in self.trainable]
        self.optimizer, self.scheduler = make_optimizer(params, cfg)
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

    @property
    def _fsdp(self) -> bool:
        return parallel.is_fsdp(self.wrapped)

    def log(self, msg: str) -> None:
        if self.info.is_main:
            self.log_fn(msg)

    def _write_run_json(self) -> None:
        if not self.info.is_main:
            return
        rec = {"config": self.cfg.to_dict(), **self.task.record(), "world_size": self.info.world_size}
        atomic_write_json(self.run_dir / RUN_JSON, rec)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The resumable state (collective under FSDP: every rank calls it)."""
        return {
            "step": self.step,
            "optimizer": parallel.full_optim_state(self.wrapped, self.optimizer),
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
        parallel.load_optim_state(self.wrapped, self.optimizer, st["optimizer"], [n for n, _ in self.trainable])
        self.scheduler.load_state_dict(st["scheduler"])
        if self.ema is not None:
            if st["ema"] is None:
                raise InputError("the checkpoint has no EMA state but ema_decay is set")
            self.ema.load_state_dict(st["ema"])
        self.gdf.load_state_dict(st["gdf"])
        ckpt.set_rng_state(st["rng"])
        self.step = int(st["step"])
        self.log(f"resumed from {self.resume_from} at step {self.step}")

    def save(self) -> Path | None:
        """Write checkpoint ``step`` (rank 0 writes; the gathers are collective)."""
        weights, meta = self.task.checkpoint_weights(self.model, lambda: parallel.full_state_dict(self.wrapped))
        ema = {k: v.cpu() for k, v in self.ema.shadow.items()} if self.ema is not None else None
        state = self.state_dict()
        path = None
        if self.info.is_main:
            path = ckpt.save_checkpoint(self.run_dir, self.step, weights=weights, weights_name=self.task.weights_name,
                                        weights_metadata=meta, ema=ema, state=state, keep=self.cfg.keep_checkpoints)
            self.last_checkpoint = path
            self.log(f"saved checkpoint {path}")
        D.barrier(self.info)
        return path

    # ------------------------------------------------------------------ one micro-batch
    def _update_draws(self) -> dict[str, torch.Tensor]:
        """The random draws of the whole global batch of this update (identical for any split)."""
        g = step_generator(self.cfg.seed, self.step)
        n = self.cfg.batch_size
        group = self.plan.batch(self.step)[0]
        t = self.gdf.sample_t(n, g)  # official training t draw, first
        return {"t": t, **self.task.draws(g, n, group)}

    def _micro_batch(self, m: int, draws: dict[str, torch.Tensor]):
        """Micro-batch ``m`` of this update on this rank: its slice of the update's global batch.

        The global batch (``batch_size`` samples, one bucket) is cut into ``grad_accum_steps * world_size``
        equal parts; part ``m * world_size + rank`` is this process's micro-batch ``m``. Data and draws are
        those of the global batch, so accumulation and DDP give the result of one full batch.
        Returns ``(x_t, r (b,), conditioning, target, loss weight (b,), logSNR (b,), epoch)``."""
        part, parts = self._part(m)
        group, idx, epoch = self.plan.batch(self.step, part, parts)
        batch = (self._reads or self.data).read(group.name, idx)
        sl = slice(part * self.micro, (part + 1) * self.micro)
        mine = {k: v[sl] for k, v in draws.items()}
        x0, cond = self.task.inputs(batch, mine, self.device)
        d = self.gdf.diffuse(x0, mine["t"], mine["noise"].to(self.device), shift=self.cfg.shift,
                             loss_shift=self.cfg.loss_shift)
        return d.x_t, d.noise_cond.to(self.device), cond, d.target, d.loss_weight.to(self.device), d.logsnr, epoch

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------ one update
    def _accumulate(self) -> tuple[list[torch.Tensor], list[torch.Tensor], float, int]:
        """Forward + backward of every micro-batch of this update: (losses, logSNRs (all ranks), weighted, epoch)."""
        cfg = self.cfg
        raw_losses, logsnrs, weighted, epoch = [], [], 0.0, 0
        draws = self._update_draws()
        for m in range(cfg.grad_accum_steps):
            noised, r, cond, target, weight, logsnr, epoch = self._micro_batch(m, draws)
            last = m == cfg.grad_accum_steps - 1
            sync = contextlib.nullcontext() if (last or not self.info.active) else self.wrapped.no_sync()
            with sync:
                with self._autocast():
                    pred = self.forward(noised, r, **cond)
                loss_per = F.mse_loss(pred.float(), target, reduction="none").mean(dim=tuple(range(1, target.dim())))
                loss = (loss_per * weight).mean() / cfg.grad_accum_steps
                if not D.all_finite(loss, self.info):
                    self._diverged(f"the loss is {loss.item()} at step {self.step + 1}")
                loss.backward()
            raw_losses.append(D.all_gather_cat(loss_per.detach(), self.info))
            logsnrs.append(D.all_gather_cat(logsnr, self.info))
            weighted += float(loss.detach())
        return raw_losses, logsnrs, weighted, epoch

    def train_step(self) -> dict[str, Any]:
        """One optimizer update; returns its log record (step, loss, lr, grad_norm, throughput, epoch)."""
        cfg = self.cfg
        torch.manual_seed(_mix(cfg.seed, self.step, self.info.rank))  # dropout masks: a function of the step
        t0 = time.perf_counter()
        raw_losses, logsnrs, weighted, epoch = self._accumulate()
        if cfg.loss_weighting == "adaptive":  # buckets see the whole global batch once per update, on every rank
            self.gdf.update_loss_weight(torch.cat(logsnrs), torch.cat(raw_losses))
        if self._fsdp:
            grad_norm = self.wrapped.clip_grad_norm_(cfg.grad_clip)
        else:
            grad_norm = nn.utils.clip_grad_norm_([p for _, p in self.trainable], cfg.grad_clip)
        if not D.all_finite(grad_norm, self.info):
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
        """The task's preview grid with the current (EMA) weights -> ``previews/step_N.png`` (rank 0)."""
        if not self.info.is_main:
            return None
        if self._fsdp:  # the unwrapped module holds only this rank's shard
            self.log("previews are skipped under FSDP (sample from a saved checkpoint instead)")
            return None
        was_training = self.model.training
        self.model.eval()
        averaged = self.ema.applied(self.trainable) if self.ema is not None else contextlib.nullcontext()
        try:
            with averaged, torch.no_grad():
                rows = self.task.preview(self.model, self.data, self.device, self._autocast)
        finally:
            self.model.train(was_training)
        if rows is None:
            return None
        path = self.run_dir / "previews" / f"step_{self.step:06d}.png"
        try:
            save_grid(rows, path)
        except OSError as e:
            raise OutputError(describe_os_error(e, path)) from None
        self.log(f"preview {path} ({self.task.preview_caption})")
        return path

    # ------------------------------------------------------------------ loop
    def run(self, stop_after: int | None = None) -> TrainResult:
        """Train until ``cfg.steps`` updates (or ``stop_after`` more updates, to simulate an interruption)."""
        try:
            self._write_run_json()
            return self._loop(stop_after)
        finally:
            self.release()

    def _loop(self, stop_after: int | None) -> TrainResult:
        cfg = self.cfg
        log = TrainLog(self.run_dir, self.step, cfg.tensorboard) if self.info.is_main else None
        self.log(f"training {self.task.title} for {cfg.steps} updates of {cfg.batch_size} samples on "
                 f"{self.info.world_size} process(es), device {self.device}, starting at step {self.step}")
        end = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)
        try:
            self._reads = self._open_read_ahead(end)
            while self.step < end:
                rec = self.train_step()
                self.history.append(rec)
                if log is not None and (self.step % cfg.log_every == 0 or self.step == end or self.step == 1):
                    self._log_record(log, rec)
                if cfg.preview_every and self.step % cfg.preview_every == 0:
                    self.preview()
                if self.step % cfg.save_every == 0 or self.step == cfg.steps:
                    self.save()
        finally:
            if self._reads is not None:
                self._reads.close()  # its threads stopped and joined, whatever ended the loop
                self._reads = None
            if log is not None:
                log.close()
        return TrainResult(self.run_dir, self.step, self.last_checkpoint, self.history)

    def _open_read_ahead(self, end: int) -> ReadAhead | None:
        """The read-ahead of updates ``self.step .. end-1`` (None: batches read on this thread)."""
        if self.read_ahead is None or not isinstance(self.data, StagedData):
            return None
        return ReadAhead(self.data, self._micro_keys(self.step, end), self.read_ahead)

    def _micro_keys(self, start: int, end: int):
        """(group name, indices) of every micro-batch this rank reads in updates ``start .. end-1``, in order."""
        for step in range(start, end):
            for m in range(self.cfg.grad_accum_steps):
                group, idx, _ = self.plan.batch(step, *self._part(m))
                yield group.name, idx

    def _part(self, m: int) -> tuple[int, int]:
        """(the part of the global batch that is this rank's micro-batch ``m``, the number of parts)."""
        return m * self.info.world_size + self.info.rank, self.cfg.grad_accum_steps * self.info.world_size

    def _log_record(self, log: TrainLog, rec: dict[str, Any]) -> None:
        rec = dict(rec, time=time.time())
        if self.device.type == "cuda":
            rec["peak_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        log.write(rec)
        self.log(f"step {rec['step']:>6}  loss {rec['loss']:.4f}  lr {rec['lr']:.2e}  "
                 f"grad_norm {rec['grad_norm']:.3f}  {rec['samples_per_s']:.1f} samples/s")

    def release(self) -> None:
        """Release the run folder's lock (the run is over, or failed to start)."""
        if self._lock is not None:
            self._lock.release()

    def close(self) -> None:
        """Release the lock and leave the process group if this run started it."""
        self.release()
        if self._owns_group:
            D.shutdown()
            self._owns_group = False
