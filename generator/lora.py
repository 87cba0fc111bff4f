"""LoRA files for Stage C and the text encoder's token rows: both layouts in and out, and applying them.

**Official layout** (``modules/lora.py`` + ``train/train_c_lora.py``; what ``inference/lora.ipynb`` and
community tools load)::

    embeddings.embeddings  (n_tokens, width)  ReToken deltas of the text encoder's token rows
    embeddings.indices     (n_tokens,) int64  their token ids
    weights.<i>.lora_down  (rank, in)         i = the official layer order (lora_layers.official_order)
    weights.<i>.lora_up    (out, rank)

with alpha 1: ``W' = W + (up @ down) / rank``. The file does not say which tokens are new or how their
rows start; cascadekit adds a metadata entry ``cascadekit`` (JSON: rank, alpha, targets, tokens,
base_vocab, layer keys) that the official loader ignores. A LoRA trained with alpha != 1 is written
with alpha folded into ``lora_up``.

**cascadekit layout**: ``<layer key>.lora_down`` / ``.lora_up`` and ``retoken.embeddings`` /
``retoken.indices``; metadata ``format=cascadekit-lora``, ``rank``, ``alpha``, ``targets``, ``tokens``,
``base_vocab``.

The default for writing is ``layout="auto"``: the **official** layout whenever it holds the LoRA exactly
(alpha 1, the official value and the default of ``lora_alpha``; every target a 2-D weight), else the
cascadekit layout. Why not always official: it has no alpha, so alpha != 1 must be folded into
``lora_up``, which changes the factors by rounding (a resumed training run would not continue
bit-identically); and it numbers layers instead of naming them. Why official by default: it is what the
released notebook and community tools load, and with the metadata entry it round-trips exactly through
cascadekit. ``layout="official"`` forces it (alpha folded); both layouts are read.

Loading a file with new tokens needs the token list with its init regexes (``tokens=[("[fernando]",
"^dog</w>")]``, as in the official ``lora_c_3b.yaml``) unless cascadekit wrote it. A new token's row
index in the file counts from the tokenizer's base vocabulary (``base_vocab`` in the metadata, else
``tokenizer.vocab_size``) and is remapped to the token's id here, so several files can be combined.
"""
from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from cascadekit.codec.errors import InputError, WeightsError
from cascadekit.codec.fsio import atomic_write_bytes
from cascadekit.generator.lora_layers import (LoRADelta, add_delta_, apply_lora, base_state_dict, lora_config,
                                              lora_layers, lora_parameters, lora_state_dict, merge_lora,
                                              merged_state_dict, official_order, set_lora_strength,
                                              unsupported_slots)
from cascadekit.generator.retoken import (TrainToken, add_rows_, add_tokens, apply_retoken, find_retoken,
                                          parse_train_tokens)

__all__ = ["LoRADelta", "LoRAFile", "apply_lora", "base_state_dict", "load_lora", "lora_config", "lora_layers",
           "lora_parameters", "lora_state_dict", "merge_lora", "merged_state_dict", "official_order", "read_lora",
           "read_lora_file", "lora_file_tensors", "save_lora", "set_lora_strength"]

FORMAT = "cascadekit-lora"
LAYOUTS = ("auto", "official", "cascadekit")
DEFAULT_LAYOUT = "auto"
OFFICIAL_WIDTH = 1280  # the official ReToken's hard-coded width (CLIP ViT-bigG), used when no text model is given
_OFFICIAL_KEY = re.compile(r"^weights\.(\d+)\.lora_(down|up)$")


