"""Keys are unique: images of one folder that share a stem (a.jpg, a.png) no longer both become key
``a`` with a shared caption. The first in sorted order keeps the key and the sidecar caption, the
others are skipped with reason ``duplicate_key``; evaluate's folder scan follows the same rule.
Corpora without such collisions keep their keys and fingerprints."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from datasets_helpers import TinyEncoder, make_folder, photos, png_bytes  # noqa: E402

from cascadekit.codec.errors import InputError
from cascadekit.datasets import store as S
from cascadekit.datasets.builder import build_latent_dataset
from cascadekit.datasets.sources import SampleReader, plan_fingerprint, plan_inputs
from cascadekit.metrics.images import iter_folder

pytestmark = pytest.mark.timeout(120)
PNG = png_bytes(photos()[0][1][::8, ::8])
JPG = png_bytes(photos()[1][1][::8, ::8], "JPEG")


def _collisions(root: Path) -> None:
    (root / "broken").mkdir(parents=True)
    (root / "a.png").write_bytes(PNG)
    (root / "a.jpg").write_bytes(JPG)
    (root / "a.txt").write_text("caption of a")
    (root / "b.png").write_bytes(PNG)
    (root / "broken" / "truncated.png").write_bytes(PNG[: len(PNG) // 2])
    (root / "broken" / "truncated.jpg").write_bytes(JPG[: len(JPG) // 2])


def test_same_stem_images_first_keeps_the_key_and_caption_others_are_recorded(tmp_path):
    _collisions(tmp_path / "c")
    plan = plan_inputs([tmp_path / "c"])
    got = [(s.key, Path(s.source).name, s.error) for s in plan]
    assert got == [("a", "a.jpg", None), ("a", "a.png", "duplicate_key"), ("b", "b.png", None),
                   ("broken/truncated", "truncated.jpg", None), ("broken/truncated", "truncated.png", "duplicate_key")]
    assert "a.jpg" in plan[1].detail
    r = SampleReader()
    assert r.fetch(plan[0])[1] == "caption of a" and r.fetch(plan[2])[1] is None
    # among the rows that are encoded, every key is unique
    out = tmp_path / "s.zarr"
    build_latent_dataset([tmp_path / "c"], out, TinyEncoder(), resolution=64, batch_size=4, chunk_rows=4,
                         num_workers=0, progress=False)
    g = S.open_store(out)
    keys = [str(k) for k in np.asarray(g["keys"][:])]
    status = np.asarray(g["status"][:])
    reasons = [str(x) for x in np.asarray(g["skip_reason"][:])]
    ok_keys = [k for k, st in zip(keys, status) if st == S.STATUS_OK]
    assert ok_keys == ["a", "b"] and reasons.count("duplicate_key") == 2
    assert reasons[keys.index("broken/truncated")] == "truncated"
    assert [str(c) for c in np.asarray(g["captions"][:])][0] == "caption of a"


def test_metrics_folder_keys_follow_the_same_rule(tmp_path):
    _collisions(tmp_path / "c")
    dups: list = []
    got = [(k, p.name) for k, p in iter_folder(tmp_path / "c", duplicates=dups)]
    assert got == [("a", "a.jpg"), ("b", "b.png"), ("broken/truncated", "truncated.jpg")]
    assert [(k, p.name) for k, p in dups] == [("a", "a.png"), ("broken/truncated", "truncated.png")]
    plan = plan_inputs([tmp_path / "c"])
    assert [(s.key, Path(s.source).name) for s in plan if s.error is None] == got
    assert len(list(iter_folder(tmp_path / "c"))) == 5  # without a duplicates list (FID): every image


def test_keys_and_fingerprint_without_collisions_are_unchanged(tmp_path, monkeypatch):
    keys = make_folder(tmp_path / "c")
    plan = plan_inputs([tmp_path / "c"])
    assert [s.key for s in plan] == keys and all(s.error is None for s in plan)
    monkeypatch.chdir(tmp_path)  # relative and absolute spellings of one folder: one corpus
    rel = plan_inputs(["c"])
    assert [s.source for s in rel] == [s.source for s in plan] and all(Path(s.source).is_absolute() for s in rel)
    assert plan_fingerprint(rel) == plan_fingerprint(plan)


def test_duplicate_keys_across_inputs_and_in_manifests_are_recorded(tmp_path):
    for d in ("one", "two"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "x.png").write_bytes(PNG)
    (tmp_path / "two" / "y.png").write_bytes(PNG)
    man = tmp_path / "m.jsonl"
    man.write_text('{"path": "one/x.png", "key": "k"}\n{"path": "two/y.png", "key": "k"}\n')
    plan = plan_inputs([tmp_path / "one", tmp_path / "two", man])
    got = [(s.key, s.error) for s in plan]
    assert got == [("x", None), ("x", "duplicate_key"), ("y", None), ("k", None), ("k", "duplicate_key")]
    assert "plan row 0" in plan[1].detail and "plan row 3" in plan[4].detail
    assert plan[1:3] == [plan[1], plan[2]] and list(plan)[4] == plan[4]  # the same through every read path
    with pytest.raises(InputError, match="given twice"):
        plan_inputs([tmp_path / "one", str(tmp_path / "one") + "/"])
