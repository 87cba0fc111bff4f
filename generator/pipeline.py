"""Text-to-image with Stable Cascade: Stage C (prior) -> Stage B -> Stage A, official notebook defaults.

Stage C: 20 DDPM steps, cfg 4, cfg_rho 0.7, shift 2, t 1 -> 0; conditional inputs are the prompt's
CLIP embeddings (``clip_text`` last hidden states, ``clip_text_pooled``), ``clip_img`` zeros (or the
CLIP image embedding of ``image=`` for image variations); unconditional inputs are the embeddings of
the EMPTY caption (or of ``negative_prompt``) with ``clip_img`` zeros. The sample is the x0 estimate of
the last step. Latent size: ``ceil(H / 42.67) x ceil(W / 42.67)`` (24x24 for 1024²).
Stage B + A: :meth:`cascadekit.codec.codec.Codec.decode` (10 steps, cfg 1.1, shift 1) conditioned on
the prompt's pooled embedding.

Image-to-image (``init_image=``, ``strength``): the image is encoded with the codec's EfficientNet to
the Stage C latent size, diffused to t = strength (as the official notebook, with the default shift 1
of ``GDF.diffuse``), and sampled from t_start = strength with ``int(prior_steps * strength)`` steps.

ControlNet (``control=ControlSettings(...)``, a ControlNet loaded with ``controlnet=`` / :meth:`load_controlnet`):
canny / inpainting / sr as in the official ControlNet notebook (same defaults: Stage C 20 steps, cfg 4, shift 2;
:meth:`upscale` uses cfg 1); the scaled ControlNet list goes to the conditional and the unconditional branch;
inpainting starts Stage C from the noised EfficientNet latents of the image at ``strength`` (default 1.0, as the
notebook). See :mod:`cascadekit.generator.control_sampling`; the control image used is returned and saved.

Stage C never runs in float16 (its activations overflow float16; the released weights are bf16):
``dtype=float16`` runs it in bfloat16 (float32 where bf16 is unsupported) with a warning, and a Stage C
module cast to float16 by hand is refused with :class:`PrecisionError`.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from cascadekit.codec.compile import CheckedCompile, CompileSettings, compile_checked
from cascadekit.codec.errors import InputError, PrecisionError
from cascadekit.generator.control_sampling import ControlSettings, paste_back, prepare_control
from cascadekit.generator.offload import Offload, check_mode, move_module, retarget
from cascadekit.generator.stage_c import StageC

LATENT_DIVISOR = 42.67  # official: ceil(H / 42.67) Stage C latent rows for an H-pixel image


def stage_c_latent_size(height: int, width: int) -> tuple[int, int]:
    """(h, w) of the Stage C latent for an image of height x width (24x24 for 1024x1024)."""
    return math.ceil(height / LATENT_DIVISOR), math.ceil(width / LATENT_DIVISOR)


@dataclass
class PipelineOutput:
    """images (B,3,H,W) float in [0,1] on CPU; latents (B,16,h,w) Stage C samples; one parameter dict per image;
    control_images (B,3,H',W') in [0,1]: the control used (edge map, masked image, upscaled input), or None."""

    images: torch.Tensor
    latents: torch.Tensor
    parameters: list[dict[str, Any]] = field(default_factory=list)
    control_images: torch.Tensor | None = None

    def _save_controls(self, image_paths: Sequence[Path]) -> list[Path]:
        """``<image>_control.png`` beside each image (nothing without a control)."""
        if self.control_images is None:
            return []
        from cascadekit.codec.fsio import atomic_write
        from cascadekit.codec.images import tensor_to_pil

        out = []
        for path, ctrl in zip(image_paths, self.control_images):
            target = Path(path).with_name(Path(path).stem + "_control.png")
            img = tensor_to_pil(ctrl)
            atomic_write(target, lambda f, img=img: img.save(f, format="PNG"))
            out.append(target)
        return out

    def pil(self) -> list:
        from cascadekit.codec.images import tensor_to_pil

        return [tensor_to_pil(im) for im in self.images]

    def save(self, out_dir: str | Path, prefix: str = "image") -> list[Path]:
        """Write one PNG per image; each carries its generation parameters as PNG text chunks
        (``parameters`` = JSON of everything, plus ``prompt``, ``negative_prompt``, ``seed``...)."""
        from cascadekit.generator.outputs import write_pngs

        paths = write_pngs(self.pil(), self.parameters, out_dir, prefix)
        self._save_controls(paths)
        return paths

    def write(self, out_dir: str | Path, prefix: str = "image"):
        """The PNGs plus ``grid.png`` (all images labelled by prompt and seed) and ``samples.json`` (every
        file with its parameters) in ``out_dir``; returns :class:`cascadekit.generator.outputs.SampleFiles`."""
        from cascadekit.generator.outputs import write_samples

        files = write_samples(self.images, self.parameters, out_dir, prefix)
        self._save_controls(files.images)
        return files


def read_png_parameters(path: str | Path) -> dict[str, Any]:
    """The generation parameters stored in a PNG written by :meth:`PipelineOutput.save` (a regular file of at most
    the input byte cap: a FIFO or device is refused, never opened)."""
    from PIL import Image

    from cascadekit.codec.input_files import DEFAULT_MAX_INPUT_BYTES, open_regular

    with open_regular(path, DEFAULT_MAX_INPUT_BYTES) as f, Image.open(f) as im:
        text = getattr(im, "text", None) or im.info
        if "parameters" not in text:
            raise InputError(f"{path} carries no cascadekit generation parameters")
        return json.loads(text["parameters"])


def _expand_prompts(prompts, negative_prompt, per_prompt: int, height: int, width: int,
                    strength: float) -> tuple[list[str], list[str] | None]:
    """The checked call arguments of :meth:`TextToImagePipeline.__call__`: ``(caption per image, negative per image
    or None)``, each prompt repeated ``per_prompt`` times; InputError for an empty prompt list, a count below 1,
    a side below 32 pixels, a strength outside (0, 1] or a negative-prompt list of another length."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise InputError("give at least one prompt")
    if per_prompt < 1:
        raise InputError(f"num_images_per_prompt must be >= 1, got {per_prompt}")
    if height < 32 or width < 32:
        raise InputError(f"height and width must be >= 32 pixels, got {height}x{width}")
    if not 0 < strength <= 1:
        raise InputError(f"strength must be in (0, 1], got {strength}")
    caps = [p for p in prompts for _ in range(per_prompt)]
    if negative_prompt is None:
        return caps, None
    negs = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
    if len(negs) != len(prompts):
        raise InputError(f"got {len(negs)} negative prompts for {len(prompts)} prompts")
    return caps, [q for q in negs for _ in range(per_prompt)]


