"""A transformers release that cannot run on the installed torch is one clear DependencyError.

transformers >= 5.20 switches its PyTorch models off below torch 2.6 (and some 5.x import torch
APIs newer than 2.4), so on cascadekit's minimum torch a fresh ``pip install`` can pick a
transformers whose CLIP classes do not import. These tests simulate both failure modes.
"""
from __future__ import annotations

import pytest

from cascadekit.codec.errors import CascadeKitError, DependencyError
from cascadekit.codec.text import ImageEncoder, TextEncoder, clip_classes


def test_clip_classes_returns_the_transformers_classes():
    import transformers

    enc, tok = clip_classes("CLIPTextModelWithProjection", "CLIPTokenizer")
    assert enc is transformers.CLIPTextModelWithProjection and tok is transformers.CLIPTokenizer


def test_transformers_without_torch_is_a_clear_error(monkeypatch, tmp_path):
    import transformers.utils

    monkeypatch.setattr(transformers.utils, "is_torch_available", lambda: False)
    for load in (TextEncoder.from_pretrained, ImageEncoder.from_pretrained):
        with pytest.raises(DependencyError, match=r"disabled its PyTorch models.*transformers>=4\.44,<5") as ei:
            load(tmp_path)
        # the CLI prints CascadeKitErrors as one line; code catching ImportError keeps working
        assert isinstance(ei.value, CascadeKitError) and isinstance(ei.value, ImportError)


def test_class_that_does_not_import_is_a_clear_error():
    with pytest.raises(DependencyError, match=r"NoSuchCLIPModel with torch .*AttributeError"):
        clip_classes("NoSuchCLIPModel")
