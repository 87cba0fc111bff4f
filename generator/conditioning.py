"""Stage C conditioning for training, as released (``train/base.py::get_conditions``).

* Text: ``clip_text`` (B, 77, C) last hidden states and ``clip_text_pooled`` (B, 1, P) projected pooled
  embedding, read from the store when it has them, otherwise computed by a CLIP text encoder.
  Caption dropout: the dropped samples get the embeddings of the EMPTY caption (what the official
  code feeds when it blanks a caption, and the unconditional input at sampling time), not zeros.
* Image: ``clip_img`` (B, 1, c_clip_img) is zeros, except for the samples selected for image
  conditioning (a fraction, official 10%) when the store holds CLIP image embeddings.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from cascadekit.codec.errors import InputError

TextEncodeFn = Callable[[Sequence[str]], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class EmptyCaption:
    """Embeddings of the empty caption: clip_text (1, T, C), clip_text_pooled (1, 1, P)."""

    clip_text: torch.Tensor
    clip_text_pooled: torch.Tensor

    def expand(self, n: int, device, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """``(clip_text (n,T,C), clip_text_pooled (n,1,P))`` on ``device`` in ``dtype`` (expanded views, not copies)."""
        return (self.clip_text.to(device, dtype).expand(n, -1, -1),
                self.clip_text_pooled.to(device, dtype).reshape(1, 1, -1).expand(n, -1, -1))


class Conditioner:
    """Turns a batch (captions and/or stored embeddings) into StageC keyword inputs.

    empty: the empty-caption embeddings (needed when ``caption_dropout > 0`` and for sampling).
    encode_text: ``captions -> (clip_text (B,77,C), clip_text_pooled (B,1,P))``; needed only when the
        store has no text embeddings.
    c_clip_img: the model's image-embedding width (zeros of this width when no image embedding is used).
    """

    def __init__(self, *, c_clip_img: int, empty: EmptyCaption | None = None,
                 encode_text: TextEncodeFn | None = None):
        self.c_clip_img = int(c_clip_img)
        self.empty = empty
        self.encode_text = encode_text

    def __call__(self, batch: dict[str, Any], drop_caption: torch.Tensor, use_image: torch.Tensor,
                 device: torch.device | str, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """batch: ``captions`` (list of B str) and/or ``clip_text``/``clip_text_pooled``, optional
        ``clip_img`` (B,1,c_clip_img); drop_caption, use_image: (B,) bool.
        Returns {clip_text (B,T,C), clip_text_pooled (B,1,P), clip_img (B,1,c_clip_img)} on ``device``."""
        n = int(drop_caption.shape[0])
        drop = drop_caption.to(device)
        if "clip_text" in batch and "clip_text_pooled" in batch:
            clip_text = batch["clip_text"].to(device, dtype)
            pooled = batch["clip_text_pooled"].to(device, dtype).reshape(n, 1, -1)
            if bool(drop.any()):
                if self.empty is None:
                    raise InputError("caption dropout needs the empty-caption embeddings; give a text encoder "
                                     "or set caption_dropout: 0")
                e_text, e_pooled = self.empty.expand(n, device, dtype)
                clip_text = torch.where(drop[:, None, None], e_text, clip_text)
                pooled = torch.where(drop[:, None, None], e_pooled, pooled)
        elif "captions" in batch and self.encode_text is not None:
            caps = [("" if d else str(c)) for c, d in zip(batch["captions"], drop.tolist())]
            clip_text, pooled = self.encode_text(caps)
            clip_text = clip_text.to(device, dtype)
            pooled = pooled.to(device, dtype).reshape(n, 1, -1)
        else:
            raise InputError("the batch has neither text embeddings (clip_text, clip_text_pooled) nor captions "
                             "with a text encoder to embed them")
        clip_img = torch.zeros(n, 1, self.c_clip_img, device=device, dtype=dtype)
        if "clip_img" in batch and bool(use_image.any()):
            stored = batch["clip_img"].to(device, dtype).reshape(n, 1, -1)
            clip_img = torch.where(use_image.to(device)[:, None, None], stored, clip_img)
        return {"clip_text": clip_text, "clip_text_pooled": pooled, "clip_img": clip_img}

    def unconditional(self, n: int, device, dtype=torch.float32) -> dict[str, torch.Tensor]:
        """The released unconditional inputs: empty-caption text embeddings, zero image embedding."""
        if self.empty is None:
            raise InputError("unconditional inputs need the empty-caption embeddings (give a text encoder)")
        t, p = self.empty.expand(n, device, dtype)
        return {"clip_text": t, "clip_text_pooled": p,
                "clip_img": torch.zeros(n, 1, self.c_clip_img, device=device, dtype=dtype)}
