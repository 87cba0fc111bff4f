"""Every benchmark with its CUDA settings in one command, one JSON (issue 15). Target: < 8 min on one H100/H200.

    python benchmarks/gpu_suite.py --out benchmarks/results/gpu_suite.json
    python benchmarks/gpu_suite.py --dry-run          # tiny configs on CPU: checks the suite itself runs

Parts (each with random weights of the real architectures, bf16 on CUDA):

* ``encode``: synthetic 1024² baseline JPEGs -> nvJPEG batch decode (:mod:`cascadekit.datasets.cuda_jpeg`)
  -> resize to 768² on the GPU -> EfficientNet encoder (channels_last, bf16, optionally compiled): img/s; then
  ``build_latent_dataset`` end to end on 1,024 such JPEG files with ``device_decode`` (``encode --decode-on
  cuda``): img/s and where the main thread's time went (``pipeline``);
* ``forward``: Stage B / Stage C lite forward vs diffusers' ``StableCascadeUNet``, eager and compiled
  (``bench_stage_forward``; diffusers is skipped when it is not installed);
* ``sampling``: latency of one 1024² image: Stage C (lite and big) 20 steps + Stage B lite 10 steps with
  classifier-free guidance (batch 2), model forwards only (text encoding and Stage A are not included);
* ``train``: Stage C lite bf16-autocast training steps (AdamW fused, grad clip): samples/s and peak memory.

Runs on torch 2.4 and later (the GPU images carry older torch). Without CUDA (and without --dry-run) it
exits with a message.
"""
from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_stage_forward as bsf  # noqa: E402  (sibling script)

from cascadekit.codec.compile import CompileSettings, compile_checked  # noqa: E402
from cascadekit.codec.models import StageB, StageBConfig  # noqa: E402
from cascadekit.generator import StageC, StageCConfig  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    fn()
    ts = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def _jpegs(n: int, side: int) -> list[bytes]:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        base = torch.rand(3, 8, 8, generator=g)  # smooth images compress like photos, noise would not
        img = F.interpolate(base[None], size=(side, side), mode="bilinear")[0]
        buf = io.BytesIO()
        Image.fromarray((img.permute(1, 2, 0) * 255).byte().numpy()).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def part_encode(s: dict, device, dtype) -> dict:
    from cascadekit.codec.models.effnet import EfficientNetEncoder, EfficientNetEncoderConfig
    from cascadekit.datasets.cuda_jpeg import JpegBatchDecoder

    def cpu_decode(blob):
        from torchvision.io import ImageReadMode, decode_jpeg
        return decode_jpeg(torch.frombuffer(bytearray(blob), dtype=torch.uint8), mode=ImageReadMode.RGB)

    cfg = EfficientNetEncoderConfig.preset("official")
    enc = EfficientNetEncoder.from_config(cfg).to(device, dtype).eval().to(memory_format=torch.channels_last)
    run_enc = compile_checked(enc, CompileSettings(mode=s["compile_mode"])) if s["compile"] else enc
    blobs = _jpegs(s["encode_batch"], s["jpeg_side"])
    dec = JpegBatchDecoder(device, cpu_decode)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

    def step():
        imgs = torch.stack(dec.decode(blobs)).float().div_(255)
        x = F.interpolate(imgs, size=(s["encode_side"],) * 2, mode="bilinear", antialias=True)
        x = ((x - mean) / std).to(dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return run_enc(x)

    t_all = _time(step, device, s["repeats"])
    t_dec = _time(lambda: dec.decode(blobs), device, s["repeats"])
    return {"batch": len(blobs), "side": s["encode_side"], "jpeg_side": s["jpeg_side"], "compile": s["compile"],
            "img_per_s": len(blobs) / t_all, "decode_img_per_s": len(blobs) / t_dec, "routes": dict(dec.counts),
            "pipeline": _encode_pipeline(s, device, _SuiteEncoder(run_enc, device, dtype, mean, std))}


class _SuiteEncoder:
    """The builder's Encoder over the bare EfficientNet above: normalise, cast, channels_last, encode."""

    def __init__(self, run_enc, device, dtype, mean, std):
        self.run_enc, self.device, self.dtype, self.mean, self.std = run_enc, device, dtype, mean, std

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x - self.mean) / self.std).to(self.dtype).contiguous(memory_format=torch.channels_last)
        return self.run_enc(x)

    def identity(self) -> dict:
        return {"name": "gpu-suite-random-efficientnet"}


