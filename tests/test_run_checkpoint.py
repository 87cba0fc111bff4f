"""A training run given to sampling (Stage C weights, --stage-b-weights, --controlnet) is read through one helper,
`checkpoint.run_checkpoint`: the newest intact checkpoint, as `--resume` takes it, so a run whose `latest` pointer
was removed or whose newest checkpoint is damaged still samples."""
from __future__ import annotations

import pytest
import torch

from cascadekit.codec.errors import InputError
from cascadekit.generator import checkpoint as ckpt
from cascadekit.generator.controlnet_runs import controlnet_file_of
from cascadekit.generator.stage_b_weights import stage_b_weights_file

W = {"a": torch.arange(4.0)}


def _run(tmp_path, name: str, steps=(2, 4)):
    run = tmp_path / "run"
    for s in steps:
        ckpt.save_checkpoint(run, s, weights=W, weights_name=name, state={"step": s}, keep=5)
    return run


def test_run_checkpoint_ignores_latest_and_skips_damaged(tmp_path):
    run = _run(tmp_path, "model.safetensors", steps=(2, 4, 6))
    assert ckpt.run_checkpoint(run).name == "step_000006"
    (run / "checkpoints" / ckpt.LATEST).unlink()
    assert ckpt.run_checkpoint(run).name == "step_000006"
    f = run / "checkpoints" / "step_000006" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:50])
    assert ckpt.run_checkpoint(run).name == "step_000004"
    other = tmp_path / "file.safetensors"
    assert ckpt.run_checkpoint(other) == other  # not a run: unchanged


def test_run_without_intact_checkpoint_names_why(tmp_path):
    run = _run(tmp_path, "model.safetensors", steps=(2,))
    (run / "checkpoints" / "step_000002" / "meta.json").unlink()
    with pytest.raises(InputError, match=r"Stage C run .* has no intact checkpoint yet \(step_000002/meta.json is missing"):
        ckpt.run_checkpoint(run, "Stage C run")


def test_stage_b_weights_of_a_run_without_latest(tmp_path):
    run = _run(tmp_path, "stage_b_lite.safetensors")
    (run / "checkpoints" / ckpt.LATEST).unlink()
    assert stage_b_weights_file(run) == run / "checkpoints" / "step_000004" / "stage_b_lite.safetensors"


def test_controlnet_of_a_run_without_latest(tmp_path):
    run = _run(tmp_path, "controlnet.safetensors")
    (run / "checkpoints" / ckpt.LATEST).unlink()
    assert controlnet_file_of(run) == run / "checkpoints" / "step_000004" / "controlnet.safetensors"


def test_pipeline_load_stage_c_of_a_run_without_latest(tmp_path_factory, tmp_path):
    import warnings

    from _tiny_weights import tiny_weights_dir

    from cascadekit.generator.pipeline import TextToImagePipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = TextToImagePipeline.from_pretrained(tiny_weights_dir(tmp_path_factory))
    sd = {k: v.detach().clone() + 0.5 for k, v in pipe.stage_c.state_dict().items()}
    run = tmp_path / "run"
    for s in (2, 4):
        ckpt.save_checkpoint(run, s, weights=sd, state={"step": s}, keep=5)
    (run / "checkpoints" / ckpt.LATEST).unlink()
    pipe.load_stage_c(run)
    assert pipe.stage_c_weights == str(run / "checkpoints" / "step_000004" / "model.safetensors")
    k = next(iter(sd))
    assert torch.equal(pipe.stage_c.state_dict()[k].float(), sd[k].float())
