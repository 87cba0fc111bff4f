"""Bad input for ControlNet training and controls: clear errors before any work; the sampler's ControlNet-list pairing."""
from __future__ import annotations

import pytest
import torch
from controlnet_train_helpers import config, stage_c_file
from generator_helpers import FixedEmpty

from cascadekit.codec.diffusion.samplers import guided_inputs
from cascadekit.codec.errors import InputError
from cascadekit.datasets.controls import parse_controls
from cascadekit.generator.tasks.controlnet_config import ControlNetTrainConfig
from cascadekit.generator.train_controlnet import train_controlnet


def test_unknown_control_name_is_an_error():
    assert parse_controls("sr, canny") == ("canny", "sr")
    with pytest.raises(InputError, match="unknown control.*'edges'.*canny, sr, inpaint"):
        parse_controls("canny,edges")


def test_store_without_the_control_and_no_way_to_compute_it(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from store_helpers import build, FakeText  # noqa: F401 - in-memory images: sources are not files

    store = tmp_path / "s.zarr"
    build(store)
    with pytest.raises(InputError, match="no precomputed canny control.*cannot be read again"):
        train_controlnet(store, config("canny"), tmp_path / "run", init=stage_c_file(tmp_path / "w"), device="cpu",
                         text_encoder=FixedEmpty(), log=lambda m: None)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_sr_on_the_fly_needs_the_image_encoder(tmp_path):
    from controlnet_train_helpers import block_images, make_store

    store = make_store(tmp_path / "s.zarr", block_images(tmp_path / "img", n=8), controls=())
    with pytest.raises(InputError, match="no precomputed sr control.*needs the EfficientNet encoder"):
        train_controlnet(store, config("sr"), tmp_path / "run", init=stage_c_file(tmp_path / "w"), device="cpu",
                         text_encoder=FixedEmpty(), log=lambda m: None)


def test_bad_controlnet_config_values():
    with pytest.raises(InputError, match="control must be one of"):
        ControlNetTrainConfig.from_dict({"preset": "controlnet_canny", "control": "depth"})
    with pytest.raises(InputError, match="controlnet_blocks must be"):
        config("canny", controlnet_blocks=[1, 1])
    with pytest.raises(InputError, match="lora_rank must be 0"):
        config("canny", lora_rank=2)


def test_cnet_list_pairing_is_checked():
    t = torch.ones(1, 2, 2, 2)
    good = guided_inputs({"cnet": [None, t]}, {"cnet": [None, t * 2]})["cnet"]
    assert good[0] is None and good[1].shape == (2, 2, 2, 2)
    with pytest.raises(InputError, match=r"cnet\[1\] is \(1, 2, 2, 2\) in the conditional but NoneType"):
        guided_inputs({"cnet": [None, t]}, {"cnet": [None, None]})
    with pytest.raises(InputError, match="must be a list of 2"):
        guided_inputs({"cnet": [None, t]}, {"cnet": [None]})
