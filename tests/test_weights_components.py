"""load_component: one network of a weight set, its config from the set, built on meta, dtype while reading."""
import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_weights import tiny_weights_dir  # noqa: E402

from cascadekit.codec.errors import InputError  # noqa: E402
from cascadekit.codec.models import PreviewerConfig, StageCConfig  # noqa: E402
from cascadekit.codec.weights.components import component_config, load_component  # noqa: E402
from cascadekit.codec.weights.load import load_weights  # noqa: E402
from cascadekit.codec.weights.sources import resolve_source  # noqa: E402


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return resolve_source(tiny_weights_dir(tmp_path_factory), stage_c="lite",
                              need=("previewer", "stage_c"))


def test_sidecar_kwargs_win_and_name_their_preset(ws):
    cfg, name = component_config(ws, "previewer")
    assert name == "tiny" and cfg == PreviewerConfig.preset("tiny")
    cfg, name = component_config(ws, "stage_c", preset="big")  # kwargs from cascadekit.json beat the hint
    assert name == "tiny" and cfg == StageCConfig.preset("tiny")


def test_load_component_builds_exact_weights_in_the_requested_dtype(ws):
    model, name = load_component(ws, "stage_c", dtype=torch.bfloat16)
    assert name == "tiny" and not model.training
    state = load_weights(ws.path("stage_c"))
    got = model.state_dict()
    assert set(got) == set(state)
    for k, v in state.items():
        assert got[k].dtype == torch.bfloat16 and torch.equal(got[k], v.to(torch.bfloat16)), k


def test_unknown_component_is_a_clear_error(ws):
    with pytest.raises(InputError, match="unknown component"):
        component_config(ws, "stage_d")