def _encode_pipeline(s: dict, device, encoder) -> dict:
    """``build_latent_dataset`` end to end on JPEG files (decode on the device, encode, write): img/s + stages."""
    from cascadekit.datasets.builder import build_latent_dataset

    corpus = s["tmp"] / "jpegs"
    corpus.mkdir()
    for i, blob in enumerate(_jpegs(s["pipeline_images"], s["jpeg_side"])):
        (corpus / f"{i:05d}.jpg").write_bytes(blob)
    t = time.perf_counter()
    summ = build_latent_dataset([corpus], s["tmp"] / "pipeline.zarr", encoder, resolution=s["encode_side"],
                                batch_size=s["encode_batch"], chunk_rows=max(256, s["encode_batch"]),
                                num_workers=s["pipeline_workers"], progress=False, device_decode=True)
    wall = time.perf_counter() - t
    return {"images": summ.ok, "img_per_s": summ.ok / wall, "decode_on": device.type,
            "stage_seconds": summ.stage_seconds, "seconds": wall}


def part_forward(s: dict, device, dtype_name: str) -> list:
    rows = []
    for compile_ in (False, True) if s["compile"] else (False,):
        args = ["--size", s["forward_size"], "--device", str(device), "--dtype", dtype_name,
                "--repeats", str(s["repeats"]), "--warmup", "1", "--out", str(s["tmp"] / "forward.json")]
        bsf.main(args + (["--compile"] if compile_ else []) + ([] if s["diffusers"] else ["--no-diffusers"]))
        rows += [{"compile": compile_, **r} for r in json.loads((s["tmp"] / "forward.json").read_text())["results"]]
    return rows


def _stage_c_inputs(cfg, b, hw, device, dtype):
    g = torch.Generator().manual_seed(0)
    return dict(x=torch.randn(b, cfg.c_in, hw, hw, generator=g), r=torch.rand(b, generator=g),
                clip_text=torch.randn(b, 77, cfg.c_clip_text, generator=g),
                clip_text_pooled=torch.randn(b, 1, cfg.c_clip_text_pooled, generator=g),
                clip_img=torch.randn(b, 1, cfg.c_clip_img, generator=g))