@dataclass
class LoRAFile:
    """A LoRA file as read: factors in file order, token rows, and what the file says about itself.

    factors: (down (rank, in), up (out, rank)) per layer; layer_keys: the ``<module>.<param>`` of each
    (None for an official file cascadekit did not write: bound by the official order); token_indices
    (n,) int64, token_deltas (n, width) float32; tokens: the token list, None when the file does not say.
    """

    path: str
    layout: str
    rank: int
    alpha: float
    targets: list[str]
    factors: list[tuple[torch.Tensor, torch.Tensor]]
    layer_keys: list[str] | None
    token_indices: torch.Tensor
    token_deltas: torch.Tensor
    tokens: list[TrainToken] | None = None
    base_vocab: int | None = None
    info: dict = field(default_factory=dict)

    def bind(self, model: nn.Module) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """(layer key, down, up) for ``model``; :class:`WeightsError` when the file does not fit it."""
        layers = lora_layers(model)
        keys = [k for k, _ in layers] if layers else official_order(model, self.targets)
        if self.layer_keys is not None:
            missing, extra = set(keys) - set(self.layer_keys), set(self.layer_keys) - set(keys)
            if missing or extra:
                raise WeightsError(f"LoRA file {self.path} does not fit this Stage C: {len(missing)} of its LoRA "
                                   f"layers missing from the file {sorted(missing)[:2]}, {len(extra)} unknown "
                                   f"{sorted(extra)[:2]}{self._size_hint(model)}")
            keys = self.layer_keys
        elif len(keys) != len(self.factors):
            raise WeightsError(f"LoRA file {self.path} has {len(self.factors)} LoRA layers but this Stage C has "
                               f"{len(keys)} under module names containing {self.targets}{self._size_hint(model)}")
        out = []
        for key, (down, up) in zip(keys, self.factors):
            mname, pname = key.rsplit(".", 1)
            w_shape = tuple(getattr(model.get_submodule(mname), pname).shape)
            if (tuple(up.shape[:1]) + tuple(down.shape[1:])) != w_shape:
                want = f"({self.rank}, {w_shape[1]}) / ({w_shape[0]}, {self.rank})"
                raise WeightsError(f"LoRA file {self.path}: layer {key} has factors {list(down.shape)} / "
                                   f"{list(up.shape)} for a weight of shape {list(w_shape)} (expected {want})"
                                   f"{self._size_hint(model)}")
            out.append((key, down, up))
        return out

    def _size_hint(self, model: nn.Module) -> str:
        fits = _presets_fitting(len(self.factors), int(self.factors[0][0].shape[1]) if self.factors else 0,
                                tuple(self.targets))
        what = f"the '{fits[0]}' Stage C" if fits else "no Stage C preset"
        return f". The file fits {what}; is it a LoRA for another Stage C size?"


@lru_cache(maxsize=16)
def _presets_fitting(n_layers: int, width: int, targets: tuple[str, ...]) -> tuple[str, ...]:
    """Stage C presets whose LoRA (for ``targets``) has ``n_layers`` layers, the first of input width ``width``."""
    from cascadekit.codec.models.stage_c import StageC, StageCConfig  # only for the error message

    out = []
    for name in StageCConfig.PRESETS:
        with torch.device("meta"):
            m = StageC.from_config(StageCConfig.preset(name))
        keys = official_order(m, targets)
        if len(keys) == n_layers and keys:
            mname, pname = keys[0].rsplit(".", 1)
            if getattr(m.get_submodule(mname), pname).shape[1] == width:
                out.append(name)
    return tuple(out)


# ---------------------------------------------------------------- reading
def _check_rank(path, factors: list, rank: int | None) -> int:
    if not factors:
        raise WeightsError(f"LoRA file {path} holds no LoRA factors")
    r = rank if rank is not None else int(factors[0][0].shape[0])
    for i, (down, up) in enumerate(factors):
        if down.dim() != 2 or up.dim() != 2 or down.shape[0] != r or up.shape[1] != r:
            raise WeightsError(f"LoRA file {path}: rank mismatch at layer {i}: lora_down {list(down.shape)}, "
                               f"lora_up {list(up.shape)}, expected rank {r} (down (rank, in), up (out, rank))")
    return r


