"""Time and peak RSS of loading a full-size ``stage_b_lite`` checkpoint the way cascadekit does.

A synthetic checkpoint with the real keys and shapes (``StageBConfig.preset('lite')`` built on the meta
device) is written straight to the safetensors format, one tensor at a time, so writing it never holds
the weights in memory. Each measurement then runs in a FRESH Python process (clean RSS):

    state = load_weights(file, dtype=...)                      # cascadekit.codec.weights.load
    model = build(lambda: StageB.from_config(cfg), state, dtype=...)   # meta device + assign

then touches every page of every weight (a memory-mapped state dict is only really read then), and
reports the load time, the time until the weights are resident, the RSS after imports (baseline),
the peak RSS (``VmHWM``; ``ru_maxrss`` is recorded too), and the ratios peak/file,
(peak - baseline)/file and (peak - baseline)/model bytes. A few tensors of the loaded model are checked bit-exactly against the generator, so a
fast-but-wrong loader cannot pass.

    python benchmarks/bench_load.py                      # bf16 + fp32 files in /tmp, all cases
    python benchmarks/bench_load.py --preset tiny --out /tmp/b.json
    python benchmarks/bench_load.py --cold               # drop the file's page cache before each load

Cases: ``bf16 -> bf16``, ``fp32 -> fp32``, and ``bf16 -> fp32`` twice: converted while reading
(``load_weights(dtype=fp32)``) and converted by ``build(dtype=fp32)`` after an as-stored read.
The files are deleted at the end (``--keep`` keeps them).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ST_CODE = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ------------------------------------------------------------------------------ synthetic checkpoint

def stage_b_specs(preset: str = "lite", config: dict | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """``[(key, shape)]`` of a Stage B state dict (official order), from the model built on ``meta``."""
    from cascadekit.codec.models.stage_b import StageB, StageBConfig

    cfg = StageBConfig(**config) if config is not None else StageBConfig.preset(preset)
    with torch.device("meta"):
        model = StageB.from_config(cfg)
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def synthetic_tensor(index: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Cheap deterministic values for tensor number ``index``: multiples of 1/256 in [-0.5, 0.5).

    Exactly representable in bf16/fp16/fp32, so every dtype conversion is lossless and checkable.
    """
    n = 1
    for s in shape:
        n *= s
    period = ((torch.arange(256, dtype=torch.int64) * 7 + index * 13) % 256).to(torch.float32)  # element j: (7j + 13i) mod 256
    period = ((period - 128.0) / 256.0).to(dtype)
    return period.repeat(-(-n // 256))[:n].reshape(shape) if n else torch.empty(shape, dtype=dtype)


def write_synthetic(path: str | os.PathLike, specs, dtype: torch.dtype) -> int:
    """Write a ``.safetensors`` file with ``specs`` filled by :func:`synthetic_tensor`; returns its size.

    The format is written directly (8-byte little-endian header length, JSON header with
    dtype/shape/data_offsets, the raw little-endian bytes), one tensor at a time.
    """
    width = torch.empty((), dtype=dtype).element_size()
    header: dict = {"__metadata__": {"format": "pt", "note": "synthetic cascadekit benchmark weights"}}
    offset = 0
    for key, shape in specs:
        n = 1
        for s in shape:
            n *= s
        header[key] = {"dtype": ST_CODE[dtype], "shape": list(shape), "data_offsets": [offset, offset + n * width]}
        offset += n * width
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for i, (_, shape) in enumerate(specs):
            t = synthetic_tensor(i, shape, dtype)
            f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return os.path.getsize(path)


# ------------------------------------------------------------------------------ one measurement (child)

def _proc_status(field: str) -> int | None:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _ru_maxrss() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # bytes on macOS, KiB on Linux


def _rss_now() -> int:
    """Current resident set size in bytes."""
    v = _proc_status("VmRSS")
    return v if v is not None else _ru_maxrss()


def _peak_rss() -> int:
    """Peak RSS of this process image in bytes: ``VmHWM`` on Linux, else ``ru_maxrss``.

    ``ru_maxrss`` alone is not enough on Linux: at ``exec`` it inherits the high-water mark of the
    process that forked (or vforked) us, so a child started from a big parent (pytest after other
    tests) reports the parent's peak. ``VmHWM`` belongs to the fresh address space.
    """
    v = _proc_status("VmHWM")
    return v if v is not None else _ru_maxrss()


def drop_page_cache(path: str | os.PathLike) -> None:
    """Ask the kernel to forget the cached pages of this one file (clean pages only; harmless)."""
    if hasattr(os, "posix_fadvise"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def measure(path: str, model_dtype: str, convert_at: str, preset: str, config: dict | None, file_dtype: str,
            check: int = 6, threads: int = 2, cold: bool = False) -> dict:
    """Load ``path`` into a Stage B in this process; return times, RSS figures and an exactness check."""
    torch.set_num_threads(threads)
    from cascadekit.codec.models.stage_b import StageB, StageBConfig
    from cascadekit.codec.weights.assign import build
    from cascadekit.codec.weights.load import load_weights

    cfg = StageBConfig(**config) if config is not None else StageBConfig.preset(preset)
    dt = DTYPES[model_dtype]
    if cold:
        drop_page_cache(path)
    base_rss, base_peak = _rss_now(), _peak_rss()
    t0 = time.perf_counter()
    if convert_at == "read":
        state = load_weights(path, dtype=dt, kind="stage_b")
        t1 = time.perf_counter()
        model = build(lambda: StageB.from_config(cfg), state, dtype=dt, name="stage_b")
    else:  # as stored, then build(dtype=...) converts
        state = load_weights(path, kind="stage_b")
        t1 = time.perf_counter()
        model = build(lambda: StageB.from_config(cfg), state, dtype=dt, name="stage_b")
    del state
    t2 = time.perf_counter()
    # touch every page of every weight: a lazily mapped (mmap) state dict is only read here, and the
    # RSS of usable weights is what counts
    own = model.state_dict()
    for t in own.values():
        if t.numel():
            t.reshape(-1).view(torch.uint8)[::4096].sum()
    t3 = time.perf_counter()
    peak = _peak_rss()
    end_rss = _rss_now()
    ru_maxrss = _ru_maxrss()

    # exactness: ``check`` tensors (first, last, evenly in between; 0 = all) against the generator
    keys = list(own)
    check = len(keys) if check <= 0 else min(check, len(keys))
    picks = sorted({round(i * (len(keys) - 1) / max(check - 1, 1)) for i in range(check)})
    for i in picks:
        got = own[keys[i]]
        want = synthetic_tensor(i, tuple(got.shape), DTYPES[file_dtype]).to(dt)
        if got.dtype != dt or not torch.equal(got, want):
            raise SystemExit(f"value mismatch in {keys[i]} (dtype {got.dtype})")
    params = sum(t.numel() for t in own.values())
    model_bytes = sum(t.numel() * t.element_size() for t in own.values())
    return {
        "read_s": t1 - t0, "build_s": t2 - t1, "touch_s": t3 - t2, "total_s": t3 - t0,
        "baseline_rss": base_rss, "baseline_peak": base_peak, "peak_rss": peak, "end_rss": end_rss,
        "ru_maxrss": ru_maxrss,
        "params": params, "model_bytes": model_bytes, "checked_tensors": len(picks),
    }


# ------------------------------------------------------------------------------ driver

def run_case(path: Path, file_dtype: str, model_dtype: str, convert_at: str, preset: str, config, cold: bool,
             threads: int) -> dict:
    """Run :func:`measure` in a fresh interpreter; returns its dict plus file size and ratios."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(path), "--file-dtype", file_dtype,
           "--model-dtype", model_dtype, "--convert-at", convert_at, "--preset", preset, "--threads", str(threads)]
    if config is not None:
        cmd += ["--config", json.dumps(config)]
    if cold:
        cmd.append("--cold")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    size = path.stat().st_size
    res.update(
        case=f"{file_dtype} file -> {model_dtype} model" + (f" (convert at {convert_at})" if file_dtype != model_dtype else ""),
        file_dtype=file_dtype, model_dtype=model_dtype, convert_at=convert_at, file_bytes=size,
        peak_over_file=res["peak_rss"] / size,
        growth_over_file=(res["peak_rss"] - res["baseline_rss"]) / size,
        growth_over_model=(res["peak_rss"] - res["baseline_rss"]) / res["model_bytes"],
    )
    return res


def _gb(b: float) -> str:
    return f"{b / 1e9:6.2f}"


def table(rows: list[dict]) -> str:
    head = (f"{'case':48} {'file GB':>7} {'load s':>7} {'+touch s':>8} {'base GB':>7} {'peak GB':>7} "
            f"{'peak/file':>9} {'(peak-base)/file':>16} {'(peak-base)/model':>17}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['case']:48} {_gb(r['file_bytes']):>7} {r['read_s'] + r['build_s']:7.2f} {r['total_s']:8.2f} "
            f"{_gb(r['baseline_rss']):>7} "
            f"{_gb(r['peak_rss']):>7} {r['peak_over_file']:9.3f} {r['growth_over_file']:16.3f} {r['growth_over_model']:17.3f}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="lite", help="Stage B preset whose shapes the file has (lite / big / tiny)")
    p.add_argument("--config", default=None, help="StageBConfig kwargs as JSON (overrides --preset)")
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where the synthetic files are written")
    p.add_argument("--out", default="benchmarks/results/bench_load.json")
    p.add_argument("--file-dtypes", default="bf16,fp32")
    p.add_argument("--cold", action="store_true", help="drop the file's page cache before each load")
    p.add_argument("--keep", action="store_true", help="keep the synthetic files")
    p.add_argument("--threads", type=int, default=2)
    # child mode (one measurement, JSON on stdout)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--file-dtype", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--model-dtype", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--convert-at", default="read", choices=("read", "build"), help=argparse.SUPPRESS)
    p.add_argument("--check", type=int, default=6, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    config = json.loads(a.config) if a.config else None

    if a.child:
        res = measure(a.child, a.model_dtype, a.convert_at, a.preset, config, a.file_dtype,
                      check=a.check, threads=a.threads, cold=a.cold)
        print(json.dumps(res))
        return 0

    specs = stage_b_specs(a.preset, config)
    file_dtypes = [d.strip() for d in a.file_dtypes.split(",") if d.strip()]
    cases = [(fd, fd, "read") for fd in file_dtypes]
    if "bf16" in file_dtypes:
        cases += [("bf16", "fp32", "read"), ("bf16", "fp32", "build")]
    files: dict[str, Path] = {}
    rows: list[dict] = []
    try:
        for fd in file_dtypes:
            path = Path(a.dir) / f"cascadekit_bench_stage_b_{a.preset}_{fd}_{os.getpid()}.safetensors"
            files[fd] = path
            t0 = time.perf_counter()
            size = write_synthetic(path, specs, DTYPES[fd])
            print(f"wrote {path} ({size / 1e9:.2f} GB, {len(specs)} tensors) in {time.perf_counter() - t0:.1f}s",
                  flush=True)
        for fd, md, at in cases:
            r = run_case(files[fd], fd, md, at, a.preset, config, a.cold, a.threads)
            rows.append(r)
            print(f"  {r['case']}: {r['total_s']:.2f}s, peak {r['peak_rss'] / 1e9:.2f} GB "
                  f"({r['peak_over_file']:.3f}x file)", flush=True)
    finally:
        if not a.keep:
            for path in files.values():
                path.unlink(missing_ok=True)
    print()
    print(table(rows))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "preset": a.preset if config is None else "custom", "config": config, "cold_cache": a.cold,
        "threads": a.threads, "torch": torch.__version__, "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                   f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM",
    }
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
