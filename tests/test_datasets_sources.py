"""Corpus planning: folders, tar shards (brace patterns, pipe:, broken shards), manifests, captions."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from datasets_helpers import make_folder, make_tar, photos, png_bytes  # noqa: E402

from cascadekit.codec.errors import InputError
from cascadekit.datasets.preprocess import bucket_sizes, choose_bucket
from cascadekit.datasets.sources import (FileRef, SampleReader, count_tar, plan_fingerprint, plan_inputs,
                                         samples_from_images)


def test_folder_plan_recursive_sorted_with_sidecars(tmp_path):
    keys = make_folder(tmp_path / "c")
    (tmp_path / "c" / "part0" / "notes.md").write_text("not an image")
    plan = plan_inputs([tmp_path / "c"])
    assert [s.key for s in plan] == keys
    by = {s.key: s for s in plan}
    r = SampleReader()
    assert r.fetch(by["part0/astronaut"])[1] == "a photo of astronaut"  # .txt sidecar
    assert r.fetch(by["part0/camera"])[1] == "json camera"  # .json sidecar
    assert r.fetch(by["part0/chelsea"])[1] is None  # no sidecar
    assert all(isinstance(s.load, FileRef) for s in plan)


def test_tar_brace_pattern_pipe_and_dotted_keys(tmp_path):
    a = photos()[0][1][::8, ::8]
    for k in range(2):
        make_tar(tmp_path / f"shard-{k:03d}.tar", [
            (f"s{k}_0", {"jpg": png_bytes(a, "JPEG"), "txt": b"cap zero"}),
            (f"s{k}_1", {"png": png_bytes(a), "json": json.dumps({"caption": "cap one"}).encode()}),
            (f"img.v{k}", {"jpg": png_bytes(a, "JPEG")}),  # dotted name: key 'img', ext 'v0.jpg'
        ])
    plan = plan_inputs([str(tmp_path / "shard-{000..001}.tar")])
    assert [s.key for s in plan] == ["s0_0", "s0_1", "img", "s1_0", "s1_1", "img"]
    assert all(s.error is None for s in plan)
    r = SampleReader()
    got = [r.fetch(s) for s in plan]
    assert [c for _, c in got] == ["cap zero", "cap one", None] * 2
    assert all(isinstance(d, bytes) and len(d) > 100 for d, _ in got)
    # random order access reopens the stream and still returns the right sample
    assert r.fetch(plan[1])[1] == "cap one" and r.fetch(plan[0])[1] == "cap zero"
    piped = count_tar(f"pipe:cat {tmp_path / 'shard-000.tar'}")
    assert [s.key for s in piped] == ["s0_0", "s0_1", "img"]


def test_broken_tar_shards_are_recorded(tmp_path):
    a = photos()[0][1][::8, ::8]
    items = [(f"k{i}", {"jpg": png_bytes(a, "JPEG"), "txt": b"c"}) for i in range(3)]
    make_tar(tmp_path / "good.tar", items)
    raw = (tmp_path / "good.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(raw[: len(raw) // 2])
    bad = bytearray(raw)
    off = 512 + ((len(items[0][1]["jpg"]) + 511) // 512) * 512 + 1024  # header of k1.jpg
    bad[off + 150] ^= 0x55  # break its checksum
    (tmp_path / "badhdr.tar").write_bytes(bytes(bad))
    (tmp_path / "nottar.tar").write_bytes(b"plain text " * 200)
    (tmp_path / "onlytxt.tar").write_bytes(b"")
    make_tar(tmp_path / "onlytxt.tar", [("lonely", {"txt": b"caption without image"})])

    cut = count_tar(str(tmp_path / "cut.tar"))
    assert cut[-1].error == "unreadable" and "broken" in cut[-1].key
    hdr = count_tar(str(tmp_path / "badhdr.tar"))
    assert [s.key for s in hdr][0] == "k0" and hdr[-1].error == "unreadable"
    nt = count_tar(str(tmp_path / "nottar.tar"))
    assert len(nt) == 1 and nt[0].error == "unreadable"
    ot = count_tar(str(tmp_path / "onlytxt.tar"))
    assert ot[0].error == "no_image"


def test_manifests_jsonl_and_csv(tmp_path):
    make_folder(tmp_path / "img")
    jl = tmp_path / "m.jsonl"
    jl.write_text(json.dumps({"path": "img/part0/coffee.png", "caption": "cup"}) + "\n\n"
                  + json.dumps({"image": str(tmp_path / "img/part0/moon.png"), "text": "moon"}) + "\n")
    cs = tmp_path / "m.csv"
    cs.write_text("path,caption,key\nimg/part0/rocket.png,a rocket,r1\nimg/part0/missing.png,,r2\n")
    plan = plan_inputs([jl, cs])
    assert [s.key for s in plan] == ["img/part0/coffee", "img/part0/moon", "r1", "r2"]
    assert [s.caption for s in plan] == ["cup", "moon", "a rocket", ""]
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(InputError, match="bad.jsonl:1"):
        plan_inputs([tmp_path / "bad.jsonl"])


def test_missing_inputs_and_empty_corpus_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        plan_inputs([tmp_path / "nope"])
    with pytest.raises(InputError, match="does not exist"):
        plan_inputs([str(tmp_path / "s-{000..002}.tar")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images found"):
        plan_inputs([tmp_path / "empty"])


def test_fingerprint_and_memory_samples():
    s1 = samples_from_images([("a", np.zeros((40, 40, 3), np.uint8)), ("b", np.ones((40, 40, 3), np.uint8))])
    assert plan_fingerprint(s1) == plan_fingerprint(list(s1))
    assert plan_fingerprint(s1) != plan_fingerprint(s1[::-1])
    data, cap = SampleReader().fetch(s1[0])
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and cap == ""


def test_official_buckets():
    sizes = bucket_sizes(768)
    assert (768, 768) in sizes and all(h % 32 == 0 and w % 32 == 0 for h, w in sizes)
    assert all(abs(h * w - 768 * 768) / (768 * 768) < 0.15 for h, w in sizes)
    assert len(sizes) == 23  # 12 official ratios + 11 reciprocals (1/1 is its own)
    assert choose_bucket(2000, 1000, 768) == (512, 1056)  # w/h = 2: floor(sqrt(768²/2)/32)*32 = 512
    assert choose_bucket(1000, 2000, 768) == (1056, 512)


def test_plan_table_round_trips_every_kind_of_sample_compactly(tmp_path):
    """The compact plan gives back exactly the samples put in (every load kind, None vs '' fields,
    non-ASCII and surrogate-escaped names) and holds far less than one object per sample."""
    from cascadekit.datasets.sources import PlanTable, Sample, TarRef

    odd = "caf\u00e9/\udcff.jpg"  # undecodable byte from a file name (surrogateescape)
    ss = [
        Sample("a", "/d/a.jpg", FileRef("/d/a.jpg", "/d/a.txt")),
        Sample("b", "/m/x.csv:b", FileRef(odd), caption=""),
        Sample("t", "u.tar#t", TarRef("u.tar", 3, "t.jpg", None), error="unreadable", detail="d \u00e9"),
        Sample("t2", "elsewhere", TarRef("u.tar", 4, None, "t2.txt"), error="no_image"),
        Sample("m", "mem:m", b"\x00\xffpng", caption="c"),
        Sample("n", "n", None, error="x"),
    ]
    t = PlanTable(ss)
    assert len(t) == 6 and list(t) == ss and t[-1] == ss[-1] and t[1:4] == ss[1:4]
    assert plan_fingerprint(t) == plan_fingerprint(ss)
    with pytest.raises(IndexError):
        t[6]
    # a folder plan: one flat buffer, shard URLs and file paths stored once
    big = PlanTable(Sample(f"d/{i:06d}", f"/data/d/{i:06d}.jpg", FileRef(f"/data/d/{i:06d}.jpg")) for i in range(2000))
    assert big[1234] == Sample("d/001234", "/data/d/001234.jpg", FileRef("/data/d/001234.jpg"))
    assert big.nbytes() / len(big) < 8 * 9 + 4 + 8 + 4 + 1 + 8 + 19  # offsets + flags/kind/index/url + text
    keys = make_folder(tmp_path / "c")
    plan = plan_inputs([tmp_path / "c"])
    assert isinstance(plan, PlanTable) and [s.key for s in plan] == keys
