"""Decoding between encoder calls on threads of the main process (datasets/decode_workers.DecodeThreads), the
route a CPU encoder whose threads fill every core takes (datasets/encode_loop.make_source)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from datasets_helpers import TinyEncoder, make_broken, make_folder, make_tar, png_bytes, store_arrays  # noqa: E402

from cascadekit.datasets.builder import build_latent_dataset  # noqa: E402
from cascadekit.datasets.decode_workers import DecodeThreads, TaskDataset  # noqa: E402
from cascadekit.datasets.encode_loop import make_source, usable_cores  # noqa: E402
from cascadekit.datasets.preprocess import PreprocessConfig  # noqa: E402
from cascadekit.datasets.sources import plan_inputs  # noqa: E402
from cascadekit.datasets.tasks import Task  # noqa: E402


class _Counting(TaskDataset):
    """Counts the tasks decoded so far."""

    decoded = 0

    def decode(self, k, reader, samples=None):
        self.decoded += 1
        return super().decode(k, reader, samples)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list:
    """Photos (jpg/png, captions), broken files and a tar shard: every route a sample takes."""
    tmp_path = tmp_path_factory.mktemp("corpus")
    folder = tmp_path / "c"
    make_folder(folder, n_repeat=2)
    make_broken(folder / "broken")
    a = np.full((80, 96, 3), 120, np.uint8)
    make_tar(tmp_path / "s-000.tar", [(f"t{i}", {"png": png_bytes(a + i), "txt": f"cap {i}".encode()}) for i in range(7)])
    return [folder, str(tmp_path / "s-{000..000}.tar")]


def test_decode_threads_decode_only_when_asked_in_the_workers_order(corpus):
    plan = plan_inputs(corpus)
    n = len(plan)
    tasks = [Task("", s, min(s + 2, n)) for s in range(0, n, 2)]
    ds = _Counting(tasks, plan, {"": range(n)}, PreprocessConfig(resolution=64))
    it = iter(DecodeThreads(ds, 3))
    first = [next(it) for _ in range(3)]
    assert ds.decoded == 3  # one round of 3 threads, nothing decoded ahead of the consumer
    got = first + list(it)
    runs = [ds.run_of(j, 3) for j in range(3)]
    order = [lo + i for i in range(max(hi - lo for lo, hi in runs)) for lo, hi in runs if lo + i < hi]
    assert [g["rows"].tolist() for g in got] == [list(tasks[k].rows) for k in order]
    plan.close()


def test_cpu_encoder_on_every_core_decodes_on_threads_with_the_same_store(corpus, tmp_path):
    inputs = corpus
    kw = dict(resolution=64, batch_size=2, chunk_rows=4, progress=False)
    s0 = build_latent_dataset(inputs, tmp_path / "w0.zarr", TinyEncoder(), num_workers=0, **kw)
    saved = torch.get_num_threads()
    torch.set_num_threads(usable_cores())
    try:
        assert isinstance(make_source(TaskDataset([], [], {}, PreprocessConfig(resolution=64)), 2,
                                      torch.device("cpu")), DecodeThreads)
        s2 = build_latent_dataset(inputs, tmp_path / "w2.zarr", TinyEncoder(), num_workers=2, **kw)
    finally:
        torch.set_num_threads(saved)
    assert s2.ok == s0.ok > 7 and s2.skipped == s0.skipped and s0.skipped
    r, k = store_arrays(tmp_path / "w0.zarr"), store_arrays(tmp_path / "w2.zarr")
    assert r.keys() == k.keys()
    for name in r:
        assert np.array_equal(r[name], k[name]), name
