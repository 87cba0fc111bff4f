"""New-token LoRA as released (``train/train_c_lora.py``): Stage C LoRA + ReToken rows of the CLIP text encoder.

Config: :class:`~cascadekit.generator.config.TrainConfig` with ``train_tokens`` (``[["[fernando]",
"^dog</w>"], ["ball", None]]``, see :mod:`cascadekit.generator.retoken`) and ``lora_rank > 0``; ``cascadekit
train`` picks this task whenever ``train_tokens`` is not empty. Only the LoRA factors and the ReToken deltas
train; Stage C and the text encoder stay frozen (bit-identical, as every embedding row outside the selected ones).

Which text embedding a sample gets (the mix): a caption that contains a trained token (its token ids meet the
ReToken's) is embedded by the partly trained text encoder inside the training module at every step, so
the deltas get gradients. Every other caption takes the store's precomputed ``clip_text`` /
``clip_text_pooled`` when the store has them (identical to what the text encoder gives, because its rows are
untouched), else it is embedded by the text encoder too. Dropped captions (caption dropout) get the
empty-caption embeddings, from the encoder as well if the empty caption's own tokens are trained.

Previews: the Stage C previews with the preview captions embedded by the partly trained text encoder.
Checkpoints hold ``lora.safetensors`` in the official layout (alpha 1; the cascadekit layout for other
alphas, see :mod:`cascadekit.generator.lora`) with the token rows and the token list; resume reads both back.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from cascadekit.codec.errors import InputError
from cascadekit.generator.config import TrainConfig
from cascadekit.generator.data import TrainData
from cascadekit.generator.lora import lora_file_tensors, read_lora_file
from cascadekit.generator.lora_layers import lora_parameters
from cascadekit.generator.retoken import ReToken, parse_train_tokens, setup_train_tokens
from cascadekit.generator.tasks.stage_c import StageCTask


class TokenLoRAModel(nn.Module):
    """Stage C (with LoRA) + CLIP text model (with ReToken), called by the core as ``module(x_t, r, **cond)``.

    cond: clip_text (B,T,C), clip_text_pooled (B,1,P), clip_img (B,1,I) (placeholders in the rows to encode),
    input_ids / attention_mask (B,T) and encode (B,) bool: rows whose text the text model embeds now.
    """

    def __init__(self, stage_c: nn.Module, text_model: nn.Module):
        super().__init__()
        self.stage_c, self.text_model = stage_c, text_model

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(clip_text (B,T,C) = hidden_states[-1], clip_text_pooled (B,1,P)) as :class:`codec.text.TextEncoder`."""
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return out.hidden_states[-1], out.text_embeds.unsqueeze(1)

    def forward(self, x: torch.Tensor, r: torch.Tensor, clip_text: torch.Tensor, clip_text_pooled: torch.Tensor,
                clip_img: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                encode: torch.Tensor) -> torch.Tensor:
        if bool(encode.any()):
            t, p = self.embed(input_ids[encode], attention_mask[encode])
            clip_text, clip_text_pooled = clip_text.clone(), clip_text_pooled.clone()
            clip_text[encode] = t.to(clip_text.dtype)
            clip_text_pooled[encode] = p.to(clip_text_pooled.dtype)
        out = self.stage_c(x, r, clip_text, clip_text_pooled, clip_img)
        if not bool(encode.any()):  # keep the token deltas in the graph (zero gradient): DDP wants every trained
            # parameter to get a gradient, and one process or several must update them alike
            out = out + 0.0 * self.text_model.get_input_embeddings().parametrizations["weight"][0].embeddings.sum()
        return out


