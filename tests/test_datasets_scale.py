"""Memory that does not grow with the corpus: on-disk plan columns, the sorted folder walk, lazy
task lists and block-wise status passes (and that each gives exactly what the in-memory form did)."""
from __future__ import annotations

import os
import pickle
import random
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from datasets_helpers import TinyEncoder, make_broken, make_folder, make_tar, png_bytes, store_arrays  # noqa: E402

from cascadekit.codec.errors import InputError
from cascadekit.codec import distributed as D
from cascadekit.datasets import store as S
from cascadekit.datasets.builder import Task, build_latent_dataset, make_tasks
from cascadekit.datasets.plan import FileRef, PlanTable, Sample, TarRef
from cascadekit.datasets.sources import plan_fingerprint, plan_inputs
from cascadekit.datasets.spill import ByteLog, IntLog


def test_byte_and_int_logs_on_disk_match_memory_and_leave_no_files(tmp_path):
    spill = tmp_path / "spill"
    spill.mkdir()
    rng = random.Random(0)
    mem, disk = ByteLog(), ByteLog(on_disk=True, tmp_dir=spill, flush_bytes=100)
    offs = []
    for _ in range(500):
        b = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        offs.append((mem.append(b), len(b)))
        assert disk.append(b) == offs[-1][0]
    assert list(spill.iterdir()) == []  # anonymous: unlinked from the start, nothing to clean up after a kill
    assert len(mem) == len(disk) and disk.nbytes_in_memory() < 100 + 40
    for off, n in rng.sample(offs, 100) + [offs[-1]]:  # the last one is still in the write buffer
        assert disk.read(off, n) == mem.read(off, n)
    assert disk.read(0, len(disk)) == mem.read(0, len(mem))
    with pytest.raises(IndexError):
        disk.read(len(disk) - 1, 2)
    copy = pickle.loads(pickle.dumps(disk))  # spawned workers: bytes copied into memory
    assert not copy.on_disk and copy.read(0, len(copy)) == mem.read(0, len(mem))

    ints = IntLog(on_disk=True, tmp_dir=spill)
    vals = [rng.randrange(-2**40, 2**40) for _ in range(3000)]
    for v in vals[:1000]:
        ints.append(v)
    ints.extend(np.array(vals[1000:]))
    assert len(ints) == 3000 and ints[17] == vals[17] and ints[-1] == vals[-1]
    assert ints[1234:2345].tolist() == vals[1234:2345] and np.asarray(ints).tolist() == vals


def test_plan_on_disk_equals_in_memory_and_stays_out_of_memory(tmp_path):
    odd = "caf\u00e9/\udcff.jpg"
    kinds = [
        lambda i: Sample(f"d/{i:06d}", f"/data/d/{i:06d}.jpg", FileRef(f"/data/d/{i:06d}.jpg", f"/data/d/{i:06d}.txt")),
        lambda i: Sample(f"t{i}", f"s{i % 7}.tar#t{i}", TarRef(f"s{i % 7}.tar", i, f"t{i}.jpg", None)),
        lambda i: Sample(f"x{i}", "elsewhere", TarRef("u.tar", i, None, "c.txt"), error="no_image", detail="d \u00e9"),
        lambda i: Sample(f"m{i}", f"m:{i}", FileRef(odd), caption=""),
        lambda i: Sample(f"b{i}", f"mem:{i}", b"\x00\xff" * (i % 5), caption="c"),
        lambda i: Sample(f"n{i}", "n", None, error="x"),
    ]
    samples = [kinds[i % len(kinds)](i) for i in range(20000)]
    mem = PlanTable(samples)
    disk = PlanTable(samples, on_disk=True, tmp_dir=tmp_path).seal()
    assert disk.on_disk and len(disk) == len(samples) and disk.nbytes() == mem.nbytes()
    assert disk.nbytes_in_memory() < 2000 and disk.nbytes() > 1_000_000  # ~1.4 MB of plan, almost none resident
    assert list(disk) == samples
    assert disk[12345] == samples[12345] and disk[-1] == samples[-1] and disk[100:400] == samples[100:400]
    assert disk[10:20:3] == samples[10:20:3]
    assert plan_fingerprint(disk) == plan_fingerprint(mem)
    assert list(tmp_path.iterdir()) == []


def _old_order(root: Path) -> list[str]:
    """The documented order: every image below root, sorted by relative POSIX path (os.walk, one sort)."""
    found = []
    for dirpath, _, files in os.walk(root):
        rel = Path(dirpath).relative_to(root).as_posix()
        rel = "" if rel == "." else rel + "/"
        found += [rel + f for f in files if not f.startswith(".") and f.rsplit(".", 1)[-1].lower() in ("jpg", "png")]
    return sorted(found)


