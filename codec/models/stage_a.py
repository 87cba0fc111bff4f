"""Stage A: the f4 VQGAN between RGB images and 4-channel latents (official layout and numerics).

``encode``: images (B, 3, H, W), roughly in [0, 1], H and W multiples of 4 -> latents (B, 4, H/4, W/4)
divided by ``scale_factor``; ``decode`` multiplies by ``scale_factor`` and returns (B, 3, H, W).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cascadekit.codec.models.config import ModelConfig
from cascadekit.codec.models.presets import infer_preset_of


class VectorQuantize(nn.Module):
    """Nearest-codebook quantiser with a straight-through estimator (torchtools ``VectorQuantize``).

    The only state is ``codebook.weight`` (k, embedding_size). ``forward(x, dim=1)`` returns
    ``(quantized, (vq_loss, commit_loss), indices)``: quantized has x's shape; both losses are the mean
    squared distance between inputs and their codes (vq_loss trains the codebook, commit_loss the
    encoder); indices have x's shape without ``dim``.
    """

    def __init__(self, embedding_size: int, k: int):
        super().__init__()
        self.codebook = nn.Embedding(k, embedding_size)
        nn.init.uniform_(self.codebook.weight, -1.0 / k, 1.0 / k)

    @staticmethod
    def nearest(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """z (N, D), codebook (K, D) -> (N,) index of the nearest code (first one on ties)."""
        with torch.no_grad():
            dist = torch.addmm(
                codebook.pow(2).sum(dim=1) + z.pow(2).sum(dim=1, keepdim=True), z, codebook.t(), alpha=-2.0, beta=1.0
            )  # (N, K) squared distances
            return dist.min(dim=1).indices

    def idx2vq(self, idx: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Indices (...) -> code vectors (..., D), with the code axis moved to ``dim``."""
        q = self.codebook(idx)
        return q.movedim(-1, dim) if dim != -1 else q

    def forward(self, x: torch.Tensor, get_losses: bool = True, dim: int = -1):
        """x (..., D) with the code axis at ``dim`` -> ``(quantized like x, (vq_loss, commit_loss), indices (...))``.

        ``quantized`` has exactly the nearest codes' values, with a straight-through gradient to ``x``; the two
        losses are scalar MSEs (None when ``get_losses`` is False); ``indices`` has x's shape without ``dim``.
        """
        if dim != -1:
            x = x.movedim(dim, -1)
        z = x.reshape(-1, x.size(-1))  # (N, D)
        codebook = self.codebook.weight
        indices = self.nearest(z.detach(), codebook.detach())  # (N,)
        z_q = torch.index_select(codebook, 0, indices)  # (N, D), gradient flows to the codebook
        vq_loss = commit_loss = None
        if get_losses:
            vq_loss = (z_q - z.detach()).pow(2).mean()
            commit_loss = (z - z_q.detach()).pow(2).mean()
        quantized = z_q.detach() + (z - z.detach())  # straight-through: exactly z_q's values, gradient to z
        quantized = quantized.view(x.shape)
        if dim != -1:
            quantized = quantized.movedim(-1, dim)
        return quantized, (vq_loss, commit_loss), indices.view(x.shape[:-1])


class StageAResBlock(nn.Module):
    """Stage A ResBlock: gated LayerNorm -> replicate-padded depthwise conv and channelwise MLP (``gammas``)."""

    def __init__(self, c: int, c_hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(c, elementwise_affine=False, eps=1e-6)
        self.depthwise = nn.Sequential(nn.ReplicationPad2d(1), nn.Conv2d(c, c, kernel_size=3, groups=c))
        self.norm2 = nn.LayerNorm(c, elementwise_affine=False, eps=1e-6)
        self.channelwise = nn.Sequential(nn.Linear(c, c_hidden), nn.GELU(), nn.Linear(c_hidden, c))
        self.gammas = nn.Parameter(torch.zeros(6))
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B,c,H,W) -> (B,c,H,W)
        g = self.gammas
        h = self.norm1(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) * (1 + g[0]) + g[1]
        x = x + self.depthwise(h) * g[2]
        h = self.norm2(x.permute(0, 2, 3, 1)) * (1 + g[3]) + g[4]  # (B,H,W,c)
        return x + self.channelwise(h).permute(0, 3, 1, 2) * g[5]