class TokenLoRATask(StageCTask):
    """New-token LoRA training (module docstring). text_encoder: a :class:`cascadekit.codec.text.TextEncoder`
    (CLIP ``model`` + ``tokenizer``); it is copied, the caller's stays untouched."""

    def __init__(self, cfg: TrainConfig, *, text_encoder: Any = None, **kw):
        if not cfg.train_tokens:
            raise InputError("new-token LoRA training needs train_tokens, e.g. [[\"[fernando]\", \"^dog</w>\"]]")
        super().__init__(cfg, text_encoder=text_encoder, **kw)
        self.tokens = parse_train_tokens(cfg.train_tokens)
        self.title = f"Stage C ({cfg.model}, LoRA r={cfg.lora_rank} + tokens {[t.token for t in self.tokens]})"
        self.tokenizer: Any = None
        self.trained_ids = torch.zeros(0, dtype=torch.long)
        self.empty_encoded = False

    def check(self, data: TrainData) -> list[str]:
        errs = super().check(data)
        if "captions" not in data.fields:
            errs.append("new-token training needs the captions in the store (to find the trained tokens)")
        if getattr(self.text_encoder, "model", None) is None or getattr(self.text_encoder, "tokenizer", None) is None:
            errs.append("new-token training needs the CLIP text encoder and its tokenizer (--text-encoder)")
            return errs
        stored = getattr(data, "field_shapes", {}).get("clip_text")
        length = self.text_encoder.max_length
        if stored is not None and "clip_text_pooled" in data.fields and stored[0] != length:
            errs.append(f"the stored clip_text has {stored[0]} tokens per caption, the text encoder gives {length}: "
                        "re-run `cascadekit embed-text` with this text encoder")
        return errs

    def build(self, data: TrainData, resume_from: Path | None, recorded: dict[str, Any] | None) -> nn.Module:
        stage_c = super().build(data, resume_from, recorded)  # frozen base + LoRA factors (read back on resume)
        text_model = copy.deepcopy(self.text_encoder.model).float()
        self.tokenizer = copy.deepcopy(self.text_encoder.tokenizer)
        rt = setup_train_tokens(self.tokenizer, text_model, self.tokens)
        if resume_from is not None:
            self._resume_tokens(rt, resume_from)
        self.trained_ids = rt.indices.detach().cpu().clone()
        empty_ids = self._tokenize([""])[0]
        self.empty_encoded = bool(torch.isin(empty_ids, self.trained_ids).any())
        return TokenLoRAModel(stage_c, text_model)

    def _resume_tokens(self, rt: ReToken, resume_from: Path) -> None:
        f = read_lora_file(resume_from / self.weights_name)
        if f.token_indices.tolist() != rt.indices.tolist():
            raise InputError(f"{resume_from / self.weights_name} trains token rows {f.token_indices.tolist()}, this "
                             f"run selects {rt.indices.tolist()} (another train_tokens or tokenizer?)")
        with torch.no_grad():
            rt.embeddings.copy_(f.token_deltas)

    def trainable(self, module: nn.Module) -> list[tuple[str, nn.Parameter]]:
        rt = module.text_model.get_input_embeddings().parametrizations["weight"][0]
        factors = [(f"stage_c.{k}", p) for k, p in lora_parameters(module.stage_c)]
        return factors + [("retoken.embeddings", rt.embeddings)]

    def _tokenize(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.tokenizer(list(captions), truncation=True, padding="max_length",
                             max_length=self.text_encoder.max_length, return_tensors="pt")
        return tok["input_ids"], tok["attention_mask"]

    def inputs(self, batch: dict[str, Any], draws: dict[str, torch.Tensor],
               device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        drop = draws["drop"]
        caps = ["" if d else str(c) for c, d in zip(batch["captions"], drop.tolist())]
        ids, mask = self._tokenize(caps)
        encode = torch.isin(ids, self.trained_ids).any(dim=1) | (drop & self.empty_encoded)
        stored = {"clip_text", "clip_text_pooled"} <= set(batch)
        if not stored:  # every caption goes through the text model; zero placeholders for the network inputs
            encode = torch.ones_like(encode)
            n, hidden, proj = len(caps), self.text_encoder.model.config.hidden_size, \
                self.text_encoder.model.config.projection_dim
            batch = {**batch, "clip_text": torch.zeros(n, ids.shape[1], hidden),
                     "clip_text_pooled": torch.zeros(n, 1, proj)}
        x0, cond = super().inputs(batch, draws, device)
        return x0, {**cond, "input_ids": ids.to(device), "attention_mask": mask.to(device), "encode": encode.to(device)}

    def checkpoint_weights(self, module: nn.Module, full_state: Callable[[], dict[str, torch.Tensor]]
                           ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return lora_file_tensors(module.stage_c, self.cfg.lora_targets, text_model=module.text_model,
                                 tokens=self.tokens)

    def record(self) -> dict[str, Any]:
        return {**super().record(), "train_tokens": [t.to_list() for t in self.tokens],
                "trained_token_ids": self.trained_ids.tolist()}

    def preview(self, module: nn.Module, data: TrainData, device: torch.device, autocast: Callable):
        """The Stage C previews, with the preview captions embedded by the partly trained text encoder."""
        return super().preview(module.stage_c, _EmbeddedCaptions(data, self, module), device, autocast)


class _EmbeddedCaptions:
    """A TrainData view whose batches carry ``clip_text`` / ``clip_text_pooled`` of their captions as the
    training module's (partly trained) text encoder embeds them (for previews)."""

    def __init__(self, data: TrainData, task: TokenLoRATask, module: TokenLoRAModel):
        self.data, self.task, self.module = data, task, module
        self.groups, self.empty = data.groups, data.empty
        self.fields = set(data.fields) | {"clip_text", "clip_text_pooled"}
        self.field_shapes = getattr(data, "field_shapes", {})

    def read(self, group: str, indices) -> dict[str, Any]:
        batch = self.data.read(group, indices)
        ids, mask = self.task._tokenize([str(c) for c in batch["captions"]])
        dev = next(self.module.text_model.parameters()).device
        with torch.no_grad():
            t, p = self.module.embed(ids.to(dev), mask.to(dev))
        return {**batch, "clip_text": t, "clip_text_pooled": p}
