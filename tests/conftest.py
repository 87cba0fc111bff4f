"""Shared test fixtures: the reference data beside the checkout and small, fast torch settings."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

# One intra-op thread: the tests use tiny tensors (thread overhead dominates) and several spawn worker processes.
torch.set_num_threads(1)

REFERENCE = Path(os.environ.get("CASCADEKIT_REFERENCE", Path(__file__).resolve().parents[2] / "shared" / "reference"))
MANIFESTS = REFERENCE / "manifests"
GOLDEN = REFERENCE / "golden"


def load_manifest(name: str) -> dict:
    return json.loads((MANIFESTS / f"{name}.json").read_text())


def load_golden(name: str):
    """Return (meta, state, inputs, outputs) of a golden case, tensors as stored (official key names)."""
    from safetensors.torch import load_file

    tensors = load_file(str(GOLDEN / f"{name}.safetensors"))
    meta = json.loads((GOLDEN / f"{name}.json").read_text())

    def strip(prefix):
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    return meta, strip("state."), strip("input."), strip("output.")


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.fail(f"reference data not found at {REFERENCE}; set CASCADEKIT_REFERENCE")
    return REFERENCE
