"""Defaults for demos and the CLI: which weights to use when none are given, and sample photographs.

:func:`default_weights` looks for official weights in ``$CASCADEKIT_WEIGHTS`` and then
``~/.cache/cascadekit/weights``; when none are there it writes the built-in tiny RANDOM weight set
(:func:`cascadekit.codec.weights.tiny.write_tiny_weights`) to ``<cache>/tiny-random-weights`` and says
so (``DefaultWeights.tiny``), so that commands run anywhere but nobody mistakes the output for a
real reconstruction. ``<cache>`` is ``$CASCADEKIT_CACHE``, else ``$XDG_CACHE_HOME/cascadekit``, else
``~/.cache/cascadekit``.

:func:`sample_image_paths` / :func:`sample_images` give photographs shipped inside scikit-image's
package data (no download); :func:`sample_captions` their short true descriptions, shipped with cascadekit
(``codec/sample_photos.json``, package data), and :func:`sample_manifest` both as a ``.jsonl`` manifest
(written to ``<cache>/sample-photos.jsonl``) that ``cascadekit encode`` reads when given no INPUT, so the
default store has captions to train on.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cascadekit.codec.errors import InputError, OutputError, WeightsError
from cascadekit.codec.fsio import LOCK_NAME, AdvisoryLock, LockedError, atomic_write_text, describe_os_error

if TYPE_CHECKING:
    from PIL import Image

ENV_WEIGHTS = "CASCADEKIT_WEIGHTS"
ENV_CACHE = "CASCADEKIT_CACHE"
TINY_DIR_NAME = "tiny-random-weights"

#: colour photographs in scikit-image's ``data`` folder (installed with the package, never downloaded)
SAMPLE_IMAGES = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png")
#: file name -> caption of each sample photograph (package data beside this module)
CAPTIONS_FILE = Path(__file__).with_name("sample_photos.json")
SAMPLE_MANIFEST_NAME = "sample-photos.jsonl"

TINY_BANNER = (
    "!" * 78 + "\n"
    "!!  NO OFFICIAL WEIGHTS FOUND: using the built-in TINY RANDOM weight set.\n"
    "!!  Every output below comes from random networks and is MEANINGLESS.\n"
    f"!!  For real results pass --weights DIR (or set {ENV_WEIGHTS}) to the official\n"
    "!!  Stable Cascade files (stage_a, effnet_encoder, stage_b[_lite], previewer).\n" + "!" * 78
)


def cache_root() -> Path:
    """``$CASCADEKIT_CACHE``, else ``$XDG_CACHE_HOME/cascadekit``, else ``~/.cache/cascadekit``."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cascadekit"


def default_weight_dirs() -> list[Path]:
    """Where official weights are looked for, in order: ``$CASCADEKIT_WEIGHTS``, ``<cache>/weights``."""
    dirs = []
    if os.environ.get(ENV_WEIGHTS):
        dirs.append(Path(os.environ[ENV_WEIGHTS]).expanduser())
    dirs.append(cache_root() / "weights")
    return dirs


@dataclass(frozen=True)
class DefaultWeights:
    """The weights chosen by :func:`default_weights`: ``source`` folder, ``tiny`` (random weights!), ``why``.

    It is path-like (``os.fspath(w) == str(w.source)``), so it can be passed wherever a weights
    folder is expected (``Codec.from_pretrained(default_weights())``).
    """

    source: Path
    tiny: bool
    why: str

    def __fspath__(self) -> str:
        return str(self.source)

    def __str__(self) -> str:
        return str(self.source)


def _tiny_is_current(folder: Path) -> bool:
    """Whether a cached tiny set was written with the current tiny presets (configs can change between versions)."""
    from cascadekit.codec.models import (
        EfficientNetEncoderConfig,
        PreviewerConfig,
        StageAConfig,
        StageBConfig,
        StageCConfig,
    )

    side = folder / "cascadekit.json"
    if not side.is_file():
        return False
    try:
        models = json.loads(side.read_text()).get("models", {})
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    want = {
        "stage_a": StageAConfig.preset("tiny").kwargs(),
        "effnet": EfficientNetEncoderConfig.preset("official").kwargs(),
        "previewer": PreviewerConfig.preset("tiny").kwargs(),
        "stage_b": StageBConfig.preset("tiny").kwargs(),
        "stage_c": StageCConfig.preset("tiny").kwargs(),
    }
    want = json.loads(json.dumps(want))  # tuples -> lists, as stored
    files = ("stage_a.safetensors", "effnet_encoder.safetensors", "previewer.safetensors", "stage_b_lite.safetensors",
             "stage_c_lite.safetensors", "text_encoder/config.json", "tokenizer/vocab.json",
             "image_encoder/config.json")  # the whole default chain: encode ... train ... sample
    return all(models.get(k) == v for k, v in want.items()) and all((folder / f).is_file() for f in files)