def _check_tokens(path, indices: torch.Tensor | None, deltas: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    if indices is None and deltas is None:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, OFFICIAL_WIDTH)
    if indices is None or deltas is None or indices.dim() != 1 or deltas.dim() != 2 \
            or indices.shape[0] != deltas.shape[0]:
        got = [None if t is None else list(t.shape) for t in (indices, deltas)]
        raise WeightsError(f"LoRA file {path}: token rows need indices (n,) and embeddings (n, width) together, "
                           f"got {got[0]} / {got[1]}")
    idx = indices.to(torch.float64)
    if idx.numel() and (bool((idx != idx.round()).any()) or bool((idx < 0).any())):
        raise WeightsError(f"LoRA file {path}: token indices must be non-negative integers, got {indices.tolist()[:5]}")
    idx = idx.long()
    if idx.unique().numel() != idx.numel():
        raise WeightsError(f"LoRA file {path}: token indices repeat: {idx.tolist()}")
    return idx, deltas.float()


def _tokens_from(info: dict) -> list[TrainToken] | None:
    return parse_train_tokens(info["tokens"]) if info.get("tokens") is not None else None


def _read_official(path, tensors: dict, meta: dict) -> LoRAFile:
    found: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        m = _OFFICIAL_KEY.match(k)
        if m:
            found.setdefault(int(m.group(1)), {})[m.group(2)] = v
        elif k not in ("embeddings.embeddings", "embeddings.indices"):
            raise WeightsError(f"LoRA file {path}: unexpected key {k!r} in an official LoRA file "
                               "(expected weights.<i>.lora_down/up and embeddings.embeddings/indices)")
    for i in range(len(found)):
        if set(found.get(i, {})) != {"down", "up"}:
            raise WeightsError(f"LoRA file {path}: weights.{i}.lora_down / lora_up missing "
                               f"(the layers must be numbered 0..{len(found) - 1}, each with both factors)")
    info = json.loads(meta.get("cascadekit", "{}"))
    factors = [(found[i]["down"].float(), found[i]["up"].float()) for i in range(len(found))]
    rank = _check_rank(path, factors, None)
    if info.get("rank") is not None and int(info["rank"]) != rank:
        raise WeightsError(f"LoRA file {path}: its metadata says rank {info['rank']} but the factors have rank {rank}")
    keys = info.get("layers")
    if keys is not None and len(keys) != len(factors):
        raise WeightsError(f"LoRA file {path}: its metadata names {len(keys)} layers, the file holds {len(factors)}")
    idx, deltas = _check_tokens(path, tensors.get("embeddings.indices"), tensors.get("embeddings.embeddings"))
    return LoRAFile(str(path), "official", rank, 1.0, list(info.get("targets", [".attn"])), factors, keys, idx,
                    deltas, _tokens_from(info), info.get("base_vocab"), info)


def _read_cascadekit(path, tensors: dict, meta: dict) -> LoRAFile:
    keys = sorted({k.rsplit(".", 1)[0] for k in tensors if k.endswith((".lora_down", ".lora_up"))})
    missing = [k for k in keys if f"{k}.lora_down" not in tensors or f"{k}.lora_up" not in tensors]
    if missing:
        raise WeightsError(f"LoRA file {path}: layer {missing[0]} lacks lora_down or lora_up")
    factors = [(tensors[f"{k}.lora_down"].float(), tensors[f"{k}.lora_up"].float()) for k in keys]
    try:
        rank, alpha, targets = int(meta["rank"]), float(meta["alpha"]), json.loads(meta["targets"])
    except (KeyError, ValueError) as e:
        raise WeightsError(f"LoRA file {path}: metadata rank/alpha/targets missing or unreadable ({e})") from None
    _check_rank(path, factors, rank)
    idx, deltas = _check_tokens(path, tensors.get("retoken.indices"), tensors.get("retoken.embeddings"))
    info = {"tokens": json.loads(meta["tokens"]) if "tokens" in meta else None}
    base = int(meta["base_vocab"]) if meta.get("base_vocab") not in (None, "", "None") else None
    return LoRAFile(str(path), "cascadekit", rank, alpha, list(targets), factors, keys, idx, deltas,
                    _tokens_from(info), base, info)


