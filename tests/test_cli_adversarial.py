"""Adversarial command lines (issue 16), run as a user runs them: ``python -m cascadekit.cli ...`` in a subprocess.

For every case: exit status 2, exactly one ``Error:``/``error:`` line, the flag (or input) at fault named in it, no
``Traceback`` anywhere, nothing written outside ``--out`` (and, since every case fails before work starts, nothing
written at all, except a run folder that ``train`` takes before refusing to resume), the input data untouched (every
file of the workspace hashed before and after).

Parse-time cases point ``--weights`` at a folder that does not exist: a command that got as far as loading weights
would fail with a weights message that does not name the flag, so the case fails.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from metrics_weights import backbone_dir  # noqa: E402,F401  (fixture)

MISSING = "{ws}/no-such-weights"
BIG = str(2**63)


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    mention: tuple[str, ...]  # every one must appear in the error output
    forbid: tuple[str, ...] = ()  # none may appear (Python parameter names, blaming the wrong thing)
    may_create_out: bool = False  # the command takes its --out (e.g. a run folder's lock) before refusing


def case(id, cmd, mention, forbid=(), may_create_out=False):
    return Case(id, tuple(cmd.split()), (mention,) if isinstance(mention, str) else tuple(mention), tuple(forbid),
                may_create_out)


ENC = f"encode {{ws}}/imgs --out {{out}} --weights {MISSING} --quiet"
EMB = f"embed-text {{ws}}/imgs --weights {MISSING}"
SMP = f"sample fox --out {{out}} --weights {MISSING}"
REC = f"reconstruct {{ws}}/img.png --out {{out}} --weights {MISSING}"
EVA = f"evaluate {{ws}}/imgs --out {{out}} --weights {MISSING} --metrics psnr"
FID = "fid {ws}/imgs {ws}/imgs2 --weights-dir {ws}/empty"
TRN = "train --data {ws}/imgs --config tiny --out {out}"

PARSE_TIME = [
    case("encode-batch-0", f"{ENC} --batch-size 0", "--batch-size"),
    case("encode-workers-neg", f"{ENC} --num-workers -1", "--num-workers"),
    case("encode-chunk-0", f"{ENC} --chunk-rows 0", "--chunk-rows"),
    case("encode-batch-over-chunk", f"{ENC} --batch-size 64 --chunk-rows 32", ("--batch-size", "--chunk-rows")),
    case("encode-resolution-0", f"{ENC} --resolution 0", "--resolution", forbid=("encoder_resolution",)),
    case("encode-resolution-huge", f"{ENC} --resolution 100000", "--resolution"),
    case("encode-resolution-odd", f"{ENC} --resolution 100", ("--resolution", "multiple of 32")),
    case("encode-encoder-resolution-0", f"{ENC} --encoder-resolution 0", "--encoder-resolution"),
    case("encode-min-size-0", f"{ENC} --min-size 0", "--min-size"),
    case("encode-out-file", f"encode {{ws}}/imgs --out {{ws}}/file.txt --weights {MISSING}", ("--out", "file")),
    case("embed-batch-0", f"{EMB} --batch-size 0", "--batch-size", forbid=("batch_size",)),
    case("embed-batch-neg", f"{EMB} --batch-size -1", "--batch-size", forbid=("batch_size",)),
    case("inspect-n-preview-neg", "inspect {ws}/imgs --n-preview -1 --no-preview", "--n-preview"),
    case("sample-steps-0", f"{SMP} --steps 0", "--steps"),
    case("sample-guidance-nan", f"{SMP} --guidance nan", "--guidance", forbid=("weights", "Weights")),
    case("sample-guidance-inf", f"{SMP} --guidance inf", "--guidance"),
    case("sample-shift-0", f"{SMP} --shift 0", "--shift"),
    case("sample-decoder-steps-0", f"{SMP} --decoder-steps 0", "--decoder-steps"),
    case("sample-decoder-guidance-nan", f"{SMP} --decoder-guidance nan", "--decoder-guidance"),
    case("sample-seed-neg", f"{SMP} --seed -1", "--seed"),
    case("sample-seed-2**63", f"{SMP} --seed {BIG}", "--seed"),
    case("sample-seed-2**70", f"{SMP} --seed {2**70}", "--seed"),
    case("sample-n-0", f"{SMP} --n 0", "--n"),
    case("sample-height-huge", f"{SMP} --height 100000", "--height"),
    case("sample-width-tiny", f"{SMP} --width 8", "--width"),
    case("sample-pixel-budget", f"{SMP} --height 16384 --width 16384", ("--height", "--width", "budget")),
    case("sample-batch-pixel-budget", f"{SMP} --n 40 wolf", ("--n 40", "2 prompt(s)", "budget", "--n 32")),
    case("sample-strength-without-init", f"{SMP} --strength 0.5", ("--strength", "--init-image")),
    case("sample-strength-above-1", f"{SMP} --init-image {{ws}}/img.png --strength 1.5", "--strength"),
    case("sample-strength-nan", f"{SMP} --init-image {{ws}}/img.png --strength nan", "--strength"),
    case("reconstruct-size-4", f"{REC} --size 4", ("--size", "multiple of 64")),
    case("reconstruct-size-huge", f"{REC} --size 100000", "--size"),
    case("reconstruct-seed-2**63", f"{REC} --seed {BIG}", "--seed"),
    case("reconstruct-guidance-nan", f"{REC} --guidance nan", "--guidance"),
    case("reconstruct-steps-0", f"{REC} --steps 0", "--steps"),
    case("reconstruct-encoder-resolution-0", f"{REC} --encoder-resolution 0", "--encoder-resolution",
         forbid=("encoder_resolution",)),
    case("evaluate-size-100", f"{EVA} --size 100", "--size"),
    case("evaluate-batch-0", f"{EVA} --batch-size 0", "--batch-size"),
    case("evaluate-guidance-nan", f"{EVA} --guidance nan", "--guidance"),
    case("evaluate-seed-neg", f"{EVA} --seed -5", "--seed"),
    case("evaluate-metrics-typo", f"{EVA},foo", ("--metrics", "foo")),
    case("evaluate-max-images-0", f"{EVA} --max-images 0", "--max-images"),
    case("evaluate-grid-samples-neg", f"{EVA} --grid-samples -1", "--grid-samples"),
    case("fid-batch-0", f"{FID} --batch-size 0", "--batch-size"),
    case("fid-neither-b-nor-save", "fid {ws}/imgs", "--save-stats"),
    case("fid-a-not-folder-or-npz", "fid {ws}/img.png {ws}/stats_ok.npz", ("A", "img.png", ".npz")),
    case("fid-foreign-npz", "fid {ws}/stats_ok.npz {ws}/foreign.npz", ("foreign.npz", "mu")),
    case("fid-malformed-npz", "fid {ws}/stats_ok.npz {ws}/bad.npz", "bad.npz"),
    case("fid-other-features-npz", "fid {ws}/stats_ok.npz {ws}/other_features.npz", "other_features.npz"),
]

OUTPUT_FOLDERS = [
    case("sample-out-file", f"sample fox --out {{ws}}/file.txt --weights {MISSING}", ("--out", "file")),
    case("sample-out-earlier-run", f"sample fox --out {{ws}}/earlier_sample --weights {MISSING}",
         ("--out", "--overwrite", "earlier")),
    case("sample-out-foreign", f"sample fox --out {{ws}}/foreign --weights {MISSING} --overwrite",
         ("--out", "notes.txt")),
    case("sample-out-below-file", f"sample fox --out {{ws}}/file.txt/sub --weights {MISSING}", ("--out", "file")),
    case("reconstruct-out-file", f"reconstruct {{ws}}/img.png --out {{ws}}/file.txt --weights {MISSING}", "--out"),
    case("reconstruct-out-earlier-run", f"reconstruct {{ws}}/img.png --out {{ws}}/earlier_recon --weights {MISSING}",
         ("--out", "--overwrite")),
    case("reconstruct-out-is-input", f"reconstruct {{ws}}/imgs/a.png --out {{ws}}/imgs --weights {MISSING}",
         ("--out", "a.png")),
    case("evaluate-out-file", f"evaluate {{ws}}/imgs --out {{ws}}/file.txt --weights {MISSING}", "--out"),
    case("evaluate-out-earlier-run", f"evaluate {{ws}}/imgs --out {{ws}}/earlier_eval --weights {MISSING} "
         "--metrics psnr", ("--out", "--overwrite")),
    case("train-out-file", "train --data {ws}/imgs --config tiny --out {ws}/file.txt", "--out"),
    case("fid-save-stats-folder", "fid {ws}/imgs --save-stats {ws}/imgs2", "--save-stats"),
    case("fid-save-stats-exists", "fid {ws}/imgs --save-stats {ws}/stats_ok.npz --weights-dir {ws}/empty",
         ("--save-stats", "--overwrite")),
    case("fid-save-stats-device-node", "fid {ws}/imgs --save-stats /dev/null --overwrite --weights-dir {ws}/empty",
         ("--save-stats", "not a regular file")),
    case("fid-save-stats-with-npz-a", "fid {ws}/stats_ok.npz {ws}/stats_ok.npz --save-stats {out}/s.npz",
         ("--save-stats", "folder")),
]

DEVICE_COMMANDS = {"encode": ENC, "embed-text": EMB, "sample": SMP, "reconstruct": REC, "evaluate": EVA,
                   "fid": FID, "train": TRN}
DEVICES = [case(f"{name}-device-banana", f"{cmd} --device banana", ("--device", "banana"))
           for name, cmd in DEVICE_COMMANDS.items()]
DEVICES += [case(f"{name}-device-cuda:7", f"{cmd} --device cuda:7", ("--device", "cuda:7", "CUDA"))
            for name, cmd in DEVICE_COMMANDS.items() if name in ("encode", "sample", "fid")]  # the same type

TRAINING = [  # the training command's own checks (engineer B's, on main): config and resume
    case("train-set-bad-yaml", f"{TRN} --set steps=[1,", ("--set", "YAML")),
    case("train-empty-config", "train --data {ws}/imgs --config {ws}/empty.yaml --out {out}", ("empty.yaml", "empty")),
    case("train-seed-2**70", f"{TRN} --set seed={2**70}", ("seed", "2**63")),
    case("train-resume-nothing", "train --data {ws}/store.zarr --config tiny --set caption_dropout=0 --out {out} "
         "--resume", ("--resume", "no checkpoint"), may_create_out=True),
]

RUNTIME = [  # these load a metric backbone (or look for it) before failing
    case("fid-missing-weights", FID, ("--weights-dir", "weights-inception")),
    case("fid-fewer-than-2-images", "fid {ws}/one_image {ws}/stats_ok.npz --weights-dir {backbones}",
         ("one_image", "at least 2")),
]


# ----------------------------------------------------------------------------------------------- workspace
def _png(path: Path, seed: int, size=(40, 48)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def _stats(path: Path, dim: int = 2048, features: str | None = None):
    rng = np.random.default_rng(dim)
    x = rng.normal(size=(4, dim))
    kw = {"features": np.str_(features)} if features else {}
    np.savez(path, mu=x.mean(0), sigma=np.cov(x, rowvar=False), n=np.int64(4), **kw)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """Inputs, earlier outputs and a private HOME/TMPDIR for the subprocesses; hashed around every group."""
    from cascadekit.metrics.fid import FEATURE_NAME

    w = tmp_path_factory.mktemp("adversarial")
    for i, name in enumerate(("a", "b", "c")):
        _png(w / "imgs" / f"{name}.png", i)
        _png(w / "imgs2" / f"{name}.png", 10 + i)
    (w / "imgs" / "a.txt").write_text("a caption\n")
    _png(w / "img.png", 20)
    _png(w / "one_image" / "only.png", 21)
    (w / "file.txt").write_text("a file where a folder is expected\n")
    (w / "empty").mkdir()
    (w / "foreign").mkdir()
    (w / "foreign" / "notes.txt").write_text("not an output of cascadekit\n")
    earlier = {"earlier_sample": ("samples.json", "image_1_000.png", "grid.png"),
               "earlier_recon": ("reconstruct.json", "000_a_recon.png", "grid.png"),
               "earlier_eval": ("metrics.json", "per_image.csv", "index.html", "grids/0000_a.png")}
    for folder, files in earlier.items():
        for f in files:
            (w / folder / f).parent.mkdir(parents=True, exist_ok=True)
            (w / folder / f).write_bytes(b"earlier run " + f.encode())
    _stats(w / "stats_ok.npz", features=FEATURE_NAME)
    np.savez(w / "foreign.npz", x=np.zeros(3))
    (w / "bad.npz").write_bytes(os.urandom(300))
    _stats(w / "other_features.npz", features="some other network")
    (w / "empty.yaml").write_text("")
    from generator_helpers import tiny_store

    tiny_store(w / "store.zarr", n=4)
    for d in ("home", "tmp", "outs"):
        (w / d).mkdir()
    return w


def _env(ws: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADEKIT")}
    home = ws / "home"
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), TORCH_HOME=str(home / "torch"),
               HF_HOME=str(home / "hf"), CASCADEKIT_CACHE=str(home / "cascadekit"), TMPDIR=str(ws / "tmp"),
               PYTHONWARNINGS="ignore")
    return env


def snapshot(root: Path) -> dict[str, str]:
    """relative path -> sha256 (files) / 'dir' for everything under root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def _run_case(c: Case, ws: Path, backbones: Path) -> str | None:
    """None when the case behaves, else what went wrong."""
    fill = {"ws": str(ws), "out": str(ws / "outs" / c.id), "backbones": str(backbones)}
    argv = [a.format(**fill) for a in c.argv]
    try:
        r = subprocess.run([sys.executable, "-m", "cascadekit.cli", *argv], cwd=ws, env=_env(ws),
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"{c.id}: no answer within 120 s"
    text = r.stdout + r.stderr
    errors = [line for line in r.stderr.splitlines() if re.match(r"(Error|error): ", line)]
    problems = []
    if r.returncode != 2:
        problems.append(f"exit status {r.returncode}")
    if "Traceback" in text:
        problems.append("a traceback")
    if len(errors) != 1:
        problems.append(f"{len(errors)} error lines")
    problems += [f"does not mention {m!r}" for m in c.mention if m not in r.stderr]
    problems += [f"mentions {f!r}" for f in c.forbid if f in r.stderr]
    if (ws / "outs" / c.id).exists() and not c.may_create_out:
        problems.append("created its --out although it failed before any work")
    return f"{c.id}: {', '.join(problems)}\n  $ cascadekit {' '.join(argv)}\n{text[-1500:]}" if problems else None


def run_group(cases: list[Case], ws: Path, backbones: Path, workers: int = 4) -> None:
    ids = [c.id for c in cases]
    assert len(set(ids)) == len(ids), "case ids must be unique"
    before = snapshot(ws)
    with ThreadPoolExecutor(workers) as pool:
        failures = [f for f in pool.map(lambda c: _run_case(c, ws, backbones), cases) if f]
    after = snapshot(ws)
    own = tuple(os.path.join("outs", c.id) for c in cases if c.may_create_out)  # a run folder it may take
    changed = sorted(k for k in before.keys() | after.keys()
                     if before.get(k) != after.get(k) and not (own and k.startswith(own)))
    assert not failures, f"{len(failures)} of {len(cases)} cases misbehave:\n" + "\n".join(failures)
    assert not changed, f"files written or changed outside --out / input data touched: {changed[:20]}"


# --------------------------------------------------------------------------------------------------- tests
def test_numbers_and_inputs_are_refused_at_parse_time(ws, tmp_path):
    run_group(PARSE_TIME, ws, tmp_path)


def test_output_folders_and_files_are_checked_before_work(ws, tmp_path):
    run_group(OUTPUT_FOLDERS, ws, tmp_path)


def test_a_device_this_machine_lacks_is_one_clear_message(ws, tmp_path):
    import torch

    cases = list(DEVICES)
    if not torch.cuda.is_available():
        cases += [case(f"{name}-device-cuda", f"{cmd} --device cuda", ("--device", "CUDA"))
                  for name, cmd in DEVICE_COMMANDS.items() if name == "sample"]
    run_group(cases, ws, tmp_path)


def test_training_config_and_resume_errors(ws, tmp_path):
    run_group(TRAINING, ws, tmp_path)


def test_metric_weights_and_too_few_images(ws, backbone_dir):  # noqa: F811
    run_group(RUNTIME, ws, backbone_dir, workers=2)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_is_refused(ws, tmp_path):
    ro = ws / "outs" / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        run_group([case("sample-out-read-only", f"sample fox --out {ro}/x --weights {MISSING}",
                        ("--out", "not writable"))], ws, tmp_path)
    finally:
        ro.chmod(0o755)
        ro.rmdir()


# ------------------------------------------------------------------------------ the same rules, in process
class Payload:
    """A pickled object that is not a tensor (torch.save pickles it; loading must refuse it)."""


def test_user_error_message_maps_environment_oserrors_only():
    from cascadekit.cli.common import user_error_message
    from cascadekit.codec.errors import InputError

    full = OSError(errno.ENOSPC, "No space left on device", "/data/out/grid.png")
    assert user_error_message(full) == "cannot write /data/out/grid.png: the disk is full: free space or choose " \
                                       "another output folder"
    assert "read-only" in user_error_message(OSError(errno.EROFS, "Read-only file system", "/ro/x"))
    assert "permission denied" in user_error_message(OSError(errno.EACCES, "Permission denied", "/root/x"))
    assert user_error_message(InputError("bad")) == "bad"
    # programming errors keep their traceback
    assert user_error_message(FileNotFoundError(errno.ENOENT, "No such file", "x")) is None
    assert user_error_message(ValueError("bug")) is None


def test_a_full_disk_while_writing_samples_is_one_line(tmp_path, monkeypatch):
    import torch
    from click.testing import CliRunner

    import cascadekit.codec.fsio as fsio
    from cascadekit.cli.common import reports_user_errors
    from cascadekit.generator.outputs import write_samples

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsio.os, "fsync", full)
    import click

    @click.command()
    @reports_user_errors
    def cmd():
        write_samples(torch.rand(1, 3, 8, 8), [{"prompt": "a", "seed": 1}], tmp_path / "o")

    r = CliRunner().invoke(cmd, [])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "disk is full" in r.output and "image_1_000.png" in r.output
    assert not [p for p in (tmp_path / "o").iterdir() if p.is_file()]  # no half file left


def test_a_full_disk_while_writing_a_report_names_the_file(tmp_path, monkeypatch):
    from cascadekit.cli.common import user_error_message
    from cascadekit.metrics import report

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write fails: no file name

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError) as e:
        report.write_json(tmp_path / "metrics.json", {"n_images": 1})
    assert user_error_message(e.value) == f"cannot write {tmp_path / 'metrics.json'}: the disk is full: free " \
                                          "space or choose another output folder"


def test_pickle_refusal_says_cascadekit_never_unpickles(tmp_path):
    import torch

    from cascadekit.codec.errors import WeightsError
    from cascadekit.codec.weights.load import load_weights

    torch.save({"w": torch.zeros(2), "obj": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError) as e:
        load_weights(tmp_path / "evil.pt")
    msg = str(e.value)
    assert "never unpickles" in msg and "safetensors" in msg and "Payload" in msg
    assert "weights_only=False" not in msg and "weights_only` set to `False" not in msg