def part_sampling(s: dict, device, dtype) -> list:
    """Latency of the denoising loops of one image (CFG batch 2): Stage C steps then Stage B steps."""
    rows = []
    b_cfg = StageBConfig.preset(s["stage_b"])
    stage_b = StageB.from_config(b_cfg).to(device, dtype).eval()
    b_inp = bsf.make_inputs("b", b_cfg, 2, "lite" if not s["dry_run"] else "mid")
    b_inp = {k: v.to(device) for k, v in b_inp.items()}
    run_b = compile_checked(stage_b) if s["compile"] else stage_b
    for preset in s["stage_c_presets"]:
        c_cfg = StageCConfig.preset(preset)
        stage_c = StageC.from_config(c_cfg).to(device, dtype).eval()
        run_c = compile_checked(stage_c) if s["compile"] else stage_c
        c_inp = {k: v.to(device) for k, v in _stage_c_inputs(c_cfg, 2, s["c_side"], device, dtype).items()}

        def sample():
            with torch.inference_mode():
                for _ in range(s["c_steps"]):
                    run_c(c_inp["x"], c_inp["r"], c_inp["clip_text"], c_inp["clip_text_pooled"], c_inp["clip_img"])
                for _ in range(s["b_steps"]):
                    run_b(b_inp["x"], b_inp["r"], b_inp["effnet"], b_inp["clip"])

        rows.append({"stage_c": preset, "stage_b": s["stage_b"], "c_steps": s["c_steps"], "b_steps": s["b_steps"],
                     "compile": s["compile"], "latency_s": _time(sample, device, max(1, s["repeats"] // 3))})
        del stage_c, run_c
    return rows


def part_train(s: dict, device, dtype) -> dict:
    cfg = StageCConfig.preset(s["train_preset"])
    model = StageC.from_config(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    run = compile_checked(model) if s["compile"] else model
    inp = {k: v.to(device) for k, v in _stage_c_inputs(cfg, s["train_batch"], s["c_side"], device, dtype).items()}
    auto = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step():
        with auto:
            pred = run(inp["x"], inp["r"], inp["clip_text"], inp["clip_text_pooled"], inp["clip_img"])
        F.mse_loss(pred.float(), inp["x"]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = _time(step, device, s["repeats"])
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"preset": s["train_preset"], "batch": s["train_batch"], "compile": s["compile"],
            "samples_per_s": s["train_batch"] / t, "peak_memory_gib": peak}


def _diffusers_usable() -> bool:
    """diffusers imports with this torch (a recent diffusers on torch 2.4 fails with AttributeError, not
    ImportError: ``torch.accelerator`` is newer); otherwise the comparison is skipped with a note."""
    try:
        import diffusers  # noqa: F401  (optional)
    except Exception as e:  # noqa: BLE001 - any failure to import means: run without it
        print(f"[gpu_suite] diffusers not usable here ({type(e).__name__}: {e}); skipping the comparison",
              file=sys.stderr)
        return False
    return True


def settings(args, tmp: Path) -> dict:
    """Sizes per mode: the real ones on CUDA, tiny ones for --dry-run on CPU."""
    real = not args.dry_run
    return {
        "dry_run": args.dry_run, "compile": args.compile, "compile_mode": None, "tmp": tmp,
        "diffusers": not args.no_diffusers and _diffusers_usable(), "repeats": 5 if real else 1,
        "encode_batch": 64 if real else 2, "jpeg_side": 1024 if real else 64, "encode_side": 768 if real else 64,
        "pipeline_images": 1024 if real else 4, "pipeline_workers": 8 if real else 0,
        "forward_size": "lite" if real else "tiny", "stage_b": "lite" if real else "tiny",
        "stage_c_presets": ["lite", "big"] if real else ["tiny"], "c_side": 24 if real else 8,
        "c_steps": 20 if real else 2, "b_steps": 10 if real else 2,
        "train_preset": "lite" if real else "tiny", "train_batch": 8 if real else 2,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "gpu_suite.json")
    p.add_argument("--dry-run", action="store_true", help="tiny configs on CPU in fp32 (checks the suite runs)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile variants")
    p.add_argument("--no-diffusers", action="store_true")
    p.add_argument("--parts", default="encode,forward,sampling,train")
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_suite: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine, "
              "or pass --dry-run to check the suite on CPU with tiny configs", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    dtype_name = "fp32" if args.dry_run else "bf16"
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    import tempfile

    t0 = time.perf_counter()
    report = {"machine": {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor(),
                          "torch": torch.__version__, "python": platform.python_version(), "dtype": dtype_name}}
    with tempfile.TemporaryDirectory() as tmp:
        s = settings(args, Path(tmp))
        report["settings"] = {k: v for k, v in s.items() if k != "tmp"}
        parts = {"encode": lambda: part_encode(s, device, dtype), "forward": lambda: part_forward(s, device, dtype_name),
                 "sampling": lambda: part_sampling(s, device, dtype), "train": lambda: part_train(s, device, dtype)}
        for name in args.parts.split(","):
            t = time.perf_counter()
            report[name] = parts[name]()
            report.setdefault("seconds", {})[name] = time.perf_counter() - t
            print(f"[gpu_suite] {name} done in {report['seconds'][name]:.0f}s", flush=True)
    report["total_seconds"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.out} ({report['total_seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