def tiny_weights(folder: str | os.PathLike | None = None) -> Path:
    """The tiny random weight set in ``folder`` (default ``<cache>/tiny-random-weights``), written if
    missing or stale.

    One process writes at a time (a :class:`~cascadekit.codec.fsio.AdvisoryLock` on the folder; others
    wait for it, then find the set written). The sidecar ``cascadekit.json`` is written last and a set
    counts as current only with it, so a writer that was killed leaves a set the next caller rewrites.
    """
    from cascadekit.codec.weights.tiny import write_tiny_weights  # lazy: builds every model class

    target = Path(folder) if folder is not None else cache_root() / TINY_DIR_NAME
    if _tiny_is_current(target):
        return target
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(describe_os_error(e, target)) from None
    lock = _wait_for_lock(target, "tiny weight set")
    try:
        if not _tiny_is_current(target):  # else another process wrote it while this one waited
            _clear_except_lock(target)
            write_tiny_weights(target)
    finally:
        lock.release()
    if not _tiny_is_current(target):
        raise WeightsError(f"could not write the tiny weight set to {target}")
    return target


def _wait_for_lock(folder: Path, what: str, timeout_s: float = 600.0) -> AdvisoryLock:
    """The folder's advisory lock, waiting (polling) while another live process holds it."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return AdvisoryLock(folder, what).acquire()
        except LockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _clear_except_lock(folder: Path) -> None:
    """Remove an incomplete or stale set's files (the sidecar first: it marks a set complete)."""
    (folder / "cascadekit.json").unlink(missing_ok=True)
    for p in folder.iterdir():
        if p.name == LOCK_NAME:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def default_weights(stage_b: str = "lite") -> DefaultWeights:
    """Official weights from the default locations, else the tiny random set (``tiny=True``).

    A folder named by ``$CASCADEKIT_WEIGHTS`` must hold usable weights: if it does not, its
    :class:`WeightsError` is raised instead of silently falling back to random weights.
    """
    from cascadekit.codec.weights.sources import resolve_source

    tried = []
    for i, d in enumerate(default_weight_dirs()):
        explicit = i == 0 and bool(os.environ.get(ENV_WEIGHTS))
        if not d.is_dir():
            if explicit:
                raise WeightsError(f"${ENV_WEIGHTS}={d} is not a folder")
            tried.append(f"{d} (missing)")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ws = resolve_source(d, stage_b=stage_b, need=("stage_a", "effnet", "stage_b"))
        except WeightsError as e:
            if explicit:
                raise WeightsError(f"${ENV_WEIGHTS}={d}: {e}") from None
            tried.append(f"{d} (incomplete)")
            continue
        if ws.tiny:
            return DefaultWeights(d, True, f"{d} holds the tiny random weight set")
        return DefaultWeights(d, False, f"official weights in {d}")
    folder = tiny_weights()
    return DefaultWeights(folder, True, "no official weights in " + ", ".join(tried) + f"; using {folder}")


def sample_image_paths(names: tuple[str, ...] = SAMPLE_IMAGES) -> list[Path]:
    """Paths of colour photographs shipped with scikit-image (``astronaut.png``, ``coffee.png``, ...)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("scikit-image is not installed; pass image paths explicitly")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    paths = [data / n for n in names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"scikit-image's data folder {data} lacks {missing}; pass image paths explicitly")
    return paths


def sample_images(names: tuple[str, ...] = SAMPLE_IMAGES) -> list[tuple[str, "Image.Image"]]:
    """The sample photographs as ``(name, RGB PIL image)`` pairs, name = file stem (``astronaut``, ...)."""
    from cascadekit.codec.images import load_image

    return [(p.stem, load_image(p)) for p in sample_image_paths(names)]


def sample_captions(names: tuple[str, ...] = SAMPLE_IMAGES) -> dict[str, str]:
    """File name -> short true description of each sample photograph (``codec/sample_photos.json``)."""
    try:
        captions = json.loads(CAPTIONS_FILE.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"the sample captions {CAPTIONS_FILE} cannot be read ({e}); reinstall cascadekit") from None
    missing = [n for n in names if not captions.get(n)]
    if missing:
        raise InputError(f"{CAPTIONS_FILE} has no caption for {missing}; reinstall cascadekit")
    return {n: captions[n] for n in names}


def sample_manifest(folder: str | os.PathLike | None = None, names: tuple[str, ...] = SAMPLE_IMAGES) -> Path:
    """A ``.jsonl`` manifest of the sample photographs (absolute ``path``, ``key`` = file stem, ``caption``)
    in ``folder`` (default ``<cache>``), rewritten atomically only when its content would change."""
    captions = sample_captions(names)
    rows = [{"path": str(p), "key": p.stem, "caption": captions[p.name]} for p in sample_image_paths(names)]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    target = Path(folder) if folder is not None else cache_root()
    path = target / SAMPLE_MANIFEST_NAME
    try:
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            return path
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(describe_os_error(e, path)) from None
    atomic_write_text(path, text)
    return path
