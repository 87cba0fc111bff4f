"""Stage B fine-tuning from a latent store, as released (``train/train_b.py``), as a task of the training core.

* ``x0`` = the stored Stage A latents (4, H/4, W/4; un-quantised, / 0.43); ε target (the core's GDF,
  cosine schedule, ``shift`` 1 unless set, adaptive loss weight in the presets).
* ε is pyramid noise (:mod:`cascadekit.generator.pyramid_noise`, official size range [1, 16]).
* Conditions: ``effnet`` = the stored EfficientNet latents; with ``encode --effnet-scales`` one stored scale
  is drawn per sample (the store's approximation of the official f ~ U(0.5, 1) nearest downscale, whose
  factor the official trainer draws once per batch); with ``on_the_fly_effnet`` recomputed per sample at
  f ~ U(0.5, 1) from the stored crop pixels (:mod:`cascadekit.generator.effnet_on_the_fly`); zeros for
  ``effnet_dropout`` (10 %) of the samples.
  ``clip`` = the pooled CLIP text embedding (stored, or from the text encoder); the empty caption's for
  ``caption_dropout`` (5 %) of the samples, and for every sample of a store without text. ``pixels``: Stage B's
  own default, zeros (3, 8, 8), as released.
* Draws per global batch, after ``t``, in this order: ε (then its pyramid offsets), caption dropout,
  effnet dropout, scale slot, and (``on_the_fly_effnet`` only) the effnet factor f per sample.
* Checkpoints hold the official Stage B keys under the release name (``stage_b_lite.safetensors`` /
  ``stage_b.safetensors``): the file loads wherever an official Stage B file does.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from cascadekit.codec.errors import InputError, WeightsError
from cascadekit.codec.models.blocks import interpolate_fp32
from cascadekit.codec.models.stage_b import StageB, StageBConfig
from cascadekit.codec.weights.assign import build
from cascadekit.codec.weights.load import load_weights
from cascadekit.codec.weights.sources import resolve_source
from cascadekit.generator.batches import Group
from cascadekit.generator.effnet_on_the_fly import OnTheFlyEffnet
from cascadekit.generator.pyramid_noise import pyramid_noise
from cascadekit.generator.stage_b_data import PIXELS_FIELD, StageBData
from cascadekit.generator.tasks.stage_b_config import StageBTrainConfig
from cascadekit.generator.tasks.stage_b_empty import KEY as EMPTY_KEY
from cascadekit.generator.tasks.stage_b_empty import check_text_source, empty_record, resumed_empty
from cascadekit.generator.training.loop import init_seed
from cascadekit.generator.training.task import TrainTask


def stage_b_config(cfg: StageBTrainConfig, overrides: dict[str, Any] | None = None) -> StageBConfig:
    """The StageB preset of ``cfg.model`` with constructor arguments replaced by ``overrides``."""
    sb = StageBConfig.preset(cfg.model)
    if overrides:
        bad = sorted(set(overrides) - {f.name for f in dataclasses.fields(StageBConfig)})
        if bad:
            raise InputError(f"unknown StageB argument(s) {bad}")
        sb = dataclasses.replace(sb, **overrides)
    return sb


def init_file(init: str | Path, cfg: StageBTrainConfig) -> Path:
    """The Stage B file of ``init`` (a file, or the stage_b[_lite] file of a weights folder / hub id)."""
    p = Path(init)
    if p.is_file():
        return p
    return resolve_source(str(init), stage_b="big" if cfg.model == "big" else "lite", need=("stage_b",)).path("stage_b")


def preset_of_header(path: Path) -> str | None:
    """The StageB preset whose keys and shapes an official-layout safetensors file has (header only), or None."""
    if path.suffix != ".safetensors":
        return None
    with safe_open(str(path), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    for name in StageBConfig.PRESETS:
        with torch.device("meta"):
            ref = StageB.from_config(StageBConfig.preset(name)).state_dict()
        if {k: tuple(v.shape) for k, v in ref.items()} == shapes:
            return name
    return None


def load_init_state(init: str | Path, cfg: StageBTrainConfig) -> dict[str, torch.Tensor]:
    """Official-key Stage B weights (float32) from a file or a weights folder (any supported key layout)."""
    return load_weights(init_file(init, cfg), dtype=torch.float32, kind="stage_b")


def unit_of(model_cfg: StageBConfig) -> int:
    """Stage A latent sides must be multiples of this: patch size x 2^(levels - 1)."""
    return int(model_cfg.patch_size) * 2 ** (len(model_cfg.c_hidden) - 1)


class StageBTask(TrainTask):
    """Stage B fine-tuning (see the module docstring).

    init: Stage B weights to start from (official file, weights folder; required unless a random start is
    wanted). empty_pooled: the empty caption's pooled CLIP embedding (1, 1, c_clip); default: from the
    ``text_encoder``, else the empty-caption cache / text encoder of the ``init`` weights folder.
    text_encoder: ``encode(captions) -> (clip_text, clip_text_pooled)`` for stores with captions but no
    stored embeddings. model_overrides: StageB constructor arguments replacing the preset's.
    image_encoder: the EfficientNet (a ``Codec`` with ``effnet``) for ``on_the_fly_effnet``.
    """

    preview_caption = "none"

    def __init__(self, cfg: StageBTrainConfig, *, init: str | Path | None = None, text_encoder: Any = None,
                 empty_pooled: torch.Tensor | None = None, model_overrides: dict[str, Any] | None = None,
                 image_encoder: Any = None, log: Callable[[str], None] = print):
        self.cfg = cfg.validate()
        self.on_the_fly = OnTheFlyEffnet(image_encoder) if cfg.on_the_fly_effnet else None
        self.effnet_source = "stored latents"
        self.init = str(init) if init is not None else None
        self.text_encoder = text_encoder
        self.empty = empty_pooled
        self.model_overrides = dict(model_overrides or {})
        self.model_cfg = stage_b_config(cfg, model_overrides)
        self.title = f"Stage B ({cfg.model})"
        self.weights_name = cfg.weights_name
        self.log = log
        self.text_source = "stored"
        self.slots: dict[str, list[int]] = {}  # group -> the stored scale slots drawn from
        self.need_empty = False  # set by check(): dropped captions or a store without text need the empty caption

    # ------------------------------------------------------------------ before training
    def check(self, data: StageBData) -> list[str]:
        errs = self._init_problems()
        errs += self._shape_problems(data)
        errs += self._text_problems(data)
        errs += self._scale_problems(data) if self.on_the_fly is None else self._on_the_fly_problems(data)
        return errs

    def _on_the_fly_problems(self, data: StageBData) -> list[str]:
        errs = self.on_the_fly.problems(data)
        if not errs:
            self.effnet_source = self.on_the_fly.describe()
            self.log(f"EfficientNet condition: {self.effnet_source}")
        return errs

    def _init_problems(self) -> list[str]:
        """A Stage B file of another preset than ``model`` (read from the file header, nothing loaded)."""
        if self.init is None or self.model_cfg != StageBConfig.preset(self.cfg.model):
            return []
        path = init_file(self.init, self.cfg)
        found = preset_of_header(path)
        if found is None or found == self.cfg.model:
            return []  # another key layout (diffusers): the full check happens when the weights are assigned
        return [f"--init {path} holds the {found!r} Stage B, but the config trains model {self.cfg.model!r}; set "
                f"model: {found} (or use its preset), or pass {self.cfg.model} weights"]

    def _shape_problems(self, data: StageBData) -> list[str]:
        mc, errs, u = self.model_cfg, [], unit_of(self.model_cfg)
        for g in data.groups:
            c, h, w = g.shape
            if c != mc.c_in:
                errs.append(f"group {g.name!r}: Stage A latents have {c} channels, Stage B expects {mc.c_in} "
                            f"(shape {tuple(g.shape)})")
            if h % u or w % u:
                errs.append(f"group {g.name!r}: Stage A latents are {h}x{w}, Stage B {self.cfg.model} needs sides that "
                            f"are multiples of {u} (images whose sides are multiples of {4 * u} px); re-encode with "
                            "such a --resolution")
            e = getattr(data, "effnet_shape", {}).get(g.name)
            if e is not None and e[0] != mc.c_effnet:
                errs.append(f"group {g.name!r}: the stored latents have {e[0]} channels, Stage B's effnet input has "
                            f"{mc.c_effnet}; were they made by the EfficientNet encoder?")
            elif e is not None and abs(h * e[2] - w * e[1]) > max(h, w):  # more than one latent of rounding
                errs.append(f"group {g.name!r}: Stage A latents {h}x{w} and EfficientNet latents {e[1]}x{e[2]} have "
                            "different aspect ratios (not the same crop?)")
        return errs

    def _text_problems(self, data: StageBData) -> list[str]:
        width = getattr(data, "field_shapes", {}).get("clip_text_pooled")
        if width is not None and width[-1] != self.model_cfg.c_clip:
            return [f"stored clip_text_pooled width {width[-1]} != Stage B c_clip {self.model_cfg.c_clip}"]
        if self.empty is None:
            self.empty = self._find_empty()
        if "clip_text_pooled" in data.fields:
            self.text_source = "stored"
        elif "captions" in data.fields and self.text_encoder is not None:
            self.text_source = "text encoder"
        else:
            self.text_source = "empty"
        # a missing one is refused in build(): a resumed run has it in run.json (stage_b_empty)
        self.need_empty = self.text_source == "empty" or self.cfg.caption_dropout > 0
        errs = self._empty_width_problems()
        if errs:
            return errs
        if self.text_source == "empty":
            self.log("the store has no text embeddings (and no text encoder was given): every sample gets the "
                     "empty caption's pooled embedding, as decoding does by default")
        return []

    def _empty_width_problems(self) -> list[str]:
        if self.empty is not None and self.empty.shape[-1] != self.model_cfg.c_clip:
            return [f"the empty-caption embedding has width {self.empty.shape[-1]}, Stage B c_clip is "
                    f"{self.model_cfg.c_clip} (another text encoder?)"]
        return []

    def _settle_empty(self, recorded: dict[str, Any] | None) -> None:
        """The empty caption's embedding for training: on resume the one in run.json (one given again must be
        equal), else the given / found one; InputError when it is needed and there is none."""
        if recorded is not None:
            check_text_source(recorded, self.text_source)
            self.empty = resumed_empty(recorded, self.empty)
            if self.empty is None and self.init is not None:
                self.empty = self._find_empty()  # a run.json written before the embedding was recorded
        if self.need_empty and self.empty is None:
            raise InputError("the empty caption's pooled CLIP embedding is needed (caption dropout, or a store "
                             "without text) but none was found: pass --init with a weights folder that has "
                             "empty_caption.safetensors or text_encoder/, or --text-encoder")
        errs = self._empty_width_problems()
        if errs:
            raise InputError(errs[0])

    def _find_empty(self) -> torch.Tensor | None:
        if self.text_encoder is not None:
            return self.text_encoder.encode([""])[1][:1].float().cpu().reshape(1, 1, -1)
        if self.init is None or not Path(self.init).exists():
            return None
        from cascadekit.codec.text import empty_caption_embeddings

        folder = Path(self.init) if Path(self.init).is_dir() else Path(self.init).parent
        try:
            return empty_caption_embeddings(folder)[1].float().cpu().reshape(1, 1, -1)
        except (WeightsError, InputError, OSError):
            return None

    def _scale_problems(self, data: StageBData) -> list[str]:
        errs, wanted = [], [float(s) for s in self.cfg.effnet_scales]
        for g in data.groups:
            st = getattr(data, "scales", {}).get(g.name)
            if st is None:
                if wanted:
                    errs.append(f"group {g.name!r}: effnet_scales {wanted} were asked for but the store has no "
                                "stored scales (encode with --effnet-scales)")
                else:
                    e = data.effnet_shape[g.name]
                    self.log(f"group {g.name!r}: no stored EfficientNet scales; the stored {e[1]}x{e[2]} latents "
                             "(--encoder-resolution) condition every sample (the official trainer draws f ~ U(0.5, 1))")
                self.slots[g.name] = []
                continue
            missing = [s for s in wanted if s not in st.factors]
            if missing:
                errs.append(f"group {g.name!r}: effnet_scales {missing} are not stored (stored: {list(st.factors)})")
            use = wanted or list(st.factors)
            self.slots[g.name] = [st.factors.index(s) for s in use if s in st.factors]
            self.effnet_source = "stored scales (encode --effnet-scales)"
            self.log(f"group {g.name!r}: EfficientNet condition drawn per sample from the stored scales {use} (the "
                     "store's approximation of the official f ~ U(0.5, 1); --on-the-fly-effnet recomputes it)")
        return errs

    def build(self, data: StageBData, resume_from: Path | None, recorded: dict[str, Any] | None) -> nn.Module:
        """Stage B from the checkpoint (resume), the init weights, or random (official init)."""
        if self.init is None and recorded is not None:
            self.init = recorded.get("init")
        self._settle_empty(recorded)
        state = None
        if resume_from is not None:
            state = load_file(str(resume_from / self.weights_name))
        elif self.init is not None:
            state = load_init_state(self.init, self.cfg)
        if state is None:
            torch.manual_seed(init_seed(self.cfg))
            return StageB.from_config(self.model_cfg)
        try:
            return build(lambda: StageB.from_config(self.model_cfg), state, device="cpu", dtype=torch.float32,
                         name="Stage B")
        except WeightsError as e:
            raise InputError(f"the Stage B weights do not fit model {self.cfg.model!r}: {e}") from None

    def record(self) -> dict[str, Any]:
        return {"init": self.init, "model_config": self.model_cfg.kwargs(), "text": self.text_source,
                "effnet_scale_slots": self.slots, "effnet_source": self.effnet_source,
                EMPTY_KEY: empty_record(self.empty)}

    # ------------------------------------------------------------------ each update
    def draws(self, generator: torch.Generator, n: int, group: Group) -> dict[str, torch.Tensor]:
        eps = torch.randn((n, *group.shape), generator=generator)
        if self.cfg.pyramid_noise:
            eps = pyramid_noise(eps, generator)
        slots = self.slots.get(group.name) or [0]
        out = {"noise": eps,
               "drop_caption": torch.rand(n, generator=generator) < self.cfg.caption_dropout,
               "drop_effnet": torch.rand(n, generator=generator) < self.cfg.effnet_dropout,
               "slot": torch.tensor(slots)[torch.randint(0, len(slots), (n,), generator=generator)]}
        if self.on_the_fly is not None:
            out["effnet_factor"] = self.on_the_fly.draw(generator, n)
        return out

    def inputs(self, batch: dict[str, Any], draws: dict[str, torch.Tensor],
               device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x0 = batch["stage_a"].to(device, torch.float32)  # (b,4,H,W)
        keep = ~draws["drop_effnet"]
        effnet = self._effnet(batch, draws, x0.shape[-2:])
        effnet = (effnet * keep[:, None, None, None].to(effnet.dtype)).to(device)
        return x0, {"effnet": effnet, "clip": self._clip(batch, draws["drop_caption"], device)}

    def _effnet(self, batch: dict[str, Any], draws: dict[str, torch.Tensor], hw) -> torch.Tensor:
        """(b,16,h,w): the stored latents, or per sample its drawn scale (stored, or recomputed on the fly)
        resized as Stage B itself resizes it (bilinear, align_corners, to the patch grid H/p x W/p; Stage B's
        own resize is then the identity), so samples of different scales share a batch and each sees exactly
        what Stage B alone would make of it."""
        grid = tuple(int(s) // int(self.model_cfg.patch_size) for s in hw)
        if self.on_the_fly is not None:
            return self.on_the_fly.condition(batch[PIXELS_FIELD], draws["effnet_factor"], ~draws["drop_effnet"],
                                             grid, self.model_cfg.c_effnet)
        if "effnet_scales" not in batch:
            return batch["effnet"].float()
        scales, sizes, slot = batch["effnet_scales"].float(), batch["effnet_scale_sizes"], draws["slot"]
        out = torch.empty(scales.shape[0], scales.shape[2], *grid)
        for s in torch.unique(slot).tolist():
            rows = torch.nonzero(slot == s).flatten()
            h, w = (int(v) for v in sizes[s])
            out[rows] = interpolate_fp32(scales[rows, s, :, :h, :w], size=grid)
        return out

    def _clip(self, batch: dict[str, Any], drop: torch.Tensor, device: torch.device) -> torch.Tensor:
        n = int(drop.shape[0])
        if self.text_source == "stored":
            pooled = batch["clip_text_pooled"].float().reshape(n, 1, -1)
        elif self.text_source == "text encoder":
            caps = ["" if d else str(c) for c, d in zip(batch["captions"], drop.tolist())]
            pooled = self.text_encoder.encode(caps)[1].float().cpu().reshape(n, 1, -1)
        else:
            pooled = self.empty.float().reshape(1, 1, -1).expand(n, -1, -1)
        if self.empty is not None and bool(drop.any()):
            pooled = torch.where(drop[:, None, None], self.empty.float().reshape(1, 1, -1), pooled)
        return pooled.to(device)

    def checkpoint_weights(self, module: nn.Module, full_state: Callable[[], dict[str, torch.Tensor]]
                           ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return full_state(), {"format": "pt", "model": f"StageB/{self.cfg.model}"}
