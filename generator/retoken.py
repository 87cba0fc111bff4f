"""ReToken: new and fine-tuned token embeddings of the CLIP text encoder, as the official LoRA trainer has them.

A token list (the config's ``train_tokens``, e.g. ``[["[fernando]", "^dog</w>"], ["ball", None]]``):

* a bracketed token (``[x]`` or ``<x>``) is NEW: it is added to the tokenizer and a row is appended to
  the text model's token embedding, initialised to the mean of the rows whose vocabulary entry matches
  the init regex (``re.search``; zeros with a warning when nothing matches or the regex is None);
* any other entry is a regex selecting EXISTING vocabulary entries whose rows are fine-tuned.

:class:`ReToken` parametrizes ``token_embedding.weight``: ``W -> W + strength * scatter(indices, embeddings)``,
a delta of shape (n_tokens, width) that starts at zero and touches the selected rows only, so every
other row stays bit-identical. ``indices`` are token ids, sorted and unique.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from cascadekit.codec.errors import InputError


@dataclass(frozen=True)
class TrainToken:
    """One ``train_tokens`` entry: ``token`` (a new ``[x]``/``<x>`` token, or a regex over the vocabulary)
    and ``init`` (for a new token: the regex whose matching rows' mean is its first embedding)."""

    token: str
    init: str | None = None

    @property
    def is_new(self) -> bool:
        t = self.token
        return len(t) > 2 and ((t[0] == "[" and t[-1] == "]") or (t[0] == "<" and t[-1] == ">"))

    def to_list(self) -> list:
        return [self.token, self.init]


def _entry(i: int, entry: Any) -> TrainToken:
    """One ``train_tokens`` entry: ``[token, init]``, ``(token, init)``, a bare token string or a TrainToken."""
    if isinstance(entry, TrainToken):
        return entry
    pair = [entry, None] if isinstance(entry, str) else list(entry) if isinstance(entry, (list, tuple)) else []
    if len(pair) != 2 or not isinstance(pair[0], str) or not pair[0] or not isinstance(pair[1], (str, type(None))):
        raise InputError(f"train_tokens[{i}] must be [token, init_regex or null], got {entry!r} "
                         "(e.g. [\"[fernando]\", \"^dog</w>\"] or [\"ball\", null])")
    tok = TrainToken(pair[0], pair[1])
    for what, rx in (("init regex", tok.init), ("token regex", None if tok.is_new else tok.token)):
        try:
            re.compile(rx or "")
        except re.error as e:
            raise InputError(f"train_tokens[{i}]: the {what} {rx!r} is not a valid regular expression: "
                             f"{e}") from None
    return tok


def parse_train_tokens(spec: Any) -> list[TrainToken]:
    """``[["[fernando]", "^dog</w>"], ["ball", None], "[x]"]`` (or TrainTokens) -> list of :class:`TrainToken`.

    Raises :class:`InputError` naming the entry for anything else, or for a regex that does not compile.
    """
    if spec is None:
        return []
    if isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence):
        raise InputError(f"train_tokens must be a list of [token, init_regex] pairs, got {spec!r}")
    return [_entry(i, e) for i, e in enumerate(spec)]


def train_token_problems(cfg: Any) -> list[str]:
    """Config problems of ``cfg.train_tokens`` (a list of [token, init regex]; needs ``cfg.lora_rank > 0``)."""
    if not cfg.train_tokens:
        return []
    errs = [] if isinstance(cfg.lora_rank, int) and cfg.lora_rank > 0 else \
        ["train_tokens (new-token LoRA training) needs lora_rank > 0"]
    try:
        parse_train_tokens(cfg.train_tokens)
    except InputError as e:
        errs.append(str(e))
    return errs


def matching_ids(vocab: dict[str, int], regex: str, limit: int) -> list[int]:
    """Sorted ids (< ``limit``) of the vocabulary entries matching ``regex`` (``re.search``)."""
    rx = re.compile(regex)
    return sorted(i for k, i in vocab.items() if i < limit and rx.search(k) is not None)


