"""Every benchmark with its CUDA settings in one command, one JSON (issue 15). Target: < 8 min on one H100/H200.

    python benchmarks/gpu_suite.py --budget 450 --out out/gpu_suite.json   # each step in a capped process
    python benchmarks/gpu_suite.py --dry-run --no-compile                  # tiny configs on CPU, in-process
    python benchmarks/gpu_suite.py --dry-run                               # + compile: see below

On a device machine use ``benchmarks/device/run_gpu_suite.sh`` (installs the carried wheels, then runs this
with ``--budget``; its header gives the exact device call).

Steps (random weights of the real architectures, bf16 on CUDA; ``*_compiled`` = the same under
``torch.compile`` via ``codec.compile.compile_checked``, i.e. checked against eager on the first call):

* ``encode``: synthetic 1024² baseline JPEGs -> nvJPEG batch decode (:mod:`cascadekit.datasets.cuda_jpeg`)
  -> resize to 768² on the GPU -> EfficientNet encoder (channels_last): img/s; then ``build_latent_dataset``
  end to end on 1,024 JPEG files (64 distinct images, each written 16 times) with ``device_decode``
  (``encode --decode-on cuda``): img/s and where the main thread's time went (``pipeline``);
* ``forward``: Stage C then Stage B lite forward vs diffusers' ``StableCascadeUNet`` (``bench_stage_forward``;
  diffusers is skipped when it does not import);
* ``sampling``: latency of one 1024² image: Stage C (lite, then big) 20 steps + Stage B lite 10 steps with
  classifier-free guidance (batch 2), model forwards only (text encoding and Stage A are not included);
* ``train``: Stage C lite bf16-autocast training steps (AdamW fused, grad clip): samples/s and peak memory.

``--budget S``: every step runs in its own process, capped at ``min(STEP_CAPS[step], budget left)``; the
JSON is rewritten after each step (a kill still leaves the finished steps), each with its status. The
targets of issue 15 are printed next to the measured numbers at the end and stored under ``targets``.

``--dry-run`` with compile traces every ``*_compiled`` step with dynamo only (``--compile-backend eager``:
inductor on 2 CPU cores takes many minutes per network) and adds ``compile_check``: a micro Stage C
through inductor, checked against eager and timed both ways. Runs on torch 2.4 and later (the GPU images
carry older torch). Without CUDA (and without --dry-run) it exits 2 with a message.
"""
from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_stage_forward as bsf  # noqa: E402  (sibling script)
from gpu_suite_budget import Budget, run_steps, write_progress  # noqa: E402  (sibling module)

from cascadekit.codec.compile import CompileSettings, compile_checked  # noqa: E402
from cascadekit.codec.fsio import atomic_write_json  # noqa: E402
from cascadekit.codec.models import StageB, StageBConfig  # noqa: E402
from cascadekit.generator import StageC, StageCConfig  # noqa: E402

#: seconds each step may take on the GPU (a cap, not an estimate; compiled steps include compiling)
STEP_CAPS = {"forward": 90, "encode": 90, "forward_compiled": 180, "sampling": 60, "train": 45,
             "encode_compiled": 90, "train_compiled": 100, "sampling_compiled": 120, "compile_check": 170}
DRY_RUN_CAP_SCALE = 3  # the tiny CPU configs of --dry-run on 2 loaded cores take longer than the real ones on a GPU
EAGER_STEPS = ("encode", "forward", "sampling", "train")
#: the real run's order: eager first (a few seconds each on a GPU, capped), then the compiled forward that the
#: Stage C target needs, then the other compiled steps while the budget lasts
CUDA_COMPILE_STEPS = ("forward", "encode", "sampling", "train", "forward_compiled", "encode_compiled",
                      "train_compiled", "sampling_compiled")


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


def _build(cls, cfg, device, dtype, train: bool = False):
    """``cls.from_config(cfg)`` created directly on ``device`` (a 3.6B-parameter Stage C is initialised in
    seconds on a GPU, minutes on the host), in ``dtype`` (training keeps fp32 weights under autocast)."""
    with torch.device(device):
        model = cls.from_config(cfg)
    return model.to(device, torch.float32 if train else dtype).train(train)


def _compile(model, s: dict, name: str):
    return compile_checked(model, CompileSettings(mode=s["compile_mode"], backend=s["compile_backend"]), name)


def _compile_info(run) -> dict:
    return {"compiled": run.compiled, "checked_max_abs_diff": run.checked_max_abs_diff,
            "fallback_reason": run.fallback_reason}


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