def read_lora_file(path: str | Path) -> LoRAFile:
    """Read a LoRA file of either layout (see the module docstring); :class:`WeightsError` for anything else."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise InputError(f"LoRA file {path} does not exist")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as e:
        raise WeightsError(f"{path} is not a readable safetensors LoRA file: {e}") from e
    if any(_OFFICIAL_KEY.match(k) for k in tensors):
        return _read_official(path, tensors, meta)
    if meta.get("format") == FORMAT:
        return _read_cascadekit(path, tensors, meta)
    raise WeightsError(f"{path} is not a cascadekit LoRA file nor an official one (expected weights.<i>.lora_down/up "
                       f"keys, or metadata format={FORMAT!r}; found keys {sorted(tensors)[:3]}, "
                       f"format={meta.get('format')!r})")


def read_lora(path: str | Path, model: nn.Module | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """``(factors by "<layer key>.lora_down/up", {"rank", "alpha", "targets", "tokens", "layout"})`` of a file.

    An official file cascadekit did not write names no layers: pass the Stage C ``model`` to bind it.
    """
    f = read_lora_file(path)
    if f.layer_keys is None and model is None:
        raise WeightsError(f"{path} is an official LoRA file without layer names: pass the Stage C model to bind "
                           "its weights.<i> to layers")
    bound = f.bind(model) if model is not None else [(k, d, u) for k, (d, u) in zip(f.layer_keys, f.factors)]
    tensors = {}
    for key, down, up in bound:
        tensors[f"{key}.lora_down"], tensors[f"{key}.lora_up"] = down, up
    tokens = None if f.tokens is None else [t.to_list() for t in f.tokens]
    return tensors, {"rank": f.rank, "alpha": f.alpha, "targets": f.targets, "tokens": tokens, "layout": f.layout}


# ---------------------------------------------------------------- applying
def _apply_factors(model: nn.Module, f: LoRAFile, scale: float, merge: bool) -> None:
    bound = f.bind(model)
    layers = dict(lora_layers(model))
    if not layers and merge:  # fold straight into the weights: no parametrization, float32 sums
        for key, down, up in bound:
            mname, pname = key.rsplit(".", 1)
            add_delta_(getattr(model.get_submodule(mname), pname), (up @ down) * (f.alpha / f.rank * float(scale)))
        return
    if not layers:
        apply_lora(model, f.rank, f.alpha, f.targets)
        layers = dict(lora_layers(model))
    for key, down, up in bound:
        d = layers[key]
        if d.rank != f.rank:
            raise WeightsError(f"LoRA rank mismatch: {f.path} has rank {f.rank}, the model's LoRA layers have rank "
                               f"{d.rank}")
        with torch.no_grad():
            d.lora_down.copy_(down.to(d.lora_down.dtype))
            d.lora_up.copy_(up.to(d.lora_up.dtype))
        d.alpha, d.scale, d.strength = f.alpha, f.alpha / f.rank, float(scale)
    if merge:
        merge_lora(model)


def _token_ids(f: LoRAFile, text_model: nn.Module, tokenizer: Any, tokens: list[TrainToken] | None) -> torch.Tensor:
    """The file's token indices as ids of this tokenizer / text model (new tokens added first)."""
    new = [t for t in tokens or [] if t.is_new]
    rows = text_model.get_input_embeddings().weight.shape[0]
    if not new:
        bad = f.token_indices[f.token_indices >= rows].tolist()
        if bad:
            raise InputError(f"LoRA file {f.path}: token indices {bad[:5]} are beyond the text model's vocabulary "
                             f"({rows} rows): the file adds new tokens. Pass the token list it was trained with, "
                             "e.g. tokens=[('[fernando]', '^dog</w>')] / --lora-token '[fernando]=^dog</w>' "
                             "(the training config's train_tokens)")
        return f.token_indices
    if tokenizer is None:
        raise InputError(f"LoRA file {f.path} adds new tokens {[t.token for t in new]}: pass the tokenizer too")
    base = f.base_vocab if f.base_vocab is not None else int(tokenizer.vocab_size)
    plan = add_tokens(tokenizer, text_model, tokens)
    ids = []
    for i in f.token_indices.tolist():
        if i >= base + len(new):
            raise InputError(f"LoRA file {f.path}: token index {i} is beyond the vocabulary ({base} entries + "
                             f"{len(new)} new token(s) {[t.token for t in new]}); was it trained with more tokens?")
        ids.append(plan.new_ids[i - base] if i >= base else i)
    return torch.tensor(ids, dtype=torch.long)