def test_folder_walk_is_sorted_by_full_relative_path(tmp_path):
    """One directory at a time, yet exactly the global sort of relative paths, for names around the
    separator ('a.jpg' < 'a-b/..' < 'a/..' < 'a0.jpg' and friends), odd characters and deep trees."""
    root = tmp_path / "tree"
    names = ["a", "a-b", "a.b", "a0", "a b", "A", "_", "z", "\u00e9t\u00e9", "a.jpg.d", "ab"]
    rng = random.Random(1)
    for k in range(300):
        depth = rng.randrange(0, 4)
        parts = [rng.choice(names) for _ in range(depth)]
        d = root.joinpath(*parts)
        d.mkdir(parents=True, exist_ok=True)
        leaf = rng.choice(names) + rng.choice([".jpg", ".png", ".JPG", ".txt"])
        if not (d / leaf).exists() and not (d / leaf).is_dir():
            (d / leaf).write_bytes(b"")
    (root / ".hidden.jpg").write_bytes(b"")
    plan = plan_inputs([root], tmp_dir=tmp_path)
    got = [Path(s.source).relative_to(root).as_posix() for s in plan]
    assert got == _old_order(root) and len(got) > 100
    assert all(s.key == r.rsplit(".", 1)[0] for s, r in zip(plan, got))


def test_unlistable_folder_is_an_error_not_a_silent_gap(tmp_path, monkeypatch):
    keys = make_folder(tmp_path / "c")
    assert keys
    real = os.scandir

    def scandir(p):
        if os.path.basename(os.fspath(p)) == "part0":
            raise PermissionError(13, "Permission denied")
        return real(p)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(InputError, match="cannot list the folder .*part0.*Permission denied"):
        plan_inputs([tmp_path / "c"])