def part_encode(s: dict, device, dtype, compiled: bool):
    """Yields the decode + encode step's img/s, then the same with the ``pipeline`` (builder) numbers."""
    from cascadekit.codec.models.effnet import EfficientNetEncoder, EfficientNetEncoderConfig
    from cascadekit.datasets.cuda_jpeg import JpegBatchDecoder

    def cpu_decode(blob):
        from torchvision.io import ImageReadMode, decode_jpeg
        return decode_jpeg(torch.frombuffer(bytearray(blob), dtype=torch.uint8), mode=ImageReadMode.RGB)

    enc = _build(EfficientNetEncoder, EfficientNetEncoderConfig.preset("official"), device, dtype).eval()
    enc = enc.to(memory_format=torch.channels_last)
    run_enc = _compile(enc, s, "EfficientNet encoder") if compiled else enc
    blobs = _jpegs(s["encode_batch"], s["jpeg_side"])
    dec = JpegBatchDecoder(device, cpu_decode)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

    def step():
        imgs = torch.stack(dec.decode(blobs)).float().div_(255)
        x = F.interpolate(imgs, size=(s["encode_side"],) * 2, mode="bilinear", antialias=True)
        x = ((x - mean) / std).to(dtype).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            return run_enc(x)

    t_all = _time(step, device, s["repeats"])
    t_dec = _time(lambda: dec.decode(blobs), device, s["repeats"])
    out = {"batch": len(blobs), "side": s["encode_side"], "jpeg_side": s["jpeg_side"], "compile": compiled,
           "img_per_s": len(blobs) / t_all, "decode_img_per_s": len(blobs) / t_dec, "routes": dict(dec.counts),
           **(_compile_info(run_enc) if compiled else {})}
    yield out
    yield {**out, "pipeline": _encode_pipeline(s, blobs, _SuiteEncoder(run_enc, device, dtype, mean, std))}


class _SuiteEncoder:
    """The builder's Encoder over the bare EfficientNet above: normalise, cast, channels_last, encode.
    ``device`` is where the builder sends the images (and decodes JPEGs with ``device_decode``)."""

    def __init__(self, run_enc, device, dtype, mean, std):
        self.run_enc, self.device, self.dtype, self.mean, self.std = run_enc, device, dtype, mean, std

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x - self.mean) / self.std).to(self.dtype).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            return self.run_enc(x)

    def identity(self) -> dict:
        return {"name": "gpu-suite-random-efficientnet"}


def _encode_pipeline(s: dict, blobs: list[bytes], encoder) -> dict:
    """``build_latent_dataset`` end to end on JPEG files (decode on the device, encode, write): img/s + stages.
    The files cycle through ``blobs`` (decoding identical bytes costs what decoding distinct ones does)."""
    from cascadekit.datasets.builder import build_latent_dataset

    corpus = s["tmp"] / "jpegs"
    corpus.mkdir(exist_ok=True)
    for i in range(s["pipeline_images"]):
        (corpus / f"{i:05d}.jpg").write_bytes(blobs[i % len(blobs)])
    t = time.perf_counter()
    summ = build_latent_dataset([corpus], s["tmp"] / "pipeline.zarr", encoder, resolution=s["encode_side"],
                                batch_size=s["encode_batch"], chunk_rows=max(256, s["encode_batch"]),
                                num_workers=s["pipeline_workers"], progress=False, device_decode=True)
    wall = time.perf_counter() - t
    return {"images": summ.ok, "img_per_s": summ.ok / wall, "decode_on": encoder.device.type,
            "stage_seconds": summ.stage_seconds, "seconds": wall}


def part_forward(s: dict, device, dtype_name: str, compiled: bool):
    """Yields the rows of ``bench_stage_forward`` after Stage C, then after Stage B."""
    rows, use_diffusers = [], s["diffusers"] and _diffusers_usable()
    for stage in ("c", "b"):
        args = ["--size", s["forward_size"], "--stage", stage, "--device", str(device), "--dtype", dtype_name,
                "--repeats", str(s["repeats"]), "--warmup", "1", "--out", str(s["tmp"] / "forward.json")]
        extra = (["--compile", "--compile-backend", s["compile_backend"]] if compiled else [])
        bsf.main(args + extra + ([] if use_diffusers else ["--no-diffusers"]))
        rows += [{"compile": compiled, **r} for r in json.loads((s["tmp"] / "forward.json").read_text())["results"]]
        yield rows