def _apply_tokens(text_model: nn.Module, tokenizer: Any, f: LoRAFile, tokens: list[TrainToken] | None,
                  scale: float, merge: bool) -> None:
    emb = text_model.get_input_embeddings()
    n, width = f.token_deltas.shape
    if n and width != emb.weight.shape[1]:
        raise WeightsError(f"LoRA file {f.path}: token rows of width {width} for a text model of width "
                           f"{emb.weight.shape[1]} (another text encoder?)")
    ids = _token_ids(f, text_model, tokenizer, tokens)
    if n == 0:
        return
    order = torch.argsort(ids)  # ReToken keeps its indices sorted
    ids, deltas = ids[order], f.token_deltas[order]
    if merge:
        add_rows_(text_model.get_input_embeddings().weight, ids, deltas * float(scale))
        return
    rt = apply_retoken(text_model, ids.tolist(), tokens, f.base_vocab)
    with torch.no_grad():
        rt.embeddings.copy_(deltas.to(rt.embeddings.dtype))
    rt.strength = float(scale)


def load_lora(stage_c: nn.Module, path: str | Path, text_model: nn.Module | None = None, tokenizer: Any = None,
              tokens: Sequence | None = None, *, scale: float = 1.0, merge: bool = False) -> nn.Module:
    """Apply the LoRA file ``path`` (either layout) to ``stage_c`` and its token rows to ``text_model``.

    stage_c: a Stage C without LoRA (layers are attached with the file's rank/alpha/targets) or with LoRA
    layers of the same rank (their factors are replaced). text_model: a transformers CLIP text model
    (``get_input_embeddings``); tokenizer: its tokenizer, needed when the file adds new tokens; tokens:
    the token list (``[("[fernando]", "^dog</w>")]``), default the file's own. scale: multiplies every
    delta (``--lora-scale``). merge=True folds everything into the weights (plain models, official keys).
    Returns ``stage_c``.
    """
    f = read_lora_file(path)
    toks = parse_train_tokens(tokens) if tokens is not None else f.tokens
    _apply_factors(stage_c, f, scale, merge)
    if text_model is not None:
        _apply_tokens(text_model, tokenizer, f, toks, scale, merge)
    elif f.token_deltas.shape[0] and bool(f.token_deltas.abs().max() > 0):
        warnings.warn(f"LoRA file {path} also carries {f.token_deltas.shape[0]} text-encoder token rows; pass "
                      "text_model= (and tokenizer=) to apply them", stacklevel=2)
    return stage_c