@dataclass
class StageAConfig(ModelConfig):
    """The official ``StageA`` constructor arguments. Presets: ``official`` and ``tiny``."""

    levels: int = 2
    bottleneck_blocks: int = 12
    c_hidden: int = 384
    c_latent: int = 4
    codebook_size: int = 8192
    scale_factor: float = 0.43

    PRESETS = {
        "official": {},
        "tiny": dict(bottleneck_blocks=2, c_hidden=32, codebook_size=64),
    }


class StageA(nn.Module):
    """Official Stable Cascade Stage A (VQGAN, 18.4M parameters with the official config)."""

    def __init__(self, levels=2, bottleneck_blocks=12, c_hidden=384, c_latent=4, codebook_size=8192,
                 scale_factor=0.43):
        super().__init__()
        self.c_latent = c_latent
        self.scale_factor = scale_factor
        self.codebook_size = codebook_size
        c_levels = [c_hidden // (2**i) for i in reversed(range(levels))]

        self.in_block = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(3 * 4, c_levels[0], kernel_size=1))
        down = []
        for i in range(levels):
            if i > 0:
                down.append(nn.Conv2d(c_levels[i - 1], c_levels[i], kernel_size=4, stride=2, padding=1))
            down.append(StageAResBlock(c_levels[i], c_levels[i] * 4))
        down.append(nn.Sequential(nn.Conv2d(c_levels[-1], c_latent, kernel_size=1, bias=False), nn.BatchNorm2d(c_latent)))
        self.down_blocks = nn.Sequential(*down)

        self.vquantizer = VectorQuantize(c_latent, k=codebook_size)

        up = [nn.Sequential(nn.Conv2d(c_latent, c_levels[-1], kernel_size=1))]
        for i in range(levels):
            for _ in range(bottleneck_blocks if i == 0 else 1):
                up.append(StageAResBlock(c_levels[levels - 1 - i], c_levels[levels - 1 - i] * 4))
            if i < levels - 1:
                up.append(nn.ConvTranspose2d(c_levels[levels - 1 - i], c_levels[levels - 2 - i], kernel_size=4,
                                             stride=2, padding=1))
        self.up_blocks = nn.Sequential(*up)
        self.out_block = nn.Sequential(nn.Conv2d(c_levels[0], 3 * 4, kernel_size=1), nn.PixelShuffle(2))

    @classmethod
    def from_config(cls, cfg: StageAConfig) -> "StageA":
        return cls(**cfg.kwargs())

    def encode(self, x: torch.Tensor, quantize: bool = False):
        """images (B,3,H,W) -> official 4-tuple.

        quantize=True: ``(quantized/scale, latents/scale, indices (B,H/4,W/4), vq_loss + 0.25*commit_loss)``;
        quantize=False: ``(latents/scale, None, None, None)``.
        """
        x = self.down_blocks(self.in_block(x))  # (B, c_latent, H/4, W/4)
        if quantize:
            qe, (vq_loss, commit_loss), indices = self.vquantizer(x, dim=1)
            return qe / self.scale_factor, x / self.scale_factor, indices, vq_loss + commit_loss * 0.25
        return x / self.scale_factor, None, None, None

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """latents (B, c_latent, h, w) (already divided by scale_factor) -> images (B, 3, 4h, 4w). Never quantizes."""
        x = self.up_blocks(x * self.scale_factor)
        return self.out_block(x)

    def forward(self, x: torch.Tensor, quantize: bool = False):
        """Reconstruct: returns ``(decoded (B,3,H,W), vq_loss or None)``."""
        qe, _, _, vq_loss = self.encode(x, quantize)
        return self.decode(qe), vq_loss


def infer_preset(state_dict) -> StageAConfig:
    """Recognise an official-layout Stage A state dict as ``official`` or ``tiny`` (else WeightsError)."""
    return infer_preset_of(StageA, StageAConfig, state_dict, "Stage A")