def _prior_dtype(requested: torch.dtype, device: torch.device) -> torch.dtype:
    if requested != torch.float16:
        return requested
    from cascadekit.codec.precision import bf16_supported

    sub = torch.bfloat16 if bf16_supported(device) else torch.float32
    warnings.warn(f"Stage C does not run in float16 (its activations overflow it); running it in "
                  f"{str(sub).removeprefix('torch.')} instead. Use dtype='bf16' to silence this.", stacklevel=3)
    return sub


class TextToImagePipeline:
    """Stage C + codec (Stage B, Stage A, EfficientNet) + CLIP text (and optionally image) encoders.

    Build with :meth:`from_pretrained`, or from parts: ``TextToImagePipeline(stage_c, codec,
    text_encoder, image_encoder=None, empty=(clip_text (1,77,C), clip_text_pooled (1,1,P)))``.
    """

    def __init__(self, stage_c: StageC, codec: Any, text_encoder: Any, *, image_encoder: Any = None,
                 empty: tuple[torch.Tensor, torch.Tensor] | None = None, device: str | torch.device = "cpu",
                 source: str | None = None, tiny: bool = False, image_encoder_source: Any = None):
        self.stage_c = stage_c.eval().requires_grad_(False)
        self.codec = codec
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        self._image_encoder_source = image_encoder_source
        self.device = torch.device(device)
        self.source = source
        self.tiny = tiny
        self.lora: str | list[str] | None = None
        self.lora_scale: float | None = None
        self.stage_c_weights: str | None = None  # the Stage C file loaded (weights identity in outputs)
        self.controlnet: torch.nn.Module | None = None
        self.controlnet_info: Any = None  # ControlNetInfo of the loaded ControlNet
        self.offload = Offload(device=self.device)  # "none": see enable_offload
        self.compiled_stage_c: CheckedCompile | None = None  # see enable_compile
        if empty is None:
            t, p = text_encoder.encode([""])
            empty = (t[:1], p[:1])
        self.empty = (empty[0].float().to(self.device), empty[1].float().reshape(1, 1, -1).to(self.device))

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, source: Any = None, device: str | torch.device = "cpu", dtype: Any = torch.float32,
                        stage_c: str = "lite", stage_b: str = "lite", decoder_dtype: Any = None,
                        lora: str | Path | Sequence[str | Path] | None = None, lora_scale: float = 1.0,
                        lora_tokens: Sequence | None = None, stage_c_weights: str | Path | None = None,
                        ema: bool = False, controlnet: str | Path | None = None,
                        control: str | None = None, offload: str = "none") -> "TextToImagePipeline":
        """Load everything from a weights folder / diffusers snapshot(s) / hub id (see ``resolve_source``).

        source None: the tiny RANDOM default weights (tests/demos; meaningless images, labelled).
        dtype: Stage C and text encoder dtype (fp32 / bf16; fp16 -> bf16 for Stage C, with a warning);
        decoder_dtype: the codec's dtype (default ``dtype``; fp16 allowed, see codec.precision).
        lora (+ lora_scale, lora_tokens): LoRA file(s) merged into Stage C and the text encoder (:meth:`load_lora`).
        stage_c_weights (+ ema): other Stage C weights for the loaded layout, e.g. a training run or
        checkpoint (see :meth:`load_stage_c`); the rest (Stage B/A, encoders) comes from ``source``.
        controlnet (+ control): a ControlNet file / folder / hub id, see :meth:`load_controlnet`.
        offload: ``"model"`` / ``"sequential"`` load every network on the CPU and move it to ``device`` only
        while it runs (:meth:`enable_offload`); ``"none"`` loads everything on ``device``.
        """
        from cascadekit.codec.codec import Codec
        from cascadekit.codec.precision import parse_dtype
        from cascadekit.codec.text import TextEncoder, empty_caption_embeddings
        from cascadekit.codec.weights.components import load_component
        from cascadekit.codec.weights.sources import resolve_source

        if source is None:
            from cascadekit.codec.defaults import default_weights

            source = default_weights()
        device = torch.device(device)
        dt = parse_dtype(dtype)
        prior_dt = _prior_dtype(dt, device)
        load_dev = torch.device("cpu") if check_mode(offload) != "none" else device  # offload: on the CPU
        ws = resolve_source(source, stage_b=stage_b, stage_c=stage_c,
                            need=("stage_a", "effnet", "stage_b", "stage_c", "text_encoder", "tokenizer"))
        model, _ = load_component(ws, "stage_c", device=load_dev, dtype=prior_dt, preset=stage_c)
        text = TextEncoder.from_pretrained(ws, device=load_dev, dtype=prior_dt)  # never float16 (_prior_dtype)
        empty = empty_caption_embeddings(ws, text_encoder=text, device=load_dev)
        codec = Codec.from_pretrained(ws, stage_b=stage_b, device=load_dev,  # ws: resolved once, above
                                      dtype=parse_dtype(decoder_dtype, dt), text_encoder=text)
        pipe = cls(model, codec, text, empty=empty, device=device, source=str(source), tiny=bool(ws.tiny),
                   image_encoder_source=ws if ws.image_encoder is not None else None)
        pipe.stage_c_weights = str(ws.path("stage_c"))
        if stage_c_weights is not None:
            pipe.load_stage_c(stage_c_weights, ema=ema)
        if lora is not None:
            pipe.load_lora(lora, scale=lora_scale, tokens=lora_tokens)
        if controlnet is not None:
            pipe.load_controlnet(controlnet, control)
        if offload != "none":
            pipe.enable_offload(offload)
        return pipe

    def enable_compile(self, settings: CompileSettings | None = None) -> None:
        """Sample with a ``torch.compile``-d Stage C, checked against eager on its first call
        (:mod:`cascadekit.codec.compile`; eager with a warning when compilation fails). ``self.stage_c``
        stays the eager network (loading, LoRA and export use it)."""
        self.compiled_stage_c = compile_checked(self.stage_c, settings, name="Stage C")

    def enable_offload(self, mode: str = "model", move: Any = None, home: str | torch.device = "cpu") -> None:
        """Keep the networks on the CPU and move them to ``self.device`` only while they run:
        ``"model"`` one stage at a time, ``"sequential"`` one layer at a time (see generator/offload.py);
        ``"none"`` turns it off (the networks stay where they are). ``move(module, device, recurse)``
        replaces ``module.to`` (tests record the placement calls with it); ``home``: where networks wait."""
        self.offload.remove()
        self.offload = Offload(mode, device=self.device, home=home, move=move or move_module)
        if mode == "none":
            return
        for obj in (self.codec, self.text_encoder, self.image_encoder):
            if obj is not None:
                retarget(obj, self.device)
        text_model = getattr(self.text_encoder, "model", None)
        self.offload.add("text", text_model)
        self.offload.add("stage_c", self.stage_c, self.controlnet)
        self.offload.add("effnet", self.codec.effnet)
        self.offload.add("decoder", self.codec.stage_b, self.codec.stage_a, text_model)  # pooled captions for Stage B
        if self.image_encoder is not None:
            self.offload.add("image", getattr(self.image_encoder, "model", None))

    def load_controlnet(self, source: str | Path, control: str | None = None,
                        proj_blocks: list[int] | None = None) -> None:
        """Load a ControlNet (official ``controlnet/<canny|inpainting|super_resolution>.safetensors``: a file, a
        folder holding one, a hub id with ``control``, or a ``cascadekit train --config controlnet_*`` run folder /
        checkpoint) in Stage C's dtype and device. A ControlNet made for
        another Stage C (width or ResBlock-call count) is a :class:`WeightsError` here, before any sampling."""
        from cascadekit.codec.weights.controlnet import check_fits_stage_c, load_controlnet
        from cascadekit.generator.controlnet_runs import controlnet_file_of

        source = controlnet_file_of(source)  # a ControlNet training run: its newest intact checkpoint
        weight = next(self.stage_c.parameters())
        net, info = load_controlnet(source, control, device=weight.device, dtype=weight.dtype, proj_blocks=proj_blocks)
        check_fits_stage_c(net, self.stage_c, where=f"ControlNet {info.path}")
        self.controlnet, self.controlnet_info = net, info
        if self.offload.mode != "none":  # the ControlNet joins Stage C's stage
            self.enable_offload(self.offload.mode, self.offload.move, self.offload.home)

    def load_stage_c(self, path: str | Path, ema: bool = False) -> None:
        """Replace the Stage C weights, e.g. with a ``cascadekit train`` result.

        path: a Stage C weights file (official or diffusers keys), a diffusers ``prior/`` folder, a
        training checkpoint folder (``RUN/checkpoints/step_N``: its ``model.safetensors``, or its
        ``ema.safetensors`` with ``ema=True``) or a run folder (its newest intact checkpoint). The weights must
        fit the Stage C that was loaded (same preset); a LoRA-only checkpoint is refused (use ``load_lora``).
        """
        from cascadekit.codec.errors import WeightsError
        from cascadekit.codec.weights.assign import load_into
        from cascadekit.codec.weights.load import load_weights

        from cascadekit.generator.checkpoint import run_checkpoint

        p = run_checkpoint(path)  # a run folder: its newest intact checkpoint (not only `latest`)
        if p.is_dir() and (p / "meta.json").is_file():
            meta = json.loads((p / "meta.json").read_text())
            if meta.get("weights") == "lora.safetensors":
                raise InputError(f"{p} is a LoRA checkpoint: load it with --lora {p / 'lora.safetensors'}")
            if ema and not meta.get("ema"):
                raise InputError(f"checkpoint {p} has no EMA weights (the run had ema_decay unset)")
            p = p / ("ema.safetensors" if ema else meta["weights"])
        elif ema:
            raise InputError("ema=True needs a training checkpoint folder (with ema.safetensors)")
        dtype = next(self.stage_c.parameters()).dtype
        state = load_weights(p, dtype=dtype, kind="stage_c")
        try:
            load_into(self.stage_c, state, device=next(self.stage_c.parameters()).device, dtype=dtype)
        except WeightsError as e:
            raise WeightsError(f"{p} does not fit the loaded Stage C (another preset?): {e}") from None
        self.stage_c.eval().requires_grad_(False)
        self.stage_c_weights = str(p)

    def load_lora(self, path: str | Path | Sequence[str | Path], scale: float = 1.0,
                  tokens: Sequence | None = None) -> None:
        """Merge LoRA file(s) (official or cascadekit layout) into Stage C and the text encoder: new tokens such
        as ``[fernando]`` join the tokenizer; ``scale`` multiplies every delta; several files add up. tokens:
        the token list for official files with new tokens (``[("[fernando]", "^dog</w>")]``)."""
        from cascadekit.generator.lora_sampling import load_into_pipeline

        load_into_pipeline(self, path, scale=scale, tokens=tokens)

    def _image_encoder(self):
        if self.image_encoder is None:
            if self._image_encoder_source is None:
                raise InputError("image variation needs a CLIP image encoder (image_encoder/ in the weights folder)")
            from cascadekit.codec.text import ImageEncoder

            offloaded = self.offload.mode != "none"
            self.image_encoder = ImageEncoder.from_pretrained(self._image_encoder_source,
                                                              device=self.offload.home if offloaded else self.device)
            if offloaded:  # it joins the offloaded stages (and is pointed at self.device)
                self.enable_offload(self.offload.mode, self.offload.move, self.offload.home)
        return self.image_encoder

    # ------------------------------------------------------------------ helpers
    def _check_prior_dtype(self) -> torch.dtype:
        dt = next(self.stage_c.parameters()).dtype
        if dt == torch.float16:
            raise PrecisionError("Stage C must not run in float16 (its activations overflow float16 and the "
                                 "images come out NaN/black); cast it with .to(torch.bfloat16) or .float()")
        return dt

    def _images(self, images, n: int, what: str) -> torch.Tensor:
        from cascadekit.codec.images import load_image, to_batch

        if isinstance(images, (str, Path)):
            images = [images]
        if isinstance(images, (list, tuple)) and images and isinstance(images[0], (str, Path)):
            images = [load_image(p) for p in images]
        if isinstance(images, (list, tuple)) and len({tuple(getattr(i, "size", ())) for i in images}) > 1:
            from cascadekit.codec.images import pil_to_tensor, resize_center_crop

            size = images[0].size[::-1]
            images = [pil_to_tensor(resize_center_crop(i, size)) for i in images]
        x = to_batch(images)
        if x.shape[0] == 1 and n > 1:
            x = x.expand(n, -1, -1, -1)
        if x.shape[0] != n:
            raise InputError(f"{what}: got {x.shape[0]} images for {n} outputs; give one image, or one per output")
        return x

    def _encode_init(self, images: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Images (B,3,H,W) in [0,1] -> effnet latents (B,16,h,w) at the Stage C latent size."""
        from cascadekit.codec.images import imagenet_normalize

        x = F.interpolate(images.to(self.device), size=(32 * h, 32 * w), mode="bilinear", antialias=True,
                          align_corners=False).clamp(0, 1)
        eff_dtype = next(self.codec.effnet.parameters()).dtype
        with torch.no_grad():
            z = self.codec.effnet(imagenet_normalize(x).to(eff_dtype)).float()
        if tuple(z.shape[-2:]) != (h, w):  # effnet stride is 32: exact for 32h x 32w inputs
            raise InputError(f"init image encoded to {tuple(z.shape[-2:])}, expected {(h, w)}")
        return z

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def __call__(self, prompts: str | Sequence[str] = "", negative_prompt: str | Sequence[str] | None = None, *,
                 height: int = 1024, width: int = 1024, num_images_per_prompt: int = 1, seed: int | None = None,
                 prior_steps: int = 20, prior_guidance: float = 4.0, prior_shift: float = 2.0,
                 prior_cfg_rho: float = 0.7, prior_sampler: str = "ddpm",
                 decoder_steps: int = 10, decoder_guidance: float = 1.1,
                 image: Any = None, init_image: Any = None, strength: float = 1.0,
                 return_latents: bool = False, control: ControlSettings | None = None) -> PipelineOutput:
        """Generate ``len(prompts) * num_images_per_prompt`` images.

        prompts: a string or list; negative_prompt: one string or one per prompt (default: the empty
        caption, the released unconditional). height/width: output size in pixels (>= 32).
        seed: makes everything reproducible (None: a random seed, recorded in the output).
        image: image(s) for image variation (their CLIP image embedding conditions Stage C).
        init_image + strength in (0, 1]: image-to-image. return_latents: skip Stage B/A (images empty).
        control: a :class:`ControlSettings` for the loaded ControlNet (inpainting uses ``strength`` as the start
        noise level of the image's latents, as the official notebook's ``noise_level``).
        """
        prior_dt = self._check_prior_dtype()
        caps, negs = _expand_prompts(prompts, negative_prompt, num_images_per_prompt, height, width, strength)
        n = len(caps)
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        h, w = stage_c_latent_size(height, width)
        prepared = self._prepare_control(control, init_image, n, height, width)
        cond, uncond = self._conditioning(caps, negs, image, prepared)
        gen = torch.Generator().manual_seed(seed)
        init = prepared.init_images if prepared is not None and prepared.init_images is not None else (
            self._images(init_image, n, "init_image") if init_image is not None else None)
        steps, t_start, x_init = self._prior_start(init, gen, prior_steps, strength, n, (h, w))
        from cascadekit.codec.diffusion.samplers import sample_final

        with self.offload.stage("stage_c"):
            prior = self.stage_c if self.compiled_stage_c is None else self.compiled_stage_c
            last = sample_final(prior, x_init, steps=steps, cfg=prior_guidance, cfg_rho=prior_cfg_rho,
                                shift=prior_shift, t_start=t_start, sampler=prior_sampler, model_inputs=cond,
                                unconditional_inputs=uncond, generator=gen, shape=(n, 16, h, w), device=self.device)
        latents = last.x0.float()
        from cascadekit.codec.precision import check_finite

        check_finite(latents, "Stage C sampling", prior_dt)
        if return_latents:
            images = torch.zeros(n, 3, 0, 0)
        else:
            with self.offload.stage("decoder"):
                images = self.codec.decode(latents, steps=decoder_steps, guidance=decoder_guidance, seed=seed,
                                           size=(height, width), captions=caps).float().cpu()
            if prepared is not None and control.paste_back:
                images = paste_back(images, prepared)
        run = {  # the settings every image of the batch shares, in the record's order
            "batch_size": n, "height": height, "width": width, "prior_steps": steps,
            "prior_guidance": prior_guidance, "prior_shift": prior_shift, "prior_cfg_rho": prior_cfg_rho,
            "prior_sampler": prior_sampler, "decoder_steps": decoder_steps, "decoder_guidance": decoder_guidance,
            "image_variation": image is not None, "init_image": init_image is not None,
            "strength": strength if init is not None else None,
        }
        params = self._parameters(caps, negs, seed, run, control, prior_dt)
        return PipelineOutput(images=images, latents=latents.cpu(), parameters=params,
                              control_images=prepared.preview if prepared is not None else None)

    def _conditioning(self, caps: list[str], negs: list[str] | None, image: Any, prepared) -> tuple[dict, dict]:
        """Stage C's conditional and unconditional inputs for ``caps`` (negatives: ``negs`` or the empty caption;
        CLIP image embeddings of ``image`` for a variation, else zeros; the ControlNet's inputs in both)."""
        n, dev = len(caps), self.device
        with self.offload.stage("text"):
            clip_text, pooled = self.text_encoder.encode(caps)
            if negs is None:
                u_text, u_pooled = self.empty[0].expand(n, -1, -1), self.empty[1].expand(n, -1, -1)
            else:
                u_text, u_pooled = self.text_encoder.encode(negs)
        c_img = self.stage_c.clip_img_mapper.in_features
        clip_img = torch.zeros(n, 1, c_img, device=dev)
        if image is not None:
            encoder = self._image_encoder()  # loaded (and registered for offload) before its stage starts
            with self.offload.stage("image"):
                emb = encoder.encode(self._images(image, n, "image"))
            clip_img = emb.float().reshape(n, 1, -1).to(dev)
        cond = {"clip_text": clip_text.float().to(dev), "clip_text_pooled": pooled.float().reshape(n, 1, -1).to(dev),
                "clip_img": clip_img}
        uncond = {"clip_text": u_text.float().to(dev), "clip_text_pooled": u_pooled.float().reshape(n, 1, -1).to(dev),
                  "clip_img": torch.zeros_like(clip_img)}
        if prepared is not None:  # official notebook: cnet_uncond = cnet (both scaled by the strength)
            cond["cnet"] = uncond["cnet"] = prepared.cnet
        return cond, uncond

    def _prepare_control(self, control: ControlSettings | None, init_image: Any, n: int, height: int, width: int):
        """The prepared ControlNet inputs (None without ``control``); every control input is checked here, before
        the text encoder runs."""
        if control is None:
            return None
        if init_image is not None and control.check() == "inpainting":
            raise InputError("inpainting starts from its own control image; do not also give init_image")
        with self.offload.stage("effnet"):
            return prepare_control(control, self.controlnet, getattr(self.controlnet_info, "control", None),
                                   self._images, self.codec.effnet, n, height, width)

    def _prior_start(self, init, gen: torch.Generator, prior_steps: int, strength: float, n: int,
                     hw: tuple[int, int]):
        """``(steps, t_start, x_init)`` of Stage C sampling: from noise, or (image-to-image) ``init``'s latents
        noised to ``strength`` with ``prior_steps * strength`` steps."""
        if init is None:
            return prior_steps, 1.0, None
        from cascadekit.codec.diffusion.gdf import GDF

        with self.offload.stage("effnet"):
            z = self._encode_init(init, *hw)
        noise = torch.randn(z.shape, generator=gen).to(self.device)
        x_init = GDF().diffuse(z, torch.full((n,), float(strength)), noise).x_t  # official: shift 1 here
        return max(1, int(prior_steps * strength)), float(strength), x_init

    def _parameters(self, caps: list[str], negs: list[str] | None, seed: int, run: dict, control,
                    prior_dt: torch.dtype) -> list[dict[str, Any]]:
        """One record per image (what PNGs and samples.json carry): prompt, seed, index, ``run``, LoRA, control,
        weights."""
        return [{
            "prompt": caps[i], "negative_prompt": negs[i] if negs else "", "seed": seed, "index": i, **run,
            "lora": self.lora, "lora_scale": self.lora_scale,
            **self._control_parameters(control),
            "weights": ("TINY RANDOM WEIGHTS " if self.tiny else "") + str(self.source),
            "tiny_weights": bool(self.tiny), "stage_c_weights": self.stage_c_weights,
            "prior_dtype": str(prior_dt).removeprefix("torch."), "software": "cascadekit",
        } for i in range(len(caps))]

    def _control_parameters(self, control: ControlSettings | None) -> dict[str, Any]:
        if control is None:
            return {"control": None}
        return {"control": control.check(), "control_strength": float(control.strength),
                "controlnet": str(self.controlnet_info.path), "outpaint": bool(control.outpaint),
                "mask": str(control.mask) if isinstance(control.mask, (str, Path)) else None,
                "paste_back": bool(control.paste_back)}

    def upscale(self, image: Any, prompt: str = "", *, seed: int | None = None, prior_steps: int = 20,
                prior_guidance: float = 1.0, control_strength: float = 1.0, **kwargs: Any) -> PipelineOutput:
        """2× super-resolution with the loaded ``sr`` ControlNet (official notebook: Stage C cfg 1, shift 2, 20 steps).

        image: one image (path, PIL, or (1,3,H,W) tensor in [0,1]) -> output (1,3,2H,2W). kwargs: as ``__call__``.
        """
        x = self._images(image, 1, "image to upscale")
        height, width = 2 * x.shape[-2], 2 * x.shape[-1]
        return self(prompt, seed=seed, height=height, width=width, prior_steps=prior_steps,
                    prior_guidance=prior_guidance, control=ControlSettings("sr", x, strength=control_strength), **kwargs)