# ---------------------------------------------------------------- writing
def _official_tensors(model: nn.Module, layers: list, targets: Sequence[str], alpha: float) -> dict:
    odd = unsupported_slots(model, targets)
    if odd:
        raise InputError(f"the official LoRA layout cannot describe this LoRA: the targets {list(targets)} also match "
                         f"non-2-D weights the official trainer would wrap ({odd[:2]}); use layout='cascadekit'")
    keys = [k for k, _ in layers]
    if keys != official_order(model, targets):
        raise InputError(f"the model's LoRA layers are not those the targets {list(targets)} select: pass the "
                         "targets the LoRA was applied with, or use layout='cascadekit'")
    out = {}
    for i, (_, d) in enumerate(layers):
        out[f"weights.{i}.lora_down"] = d.lora_down.detach().float().cpu().contiguous()
        out[f"weights.{i}.lora_up"] = (d.lora_up.detach().float().cpu() * alpha).contiguous()  # alpha folded
    return out


def lora_file_tensors(model: nn.Module, targets: Sequence[str] = (".attn",), *, layout: str = DEFAULT_LAYOUT,
                      text_model: nn.Module | None = None, tokens: Sequence | None = None
                      ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and safetensors metadata of a LoRA file of ``model`` (+ the ReToken of ``text_model``).

    layout: ``"auto"`` (default: official when exact, see the module docstring), ``"official"`` or
    ``"cascadekit"``. targets: the module-name filters the LoRA was applied with. tokens: the token list
    (default: the ReToken's own).
    """
    if layout not in LAYOUTS:
        raise InputError(f"LoRA layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    layers = lora_layers(model)
    cfg = lora_config(model)
    if any(d.rank != cfg["rank"] or d.alpha != cfg["alpha"] for _, d in layers):
        raise InputError("the model's LoRA layers differ in rank or alpha; one file holds one rank and alpha")
    if layout == "auto":
        layout = "official" if cfg["alpha"] == 1 and not unsupported_slots(model, targets) else "cascadekit"
    rt = find_retoken(text_model) if text_model is not None else None
    toks = parse_train_tokens(tokens) if tokens is not None else (rt.tokens if rt is not None else [])
    emb = rt.embeddings.detach().float().cpu() if rt is not None else torch.zeros(0, OFFICIAL_WIDTH)
    idx = rt.indices.detach().cpu().long() if rt is not None else torch.zeros(0, dtype=torch.long)
    base = rt.base_vocab if rt is not None else None
    info = {"rank": cfg["rank"], "alpha": cfg["alpha"], "targets": list(targets),
            "tokens": [t.to_list() for t in toks], "base_vocab": base}
    if layout == "official":
        tensors = _official_tensors(model, layers, targets, cfg["alpha"])
        tensors.update({"embeddings.embeddings": emb.contiguous(), "embeddings.indices": idx.contiguous()})
        meta = {"format": FORMAT, "layout": "official",
                "cascadekit": json.dumps({**info, "alpha_folded_into_lora_up": cfg["alpha"],
                                          "layers": [k for k, _ in layers]})}
    else:
        tensors = {k: v.float().contiguous().cpu() for k, v in lora_state_dict(model).items()}
        if rt is not None:
            tensors.update({"retoken.embeddings": emb.contiguous(), "retoken.indices": idx.contiguous()})
        meta = {"format": FORMAT, "layout": "cascadekit", "rank": str(cfg["rank"]), "alpha": repr(cfg["alpha"]),
                "targets": json.dumps(list(targets)), "tokens": json.dumps(info["tokens"]), "base_vocab": str(base)}
    return tensors, meta


def save_lora(model: nn.Module, path: str | Path, targets: Sequence[str] = (".attn",), extra: dict | None = None,
              *, layout: str = DEFAULT_LAYOUT, text_model: nn.Module | None = None,
              tokens: Sequence | None = None) -> Path:
    """Write the LoRA factors of ``model`` (and the ReToken of ``text_model``, if any) as safetensors, atomically
    (see :func:`lora_file_tensors` for the arguments; ``extra``: more metadata strings)."""
    from safetensors.torch import save

    tensors, meta = lora_file_tensors(model, targets, layout=layout, text_model=text_model, tokens=tokens)
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    return atomic_write_bytes(path, save(tensors, metadata=meta))