def mean_row(weight: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    """The mean of rows ``ids`` of ``weight`` (V, C) as (C,), computed in float32; zeros when ``ids`` is empty."""
    if not ids:
        return torch.zeros(weight.shape[1], dtype=weight.dtype, device=weight.device)
    return weight.detach()[list(ids)].float().mean(dim=0).to(weight.dtype)


class ReToken(nn.Module):
    """Parametrization of ``token_embedding.weight`` (V, C): rows ``indices`` get ``+ strength * embeddings``.

    ``embeddings`` (n, C) starts at zero (the trainable delta); ``indices`` (n,) int64 token ids.
    ``tokens`` / ``base_vocab`` describe where new tokens came from (written into saved LoRA files).
    """

    def __init__(self, indices: Sequence[int], width: int, device=None, dtype=None,
                 tokens: Sequence[TrainToken] | None = None, base_vocab: int | None = None):
        super().__init__()
        idx = sorted({int(i) for i in indices})
        self.embeddings = nn.Parameter(torch.zeros(len(idx), width, device=device, dtype=dtype))
        self.register_buffer("indices", torch.tensor(idx, dtype=torch.long, device=device))
        self.strength = 1.0
        self.enabled = True
        self.tokens = list(tokens or [])
        self.base_vocab = base_vocab

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled or self.indices.numel() == 0:
            return weight
        return weight.index_add(0, self.indices, (self.embeddings * self.strength).to(weight.dtype))


@dataclass
class TokenPlan:
    """The outcome of :func:`add_tokens`: ``indices`` (sorted token ids to fine-tune), ``new_ids`` (id of
    each new token, in list order), ``base_vocab`` (the tokenizer's size without added tokens)."""

    indices: list[int]
    new_ids: list[int]
    base_vocab: int


def _embedding(text_model: nn.Module) -> nn.Embedding:
    emb = text_model.get_input_embeddings()
    if parametrize.is_parametrized(emb, "weight"):
        raise InputError("the text model's token embedding already carries a ReToken: merge it "
                         "(merge_retoken) before adding tokens of another LoRA")
    return emb


def _append_row(text_model: nn.Module, row: torch.Tensor) -> None:
    """Replace the token embedding (V, C) by one of V + 1 rows, the last one ``row`` (C,)."""
    emb = _embedding(text_model)
    w = emb.weight.detach()
    new = nn.Embedding(w.shape[0] + 1, w.shape[1], padding_idx=emb.padding_idx, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(torch.cat([w, row[None].to(w.dtype)], dim=0))
    new.weight.requires_grad_(emb.weight.requires_grad)
    text_model.set_input_embeddings(new)
    if getattr(text_model, "config", None) is not None:
        text_model.config.vocab_size = new.weight.shape[0]


def add_tokens(tokenizer: Any, text_model: nn.Module, tokens: Sequence[TrainToken]) -> TokenPlan:
    """Add the new tokens to ``tokenizer`` and their rows to ``text_model``; return the rows to fine-tune.

    A new token already in the tokenizer (e.g. from another LoRA) keeps its id and row. Raises
    :class:`InputError` when the tokenizer and the embedding disagree on the vocabulary size.
    """
    rows = _embedding(text_model).weight.shape[0]
    if len(tokenizer) != rows:
        raise InputError(f"the tokenizer has {len(tokenizer)} entries but the text model's token embedding has "
                         f"{rows} rows: they must belong together")
    base_vocab = int(getattr(tokenizer, "vocab_size", rows))
    indices, new_ids = [], []
    for t in tokens:  # one at a time, as the official trainer: later regexes see earlier new tokens
        vocab, weight = tokenizer.get_vocab(), _embedding(text_model).weight
        rows = weight.shape[0]
        if not t.is_new:
            indices += matching_ids(vocab, t.token, rows)
        elif t.token in vocab:
            new_ids.append(int(vocab[t.token]))
        else:
            init_ids = matching_ids(vocab, t.init, rows) if t.init is not None else []
            if not init_ids:
                warnings.warn(f"no vocabulary entry matches {t.init!r}: the new token {t.token} starts as zeros",
                              stacklevel=2)
            tokenizer.add_tokens([t.token])
            new_ids.append(int(tokenizer.convert_tokens_to_ids(t.token)))
            if new_ids[-1] != rows:
                raise InputError(f"the tokenizer gave {t.token} id {new_ids[-1]}, expected {rows}")
            _append_row(text_model, mean_row(weight, init_ids))
    return TokenPlan(sorted(set(indices + new_ids)), new_ids, base_vocab)


def apply_retoken(text_model: nn.Module, indices: Sequence[int], tokens: Sequence[TrainToken] | None = None,
                  base_vocab: int | None = None) -> ReToken:
    """Freeze ``text_model`` and put a trainable :class:`ReToken` on its token embedding rows ``indices``."""
    emb = _embedding(text_model)
    rows = emb.weight.shape[0]
    bad = [int(i) for i in indices if not 0 <= int(i) < rows]
    if bad:
        raise InputError(f"token ids {bad[:5]} are beyond the text model's vocabulary ({rows} rows)")
    text_model.requires_grad_(False)
    rt = ReToken(indices, emb.weight.shape[1], device=emb.weight.device, dtype=emb.weight.dtype,
                 tokens=tokens, base_vocab=base_vocab)
    parametrize.register_parametrization(emb, "weight", rt)
    return rt


def setup_train_tokens(tokenizer: Any, text_model: nn.Module, spec: Any) -> ReToken:
    """Parse ``train_tokens``, add the new tokens, and attach the ReToken (what the official trainer does)."""
    tokens = parse_train_tokens(spec)
    plan = add_tokens(tokenizer, text_model, tokens)
    return apply_retoken(text_model, plan.indices, tokens, plan.base_vocab)


def find_retoken(text_model: nn.Module) -> ReToken | None:
    """The ReToken on the text model's token embedding, or None."""
    emb = text_model.get_input_embeddings()
    if not parametrize.is_parametrized(emb, "weight"):
        return None
    return next((p for p in emb.parametrizations["weight"] if isinstance(p, ReToken)), None)


def add_rows_(weight: torch.Tensor, indices: torch.Tensor, deltas: torch.Tensor) -> None:
    """``weight[indices] += deltas`` in place, summed in float32 and rounded once to the weight's dtype."""
    with torch.no_grad():
        idx = indices.to(weight.device, torch.long)
        weight[idx] = (weight[idx].float() + deltas.to(weight.device, torch.float32)).to(weight.dtype)


def merge_retoken(text_model: nn.Module) -> None:
    """Fold the ReToken delta into the token embedding and remove the parametrization (in place)."""
    rt = find_retoken(text_model)
    if rt is None:
        return
    emb = text_model.get_input_embeddings()
    with torch.no_grad():
        deltas = rt.embeddings.detach().float() * rt.strength if rt.enabled else torch.zeros_like(rt.embeddings)
    indices = rt.indices
    parametrize.remove_parametrizations(emb, "weight", leave_parametrized=False)
    add_rows_(emb.weight, indices, deltas)
