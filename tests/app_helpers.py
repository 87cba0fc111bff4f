"""The app under test: built on the tiny random weights with a small store, a store with a skipped (broken) image,
"runs" (a Stage C weights file, a Stage C run and a Stage B run, both with EMA weights) and a tiny canny
ControlNet, launched in this process on 127.0.0.1 on a free port."""
from __future__ import annotations

import contextlib
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
import store_helpers  # noqa: E402
from controlnet_helpers import write_controlnet  # noqa: E402

SMALL = {"height": 64, "width": 64, "steps": 2, "dsteps": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fixtures(root: Path, weights: Path) -> dict:
    """A store (16 rows, captions), a store with one skipped image, a run (a copy of the tiny Stage C), a Stage C
    and a Stage B training run (perturbed tiny weights + EMA), a canny ControlNet, test images."""
    store = root / "photos.zarr"
    store_helpers.build(store, n=16)
    run = root / "run1"
    run.mkdir()
    shutil.copy(weights / "stage_c_lite.safetensors", run / "stage_c.safetensors")
    cnet = write_controlnet(root / "canny.safetensors", "canny")
    rng = np.random.default_rng(0)
    photo = root / "photo.png"
    Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(photo)
    broken = root / "broken.png"
    broken.write_bytes(photo.read_bytes()[:200])
    return {"store": store, "skips_store": store_with_a_skip(root / "skips", root / "skips.zarr"),
            "run": run / "stage_c.safetensors", "controlnet": cnet, "photo": photo, "broken": broken,
            "stage_c_run": training_run(root / "runc", weights / "stage_c_lite.safetensors", "model.safetensors"),
            "stage_b_run": training_run(root / "runb", weights / "stage_b_lite.safetensors",
                                        "stage_b_lite.safetensors")}


def store_with_a_skip(folder: Path, out: Path) -> Path:
    """A store encoded from a folder of 3 images and one truncated PNG (``cut``, skipped as truncated)."""
    from datasets_helpers import TinyEncoder

    from cascadekit.datasets.builder import build_latent_dataset

    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"ok{i}.png")
    (folder / "cut.png").write_bytes((folder / "ok0.png").read_bytes()[:300])
    build_latent_dataset([folder], out, TinyEncoder(), resolution=64, batch_size=2, chunk_rows=4, num_workers=0,
                         progress=False, min_size=16)
    return out


def training_run(run: Path, weights_file: Path, name: str) -> Path:
    """A training run with one checkpoint: ``weights_file``'s tensors perturbed (as after training) and an EMA
    perturbed differently, in the layout ``cascadekit train`` writes."""
    from cascadekit.generator.checkpoint import save_checkpoint

    base = load_file(str(weights_file))
    gen = torch.Generator().manual_seed(3)

    def perturbed(scale: float) -> dict:
        return {k: v + scale * v.float().std().nan_to_num() * torch.randn(v.shape, generator=gen).to(v.dtype)
                if v.is_floating_point() and v.numel() > 1 else v.clone() for k, v in base.items()}

    save_checkpoint(run, 1, weights=perturbed(0.2), weights_name=name, ema=perturbed(0.1), state={"step": 1})
    return run


@contextlib.contextmanager
def running_app(weights: Path, files: dict, queue_size: int = 4):
    """(demo, url) of the launched app; closed afterwards."""
    from cascadekit.cli.app import build_app, labelled, launch_options
    from cascadekit.cli.app_jobs import AppConfig

    tuned = files["stage_b_run"] / "checkpoints" / "step_000001" / "stage_b_lite.safetensors"  # a Stage B file
    config = AppConfig(weights=str(weights), stores=labelled([files["store"], files["skips_store"]]),
                       runs={"run1": files["run"], "runc": files["stage_c_run"], "runb": files["stage_b_run"]},
                       stage_b_weights={"tuned": tuned},
                       queue_size=queue_size, work_dir=Path(tempfile.mkdtemp(prefix="cascadekit-app-test-")))
    demo = build_app(config, {"canny": files["controlnet"]})
    port = free_port()
    demo.launch(prevent_thread_lock=True, quiet=True, **launch_options("127.0.0.1", port, config))
    try:
        yield demo, f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        shutil.rmtree(config.work_dir, ignore_errors=True)


def generate_args(**overrides) -> dict:
    """Every input of the /generate endpoint (small and fast), with overrides."""
    args = {"prompt": "a red fox", "negative": "", "height": 64, "width": 64, "n": 1, "seed": 7,
            "random_seed": False, "steps": 2, "guidance": 4.0, "shift": 2.0, "dsteps": 1, "dguidance": 1.1,
            "sampler": "ddpm", "variation": None, "init": None, "strength": 0.8, "run": None, "lora": [],
            "tokens": "", "cnet": None, "control_image": None, "mask": None, "cstrength": 1.0}
    args.update(overrides)
    return args


def disconnect_mid_job(url: str, demo, api_name: str, data: list, started) -> float:
    """Send one ``api_name`` request (``data``: its inputs in order) as a fresh browser-like session, read its event
    stream until ``started()`` is true, then drop the connection (a closed tab). Returns when it was dropped."""
    import uuid

    import httpx

    session = uuid.uuid4().hex
    fn_index = next(i for i, f in demo.fns.items() if f.api_name == api_name)
    body = {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None}
    httpx.post(f"{url}gradio_api/queue/join", json=body, timeout=30).raise_for_status()
    with httpx.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": session}, timeout=60) as r:
        for _ in r.iter_lines():
            if started():
                break
    return time.monotonic()


def count_generate_steps(monkeypatch, delay: float) -> list[dict]:
    """Every Generate job's steps as they run, appended in start order: {"counts": {stage: forward calls},
    "t0", "t1" (monotonic start / end of its sampling)}; each Stage C step is made to last >= ``delay`` s."""
    import cascadekit.cli.app_generate as gen

    runs, real = [], gen.step_monitor

    @contextlib.contextmanager
    def counting(stages, job, report=None):
        slow = stages["Stage C"][0].register_forward_pre_hook(lambda m, a: time.sleep(delay))
        rec = {"t0": time.monotonic(), "t1": None}
        try:
            with real(stages, job, report) as counts:
                rec["counts"] = counts
                runs.append(rec)
                yield counts
        finally:
            rec["t1"] = time.monotonic()
            slow.remove()

    monkeypatch.setattr(gen, "step_monitor", counting)
    return runs


def started(runs: list[dict], n: int):
    """A check: the ``n``-th counted job has run two Stage C steps."""
    return lambda: len(runs) >= n and runs[n - 1]["counts"]["Stage C"] >= 2


def wait_until(cond, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.05)