def _reference_tasks(groups, statuses, chunk_rows, batch_size, info):
    """The plain list the lazy TaskList replaces: chunks across groups, shared, pending ones cut into batches."""
    chunks = [(gp, c) for gp, n in groups.items() for c in range((n + chunk_rows - 1) // chunk_rows)]
    mine = [chunks[i] for i in D.share(len(chunks), info)]
    bs = max(1, min(batch_size, chunk_rows))
    tasks, done = [], 0
    for gp, c in mine:
        a, b = c * chunk_rows, min((c + 1) * chunk_rows, groups[gp])
        if (statuses[gp][a:b] != S.STATUS_PENDING).all():
            done += b - a
            continue
        tasks += [Task(gp, s, min(s + bs, b)) for s in range(a, b, bs)]
    return tasks, done


@pytest.mark.parametrize("world", [1, 2, 3])
def test_lazy_task_list_equals_the_plain_list(world):
    rng = np.random.default_rng(world)
    sizes = {"": 1000, "buckets/512x1024": 37, "buckets/768x768": 0, "buckets/1024x512": 515}
    statuses = {gp: np.where(rng.random(n) < 0.4, 1, 0).astype(np.uint8) for gp, n in sizes.items()}
    for gp in statuses:  # whole chunks done, as a resumed store has them
        statuses[gp][:64] = 1
    groups = {gp: range(n) for gp, n in sizes.items()}
    for chunk_rows, bs in [(64, 16), (64, 64), (50, 7), (64, 1000)]:
        for rank in range(world):
            info = D.DistInfo(rank=rank, world_size=world)
            tasks, done = make_tasks(groups, statuses, chunk_rows, bs, info, block_chunks=3)
            want, want_done = _reference_tasks(sizes, statuses, chunk_rows, bs, info)
            assert list(tasks) == want and done == want_done and len(tasks) == len(want)
            assert tasks.rows_total == sum(t.stop - t.start for t in want)
            if want:
                assert tasks[-1] == want[-1] and tasks[len(want) // 2] == want[len(want) // 2]


def test_error_table_written_in_blocks_equals_one_pass(tmp_path):
    good = png_bytes(np.full((64, 64, 3), 90, np.uint8))
    samples = [Sample(f"k{i:04d}", f"src{i}", good if i % 4 == 0 else b"not an image", caption="",
                      error="x" if i % 4 == 1 else None) for i in range(150)]
    out = tmp_path / "e.zarr"
    s = build_latent_dataset(samples, out, TinyEncoder(), resolution=64, batch_size=8, chunk_rows=16, num_workers=0,
                             progress=False)
    skipped = [i for i in range(150) if i % 4]
    assert s.ok == 150 - len(skipped) and s.skipped == {"x": 38, "not_an_image": 74}
    g = S.open_store(out, mode="r+")
    one = {k: np.asarray(g["errors"][k][:]).tolist() for k in ("row", "key", "source", "reason")}
    assert one["row"] == skipped and one["key"] == [f"k{i:04d}" for i in skipped]
    assert one["reason"] == ["x" if i % 4 == 1 else "not_an_image" for i in skipped]
    assert S.write_error_table(g, block_rows=7) == len(skipped)  # 7 does not divide 16 or 112
    assert {k: np.asarray(g["errors"][k][:]).tolist() for k in one} == one
    assert g["errors"]["row"].chunks == (7,)
    assert [a for a, _ in S.iter_status(g, block_rows=40)] == [0, 32, 64, 96, 128]  # whole chunks per block


def test_build_keeps_plan_and_bucket_rows_in_tmp_dir(tmp_path, monkeypatch):
    """build_latent_dataset(tmp_dir=...) puts the plan and the bucket row lists in anonymous files there,
    and the buckets' rows come out as before (plan order within each group)."""
    import tempfile

    from cascadekit.datasets import spill

    made = []
    real = tempfile.TemporaryFile

    def recording(*a, **kw):
        made.append(kw.get("dir"))
        return real(*a, **kw)

    monkeypatch.setattr(spill.tempfile, "TemporaryFile", recording)
    folder = tmp_path / "c"
    folder.mkdir()
    for i, (h, w) in enumerate([(64, 128), (64, 64), (128, 64), (64, 130), (64, 64)]):
        (folder / f"i{i}.png").write_bytes(png_bytes(np.full((h, w, 3), 30 * i, np.uint8)))
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    out = tmp_path / "b.zarr"
    s = build_latent_dataset([folder], out, TinyEncoder(), resolution=64, buckets=True, batch_size=2, chunk_rows=2,
                             num_workers=0, progress=False, tmp_dir=spill_dir)
    assert s.ok == 5 and made and all(d == spill_dir for d in made)
    assert len(made) == 2 + 3  # plan records + text, one row list per bucket
    root = S.open_store(out)
    keys = {gp: np.asarray(S.sample_group(root, gp)["keys"][:]).tolist() for gp in S.group_paths(root)}
    assert sorted(map(len, keys.values())) == [1, 2, 2] and keys["buckets/64x64"] == ["i1", "i4"]
    assert list(spill_dir.iterdir()) == []


def test_inspect_counts_block_by_block(tmp_path, monkeypatch):
    """inspect_store's single block-wise pass gives the same report as whole-array reads would."""
    from cascadekit.datasets import inspect as I

    good = png_bytes(np.full((64, 64, 3), 90, np.uint8))
    samples = [Sample(f"k{i:03d}", f"src{i}", good if i % 3 else b"junk", caption="" if i % 5 else "c")
               for i in range(100)]
    out = tmp_path / "i.zarr"
    build_latent_dataset(samples, out, TinyEncoder(), resolution=64, batch_size=8, chunk_rows=8, num_workers=0,
                         progress=False)
    real = S.iter_status
    monkeypatch.setattr(S, "iter_status", lambda g, block_rows=0: real(g, block_rows=24))  # 3 chunks per block
    rep = I.inspect_store(out, max_errors=5)["groups"]["/"]
    st = S.read_status(S.open_store(out))
    ok_rows = np.flatnonzero(st == S.STATUS_OK)
    skipped = [i for i in range(100) if i % 3 == 0]
    assert (rep["rows"], rep["ok"], rep["skipped"], rep["pending"]) == (100, 66, 34, 0)
    assert [e["row"] for e in rep["skip_examples"]] == skipped[:5]
    assert [e["key"] for e in rep["skip_examples"]] == [f"k{i:03d}" for i in skipped[:5]]
    assert rep["missing_captions"] == sum(1 for i in ok_rows if i % 5) and rep["skip_reasons"] == {"not_an_image": 34}
    pick = np.array([0, 5, 30, 65])
    assert I._ok_rows_at(S.open_store(out), pick) == ok_rows[pick].tolist()


def test_unusable_tmp_dir_is_a_clear_error_before_any_work(tmp_path):
    folder = tmp_path / "c"
    make_folder(folder)
    with pytest.raises(InputError, match="cannot write temporary files in .*nowhere.*--tmp-dir"):
        build_latent_dataset([folder], tmp_path / "o.zarr", TinyEncoder(), resolution=64, num_workers=0,
                             progress=False, tmp_dir=tmp_path / "nowhere")
    assert not (tmp_path / "o.zarr").exists()


def test_forked_decode_workers_read_the_on_disk_plan(tmp_path):
    """Two DataLoader workers (forked) read the plan from its anonymous files with pread and stream tar
    shards; the store equals the one decoded in the main process."""
    folder = tmp_path / "c"
    make_folder(folder, n_repeat=2)
    make_broken(folder / "broken")
    a = np.full((80, 96, 3), 120, np.uint8)
    make_tar(tmp_path / "s-000.tar", [(f"t{i}", {"png": png_bytes(a + i), "txt": f"cap {i}".encode()}) for i in range(7)])
    inputs = [folder, str(tmp_path / "s-{000..000}.tar")]
    kw = dict(resolution=64, batch_size=2, chunk_rows=4, progress=False)
    s0 = build_latent_dataset(inputs, tmp_path / "w0.zarr", TinyEncoder(), num_workers=0, **kw)
    s2 = build_latent_dataset(inputs, tmp_path / "w2.zarr", TinyEncoder(), num_workers=2, **kw)
    assert s2.ok == s0.ok > 7 and s2.skipped == s0.skipped and s0.skipped
    r, k = store_arrays(tmp_path / "w0.zarr"), store_arrays(tmp_path / "w2.zarr")
    assert r.keys() == k.keys()
    for name in r:
        assert np.array_equal(r[name], k[name]), name