def _stage_c_inputs(cfg, b, hw, device):
    g = torch.Generator().manual_seed(0)
    inp = dict(x=torch.randn(b, cfg.c_in, hw, hw, generator=g), r=torch.rand(b, generator=g),
               clip_text=torch.randn(b, 77, cfg.c_clip_text, generator=g),
               clip_text_pooled=torch.randn(b, 1, cfg.c_clip_text_pooled, generator=g),
               clip_img=torch.randn(b, 1, cfg.c_clip_img, generator=g))
    return {k: v.to(device) for k, v in inp.items()}


def _c_call(run, inp):
    return run(inp["x"], inp["r"], inp["clip_text"], inp["clip_text_pooled"], inp["clip_img"])


def _sampling_latency(run_c, c_inp: dict, run_b, b_inp: dict, s: dict, device) -> float:
    """Median seconds of ``c_steps`` Stage C forwards then ``b_steps`` Stage B forwards (no grad)."""
    def sample():
        with torch.no_grad():
            for _ in range(s["c_steps"]):
                _c_call(run_c, c_inp)
            for _ in range(s["b_steps"]):
                run_b(b_inp["x"], b_inp["r"], b_inp["effnet"], b_inp["clip"])

    return _time(sample, device, max(1, s["repeats"] // 3))


def part_sampling(s: dict, device, dtype, compiled: bool):
    """Latency of the denoising loops of one image (CFG batch 2): Stage C steps then Stage B steps; yields
    the rows after each Stage C preset."""
    rows = []
    b_cfg = StageBConfig.preset(s["stage_b"])
    stage_b = _build(StageB, b_cfg, device, dtype).eval()
    b_inp = bsf.make_inputs("b", b_cfg, 2, "lite" if not s["dry_run"] else "mid")
    b_inp = {k: v.to(device) for k, v in b_inp.items()}
    run_b = _compile(stage_b, s, "Stage B") if compiled else stage_b
    for preset in s["stage_c_presets"]:
        c_cfg = StageCConfig.preset(preset)
        stage_c = _build(StageC, c_cfg, device, dtype).eval()
        run_c = _compile(stage_c, s, f"Stage C {preset}") if compiled else stage_c
        c_inp = _stage_c_inputs(c_cfg, 2, s["c_side"], device)
        latency = _sampling_latency(run_c, c_inp, run_b, b_inp, s, device)
        rows.append({"stage_c": preset, "stage_b": s["stage_b"], "c_steps": s["c_steps"], "b_steps": s["b_steps"],
                     "compile": compiled, "latency_s": latency,
                     **({"stage_c_compile": _compile_info(run_c)} if compiled else {})})
        del stage_c, run_c
        yield rows


def part_train(s: dict, device, dtype, compiled: bool):
    cfg = StageCConfig.preset(s["train_preset"])
    model = _build(StageC, cfg, device, dtype, train=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    run = _compile(model, s, "Stage C") if compiled else model
    inp = _stage_c_inputs(cfg, s["train_batch"], s["c_side"], device)
    auto = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step():
        with auto:
            pred = _c_call(run, inp)
        F.mse_loss(pred.float(), inp["x"]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = _time(step, device, s["repeats"])
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    yield {"preset": s["train_preset"], "batch": s["train_batch"], "compile": compiled,
           "samples_per_s": s["train_batch"] / t, "peak_memory_gib": peak,
           **(_compile_info(run) if compiled else {})}


def micro_stage_c() -> StageCConfig:
    """The tiny preset cut to one level (one block of each kind down and up): the fewest kernels to compile."""
    one_level = dict(c_hidden=[32], nhead=[2], blocks=[[1], [1]], block_repeat=[[1], [1]], level_config=["CTA"],
                     switch_level=[], dropout=[0.1])
    return StageCConfig(**{**StageCConfig.preset("tiny").kwargs(), **one_level})


def part_compile_check(s: dict, device, dtype, compiled: bool):
    """A micro Stage C (random, non-zero output) through inductor: compile time, the first-use difference
    against eager, and the time of a forward both ways. Fails when inductor fell back to eager."""
    cfg = micro_stage_c()
    model = _build(StageC, cfg, device, dtype).eval()
    bsf.randomize_(model)  # the official init zeroes the output conv: the check would compare zeros
    run = compile_checked(model, CompileSettings(backend="inductor"), "Stage C micro")
    inp = _stage_c_inputs(cfg, 2, s["c_side"], device)
    with torch.no_grad():
        t = time.perf_counter()
        _c_call(run, inp)
        compile_s = time.perf_counter() - t
        if not run.compiled:
            raise RuntimeError(f"inductor fell back to eager: {run.fallback_reason}")
        eager_s = _time(lambda: _c_call(model, inp), device, 3)
        compiled_s = _time(lambda: _c_call(run, inp), device, 3)
    yield {"model": "stage_c micro (one level of tiny)", "backend": "inductor", "torch": torch.__version__, "compile_s": compile_s,
           "checked_max_abs_diff": run.checked_max_abs_diff, "eager_s": eager_s, "compiled_s": compiled_s}


PARTS = {"encode": part_encode, "forward": part_forward, "sampling": part_sampling, "train": part_train,
         "compile_check": part_compile_check}


def run_step(name: str, s: dict, device, dtype, dtype_name: str):
    """The generator of partial results of step ``name`` (``<part>`` or ``<part>_compiled``)."""
    part = name.removesuffix("_compiled")
    kind = dtype_name if part == "forward" else dtype
    return PARTS[part](s, device, kind, name.endswith("_compiled"))


ALL_STEPS = ("compile_check", *EAGER_STEPS, *(f"{p}_compiled" for p in EAGER_STEPS))


def default_steps(compile_: bool, dry_run: bool) -> tuple[str, ...]:
    if not compile_:
        return EAGER_STEPS
    if dry_run:
        return ALL_STEPS
    return CUDA_COMPILE_STEPS


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
        "compile_backend": args.compile_backend or ("inductor" if real else "eager"),
        "diffusers": not args.no_diffusers, "repeats": 5 if real else 1,
        "encode_batch": 64 if real else 2, "jpeg_side": 1024 if real else 64, "encode_side": 768 if real else 64,
        "pipeline_images": 1024 if real else 4, "pipeline_workers": 8 if real else 0,
        "forward_size": "lite" if real else "tiny", "stage_b": "lite" if real else "tiny",
        "stage_c_presets": ["lite", "big"] if real else ["tiny"], "c_side": 24 if real else 8,
        "c_steps": 20 if real else 2, "b_steps": 10 if real else 2,
        "train_preset": "lite" if real else "tiny", "train_batch": 8 if real else 2,
    }


def _row(what: str, measured, op: str, target, dry_run: bool) -> dict:
    met = None
    if measured is not None and target is not None and not dry_run:
        met = measured >= target if op == ">=" else measured <= target
    return {"what": what, "measured": measured, "target": None if target is None else f"{op} {target}", "met": met}


def target_rows(report: dict) -> list[dict]:
    """Issue 15's GPU targets next to what this run measured (met: None in a dry run or when not measured)."""
    dry = report["settings"]["dry_run"]
    rows = [_row(f"{step}: img/s, nvJPEG + EfficientNet at 768² (one H100)", report[step].get("img_per_s"), ">=",
                 2500, dry) for step in ("encode", "encode_compiled") if step in report]
    for step in ("forward", "forward_compiled"):
        for r in report.get(step, []):
            if r["stage"] == "c":
                target = 0.7 if step == "forward_compiled" else None  # the target is for the compiled forward
                rows.append(_row(f"{step}: Stage C forward time, ours / diffusers", r.get("ratio_ours_over_diffusers"),
                                 "<=", target, dry))
    rows.append(_row("whole suite, seconds", report.get("total_seconds"), "<=", 480, dry))
    return rows


def print_targets(rows: list[dict], dry_run: bool) -> None:
    print("[gpu_suite] targets (issue 15)" + (" -- dry run: tiny CPU configs, not comparable" if dry_run else ""))
    for r in rows:
        m = "not measured" if r["measured"] is None else f"{r['measured']:.4g}"
        verdict = {True: "met", False: "NOT met", None: "-"}[r["met"]]
        print(f"  {r['what']:<66} measured {m:>12}   target {r['target'] or '(reference)':<10} {verdict}")


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def _run_in_process(steps, s, device, dtype, dtype_name, record) -> None:
    for name in steps:
        t = time.perf_counter()
        result = None
        for result in run_step(name, s, device, dtype, dtype_name):
            pass
        record(name, result, {"status": "ok", "seconds": time.perf_counter() - t})


def _child(name: str, progress: Path, s: dict, device, dtype, dtype_name) -> int:
    """One step in this process (``--budget``'s child): every partial result goes to ``progress``."""
    result = None
    try:
        for result in run_step(name, s, device, dtype, dtype_name):
            write_progress(progress, _jsonable(result), done=False)
    except BaseException:  # noqa: BLE001 - recorded for the parent, which runs the next step
        write_progress(progress, _jsonable(result), done=False, error=traceback.format_exc()[-3000:])
        raise
    write_progress(progress, _jsonable(result), done=True)
    return 0


def _child_argv(args, name: str, progress: Path) -> list[str]:
    flags = (["--dry-run"] if args.dry_run else []) + ([] if args.compile else ["--no-compile"])
    flags += (["--no-diffusers"] if args.no_diffusers else [])
    flags += (["--compile-backend", args.compile_backend] if args.compile_backend else [])
    return [sys.executable, str(Path(__file__).resolve()), *flags, "--child-step", name, "--child-progress",
            str(progress)]


def _cap_arg(text: str) -> tuple[str, float]:
    name, _, seconds = text.partition("=")
    try:
        return name, float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected STEP=SECONDS, got {text!r}") from None


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "gpu_suite.json")
    p.add_argument("--dry-run", action="store_true", help="tiny configs on CPU in fp32 (checks the suite runs)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile variants")
    p.add_argument("--compile-backend", default=None, help="torch.compile backend (default: inductor; dry run: eager)")
    p.add_argument("--no-diffusers", action="store_true")
    p.add_argument("--parts", default=None, help="comma-separated steps (default: all of this mode, in order)")
    p.add_argument("--budget", type=float, default=None,
                   help="wall-clock seconds for all steps; each step then runs in its own process, capped")
    p.add_argument("--cap", action="append", default=[], type=_cap_arg, metavar="STEP=SECONDS",
                   help="override a step's cap")
    p.add_argument("--child-step", help=argparse.SUPPRESS)
    p.add_argument("--child-progress", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _caps(args) -> dict:
    """Per-step caps in seconds: STEP_CAPS (scaled for a dry run), then ``--cap STEP=SECONDS``."""
    scale = DRY_RUN_CAP_SCALE if args.dry_run else 1
    caps = {k: v * scale for k, v in STEP_CAPS.items()}
    caps.update(dict(args.cap))
    return caps


class SuiteReport:
    """The one JSON: machine, settings, each step's result and status; rewritten after every step."""

    def __init__(self, out: Path, machine: dict, settings_: dict):
        self.out, self.t0 = out, time.perf_counter()
        self.data = {"machine": machine, "settings": _jsonable({k: v for k, v in settings_.items() if k != "tmp"}),
                     "steps": {}, "seconds": {}}

    def record(self, name: str, result, info: dict) -> None:
        if result is not None:
            self.data[name] = result
        self.data["steps"][name] = info
        if "seconds" in info:
            self.data["seconds"][name] = info["seconds"]
        error = f": {info['error'].strip().splitlines()[-1]}" if info.get("error") else ""
        print(f"[gpu_suite] {name}: {info['status']} ({info.get('seconds', 0):.0f}s){error}", flush=True)
        self.write()

    def write(self) -> None:
        self.data["total_seconds"] = time.perf_counter() - self.t0
        self.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out, _jsonable(self.data))


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_suite: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine, "
              "or pass --dry-run to check the suite on CPU with tiny configs", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    dtype_name = "fp32" if args.dry_run else "bf16"
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    steps = tuple(args.parts.split(",")) if args.parts else default_steps(args.compile, args.dry_run)
    unknown = [n for n in steps if n not in ALL_STEPS]
    if unknown:
        print(f"gpu_suite: unknown step(s) {', '.join(unknown)}; choose from {', '.join(ALL_STEPS)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        s = settings(args, Path(tmp))
        if args.child_step:
            return _child(args.child_step, args.child_progress, s, device, dtype, dtype_name)
        report = SuiteReport(args.out, _machine(device, dtype_name), s)
        if args.budget is None:
            _run_in_process(steps, s, device, dtype, dtype_name, report.record)
        else:
            run_steps(steps, lambda name, prog: _child_argv(args, name, prog), Budget(args.budget, _caps(args)),
                      Path(tmp), report.record)
    report.data["targets"] = target_rows({**report.data, "total_seconds": time.perf_counter() - report.t0})
    report.write()
    print_targets(report.data["targets"], args.dry_run)
    print(f"wrote {args.out} ({report.data['total_seconds']:.0f}s)")
    return 0 if all(i["status"] == "ok" for i in report.data["steps"].values()) else 1


def _machine(device, dtype_name: str) -> dict:
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    return {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "dtype": dtype_name}


if __name__ == "__main__":
    sys.exit(main())
