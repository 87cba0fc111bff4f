"""LoRA files at sampling time: merge one or several into Stage C and the CLIP text encoder, scaled.

Each file's Stage C deltas are folded into the weights (float32 sums, one rounding to the model's
dtype) and its token rows into the text encoder's token embedding; new tokens (``[fernando]``) are added
to the tokenizer first, so a prompt such as ``"a dog [fernando] in a space suit"`` uses them. Files
combine by adding their deltas; ``scale`` multiplies every delta (0 = the base model).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from cascadekit.codec.errors import InputError
from cascadekit.generator.lora import load_lora, read_lora_file
from cascadekit.generator.retoken import TrainToken, parse_train_tokens


def _text_parts(text_encoder: Any, path: Path, needs_text: bool) -> tuple[Any, Any]:
    model, tokenizer = getattr(text_encoder, "model", None), getattr(text_encoder, "tokenizer", None)
    if needs_text and (model is None or tokenizer is None):
        raise InputError(f"LoRA file {path} carries text-encoder token rows, but the pipeline's text encoder has "
                         "no CLIP model + tokenizer to apply them to")
    return model, tokenizer


def merge_lora_files(stage_c: torch.nn.Module, text_encoder: Any, files: Sequence[str | Path], scale: float = 1.0,
                     tokens: Sequence | None = None) -> list[int]:
    """Merge every file (in order) into ``stage_c`` and ``text_encoder`` (``.model`` + ``.tokenizer``).

    tokens: the token list for files that do not carry their own (official files with new tokens,
    e.g. ``[("[fernando]", "^dog</w>")]``). Returns the token ids whose embedding rows changed.
    """
    if not files:
        raise InputError("no LoRA file given")
    extra: list[TrainToken] | None = parse_train_tokens(tokens) if tokens is not None else None
    changed: set[int] = set()
    for path in map(Path, files):
        f = read_lora_file(path)  # read first: a bad file fails before anything is merged
        has_rows = f.token_indices.numel() > 0
        model, tokenizer = _text_parts(text_encoder, path, has_rows)
        toks = f.tokens if f.tokens else extra
        before = model.get_input_embeddings().weight.detach().clone() if has_rows else None
        load_lora(stage_c, path, text_model=model if has_rows else None, tokenizer=tokenizer, tokens=toks,
                  scale=scale, merge=True)
        if before is not None:
            after = model.get_input_embeddings().weight.detach()
            diff = (after[: before.shape[0]] != before).any(dim=1).nonzero().flatten().tolist()
            changed.update(diff)
    return sorted(changed)


def empty_caption_changed(text_encoder: Any, changed_ids: Sequence[int]) -> bool:
    """Whether the empty caption's tokens (start/end/padding) are among ``changed_ids`` (then its
    embedding, the unconditional input, must be recomputed)."""
    if not changed_ids or not hasattr(text_encoder, "tokenize"):
        return False
    ids = set(text_encoder.tokenize([""])["input_ids"].flatten().tolist())
    return bool(ids & set(changed_ids))


def load_into_pipeline(pipe: Any, files: str | Path | Sequence[str | Path], scale: float = 1.0,
                       tokens: Sequence | None = None) -> None:
    """What ``TextToImagePipeline.load_lora`` does: merge the file(s) into ``pipe.stage_c`` and
    ``pipe.text_encoder``, recompute ``pipe.empty`` if its tokens changed, record ``pipe.lora`` (the
    file, or the list of files once several are loaded) and ``pipe.lora_scale``."""
    files = [files] if isinstance(files, (str, Path)) else list(files)
    changed = merge_lora_files(pipe.stage_c, pipe.text_encoder, files, scale=scale, tokens=tokens)
    pipe.stage_c.eval().requires_grad_(False)
    if empty_caption_changed(pipe.text_encoder, changed):
        t, p = pipe.text_encoder.encode([""])
        pipe.empty = (t[:1].float().to(pipe.device), p[:1].float().reshape(1, 1, -1).to(pipe.device))
    before = [] if pipe.lora is None else [pipe.lora] if isinstance(pipe.lora, str) else list(pipe.lora)
    loaded = before + [str(f) for f in files]
    pipe.lora = loaded[0] if len(loaded) == 1 else loaded
    pipe.lora_scale = float(scale)
