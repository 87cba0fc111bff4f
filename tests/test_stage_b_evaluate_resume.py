"""Stage B resume keeps the empty caption's pooled embedding in the run (generator/tasks/stage_b_empty.py)."""
from __future__ import annotations

import json

import pytest
import torch

from cascadekit.codec.errors import InputError
from cascadekit.generator.tasks.stage_b_config import StageBTrainConfig
from cascadekit.generator.tasks.stage_b_empty import empty_from_record, empty_record
from cascadekit.generator.train_stage_b import train_stage_b
from stage_b_helpers import C_CLIP_TINY, SMALL_B, simple_store

EMPTY = torch.randn(1, 1, C_CLIP_TINY, generator=torch.Generator().manual_seed(5))
CFG = StageBTrainConfig.from_dict({"preset": "tiny", "batch_size": 4, "steps": 4, "save_every": 1, "log_every": 1,
                                   "caption_dropout": 0.5})


def _train(store, out, **kw):
    return train_stage_b(store, CFG, out, model_overrides=SMALL_B, log=lambda m: None, **kw)


class _Captions:
    """A stand-in text encoder: pooled = the caption length in every channel."""

    def encode(self, captions):
        pooled = torch.tensor([[float(len(c))] * C_CLIP_TINY for c in captions])
        return torch.zeros(len(captions), 2, C_CLIP_TINY), pooled


def test_record_round_trip_is_exact():
    rec = json.loads(json.dumps(empty_record(EMPTY)))
    assert torch.equal(empty_from_record(rec), EMPTY) and rec["shape"] == [1, 1, C_CLIP_TINY]
    bad = dict(rec, sha256="0" * 64)
    with pytest.raises(InputError, match="damaged"):
        empty_from_record(bad)


def test_resume_needs_no_empty_caption_source(tmp_path):
    store = simple_store(tmp_path / "s.zarr", side=8)  # captions but no embeddings: text = the empty caption
    _train(store, tmp_path / "a", empty_pooled=EMPTY)
    _train(store, tmp_path / "b", empty_pooled=EMPTY, stop_after=1)
    assert json.loads((tmp_path / "b/run.json").read_text())["empty_caption"] == empty_record(EMPTY)
    _train(store, tmp_path / "b", empty_pooled=EMPTY.clone(), resume=True, stop_after=1)  # the same one: fine
    with pytest.raises(InputError, match="differs from the one this run was trained with"):
        _train(store, tmp_path / "b", empty_pooled=EMPTY + 1e-3, resume=True)
    with pytest.raises(InputError, match="pass --text-encoder again|now it would be 'text encoder'"):
        _train(store, tmp_path / "b", text_encoder=_Captions(), resume=True)  # would read the captions now
    _train(store, tmp_path / "b", resume=True)  # no source at all: the recorded embedding
    name = "checkpoints/step_000004/stage_b_lite.safetensors"
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_a_new_run_without_an_empty_caption_is_refused_before_training(tmp_path):
    store = simple_store(tmp_path / "s.zarr", side=8)
    with pytest.raises(InputError, match="empty caption's pooled CLIP embedding is needed"):
        _train(store, tmp_path / "r")
    assert not (tmp_path / "r").exists()
