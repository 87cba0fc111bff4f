"""The app under test: built on the tiny random weights with a small store, a "run" (Stage C weights file) and a
tiny canny ControlNet, launched in this process on 127.0.0.1 on a free port."""
from __future__ import annotations

import contextlib
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import store_helpers  # noqa: E402
from controlnet_helpers import write_controlnet  # noqa: E402

SMALL = {"height": 64, "width": 64, "steps": 2, "dsteps": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fixtures(root: Path, weights: Path) -> dict:
    """A store (16 rows, captions), a run (a copy of the tiny Stage C), a canny ControlNet, test images."""
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
    return {"store": store, "run": run / "stage_c.safetensors", "controlnet": cnet, "photo": photo,
            "broken": broken}


@contextlib.contextmanager
def running_app(weights: Path, files: dict, queue_size: int = 4):
    """(demo, url) of the launched app; closed afterwards."""
    from cascadekit.cli.app import build_app, labelled, launch_options
    from cascadekit.cli.app_jobs import AppConfig

    config = AppConfig(weights=str(weights), stores=labelled([files["store"]]), runs={"run1": files["run"]},
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
