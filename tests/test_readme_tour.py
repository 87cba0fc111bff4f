"""The README's tour, run verbatim: its ```bash block after the `<!-- tour: ... -->` marker, line by line, in an
empty folder on a fresh offline machine (empty caches, no weights anywhere, offline variables set).

The one stand-in: FID cannot be computed without torch-fidelity's Inception file, which an offline machine cannot
download; before the `fid` line the test puts a locally made (random, calibrated) one into torch's hub cache,
where a connected machine's verified download would put the real one.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from metrics_weights import write_inception  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- tour:"


def tour_commands(text: str) -> list[str]:
    """The command lines of the first ```bash block after the tour marker (comments stripped)."""
    start = text.index(MARKER)
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S)
    assert block, "no ```bash block after the tour marker in README.md"
    lines = [ln.split("  #")[0].strip() for ln in block.group(1).splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def fresh_offline_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CASCADEKIT_", "HF_", "TRANSFORMERS_"))}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), TORCH_HOME=str(home / "torch"),
               HF_HOME=str(home / "hf"), CASCADEKIT_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""))
    return env


def test_tour_block_is_the_documented_chain():
    cmds = tour_commands(README.read_text(encoding="utf-8"))
    verbs = [shlex.split(c)[1] for c in cmds]
    assert verbs == ["encode", "inspect", "embed-text", "train", "sample", "evaluate", "fid"]
    assert all(shlex.split(c)[0] == "cascadekit" for c in cmds)
    assert not any("--weights" in shlex.split(c) or "--text-encoder" in shlex.split(c) for c in cmds)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_readme_tour_runs_verbatim_offline(tmp_path):
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    env = fresh_offline_env(home)
    outputs = {}
    for cmd in tour_commands(README.read_text(encoding="utf-8")):
        verb = shlex.split(cmd)[1]
        if verb == "fid":  # stand-in for the verified download an offline machine cannot make (see docstring)
            ckpt = home / "torch" / "hub" / "checkpoints"
            ckpt.mkdir(parents=True, exist_ok=True)
            write_inception(ckpt)
        r = subprocess.run(cmd, shell=True, cwd=work, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        outputs[verb] = r.stdout + r.stderr
    tour = work / "tour"
    assert "missing captions 0" in outputs["encode"] and "TINY RANDOM" in outputs["encode"]
    assert "embedded 5 captions of 5 rows" in outputs["embed-text"] and "0/256" not in outputs["embed-text"]
    assert "done: step 10" in outputs["train"]
    samples = json.loads((tour / "generated" / "samples.json").read_text())
    assert "tour/run" in json.dumps(samples) and len(list((tour / "generated").glob("image_*.png"))) == 2
    report = json.loads((tour / "report" / "metrics.json").read_text())
    assert report["n_images"] == 5 and set(report["settings"]["skipped_metrics"]) == {"lpips", "fid"}
    assert "CASCADEKIT_OFFLINE=1" in report["settings"]["skipped_metrics"]["lpips"]
    assert "NOTE: lpips skipped" in outputs["evaluate"]
    fid = json.loads(next(ln for ln in outputs["fid"].splitlines() if ln.startswith('{"fid"')))
    assert fid["fid"] >= 0 and fid["skipped"] == 0
    assert not (home / ".cache" / "huggingface").exists()  # nothing went to the hub


def test_sample_photographs_have_captions_and_a_manifest(tmp_path):
    from cascadekit.codec.defaults import SAMPLE_IMAGES, sample_captions, sample_manifest

    caps = sample_captions()
    assert list(caps) == list(SAMPLE_IMAGES) and all(5 < len(c) < 120 for c in caps.values())
    path = sample_manifest(tmp_path)
    rows = [json.loads(ln) for ln in path.read_text().splitlines()]
    assert [r["key"] for r in rows] == [Path(n).stem for n in SAMPLE_IMAGES]
    assert all(Path(r["path"]).is_file() and r["caption"] == caps[Path(r["path"]).name] for r in rows)
    before = path.stat().st_mtime_ns
    assert sample_manifest(tmp_path) == path and path.stat().st_mtime_ns == before  # unchanged: not rewritten


def test_a_cached_tiny_set_without_the_clip_side_is_rewritten(tmp_path):
    import shutil

    from cascadekit.codec.defaults import _tiny_is_current, tiny_weights

    folder = tiny_weights(tmp_path / "tiny")
    assert _tiny_is_current(folder)
    shutil.rmtree(folder / "text_encoder")  # e.g. a set cached by a version without the tiny CLIP
    assert not _tiny_is_current(folder)
    assert tiny_weights(folder) == folder and (folder / "text_encoder" / "config.json").is_file()
