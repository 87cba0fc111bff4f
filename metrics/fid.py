"""Fréchet Inception Distance: torch-fidelity's Inception-v3, streaming float64 statistics, .npz stats files.

Features are the 2048-d pool features of torch-fidelity's `FeatureExtractorInceptionV3` (the TF 2015-12-05
graph ported to PyTorch, the network torchmetrics' FID also uses). Resize trap handled: images go in as uint8
0..255 at any size and the extractor resizes them to 299×299 with its own TF1-compatible bilinear resize (no
antialias), as torch-fidelity and the original TF code do; torchmetrics' antialiased default differs.

Float images in [0,1] are quantised with round(x·255) (what saving them as 8-bit PNG does), so FID of tensors
equals FID of the same images written to disk.
"""
from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import BadWeightsError, MetricInputError
from .images import iter_folder, pil_to_tensor, read_file_bytes, read_image
from .weights import INCEPTION, find_weights, load_state

FEATURE_DIM = 2048
FEATURE_NAME = "torch-fidelity inception-v3-compat pool3 (2048)"
STATS_MAX_BYTES = 256 * 1024 * 1024  # most bytes read from one .npz of statistics (a 2048-D float64 sigma: 34 MB)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) float in [0,1] -> uint8 0..255 by rounding (as 8-bit PNG export does); uint8 passes through."""
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise MetricInputError(f"FID: images must be float in [0,1] or uint8, got {images.dtype}")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-4 or hi > 1 + 1e-4:
        raise MetricInputError(f"FID: float images must be in [0,1], got values in [{lo:.4g}, {hi:.4g}]")
    return (images.float() * 255).round_().clamp_(0, 255).to(torch.uint8)


class InceptionFeatures(nn.Module):
    """torch-fidelity Inception-v3 pool features, weights from `weights_dir` or torch's hub cache, never downloaded.

    forward: (B,3,H,W) float in [0,1] or uint8, any H,W -> (B,2048) float64.
    """

    def __init__(self, *, weights_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        path = find_weights(INCEPTION, weights_dir)
        state = load_state(path)  # weights_only=True
        # torch-fidelity reads its weights with a plain torch.load; hand it an in-memory copy of the tensors we
        # already read safely, so no pickled object from disk is ever executed.
        buf = io.BytesIO()
        torch.save(state, buf)
        buf.seek(0)
        try:
            net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=buf)
        except RuntimeError as e:  # load_state_dict(strict=True) key/shape mismatch
            raise BadWeightsError(f"weight file {path} does not fit torch-fidelity's Inception-v3: {e}") from e
        self.net = net.to(device)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise MetricInputError(f"FID: images must be (B,3,H,W), got {tuple(images.shape)}")
        (feats,) = self.net(to_uint8(images).to(self.device))
        return feats.double().cpu()


class FeatureStats:
    """Streaming mean and covariance of feature vectors in float64, in O(D²) memory for any number of images.

    Rows are buffered (at most `flush_rows`, 4 MiB at D=2048) and merged into the running mean and centred
    co-moment matrix with Chan et al.'s pairwise update, so the O(D²) merge is paid once per `flush_rows` rows,
    not once per small batch. The result equals np.mean/np.cov over all features at once (up to float64
    rounding), whatever the batching.
    """

    def __init__(self, dim: int = FEATURE_DIM, flush_rows: int = 256):
        self.dim = dim
        self.flush_rows = max(1, int(flush_rows))
        self._n = 0
        self._mean = np.zeros(dim, np.float64)
        self._comoment = np.zeros((dim, dim), np.float64)  # sum of (x - mean)(x - mean)^T
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0

    def update(self, features: torch.Tensor | np.ndarray) -> None:
        """Add a batch of features (N,D)."""
        x = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) else np.asarray(
            features, np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise MetricInputError(f"FID: features must be (N,{self.dim}), got {x.shape}")
        if x.shape[0] == 0:
            return
        self._pending.append(np.array(x, np.float64, copy=True))
        self._pending_rows += x.shape[0]
        if self._pending_rows >= self.flush_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        x = np.concatenate(self._pending)
        self._pending, self._pending_rows = [], 0
        nb = x.shape[0]
        mb = x.mean(axis=0)
        n = self._n + nb
        delta = mb - self._mean
        # co-moment of the new rows about their mean, plus the between-means term, in one matrix product
        y = np.concatenate([x - mb, np.sqrt(self._n * nb / n) * delta[None]])
        self._comoment += y.T @ y
        self._mean += delta * (nb / n)
        self._n = n

    @property
    def n(self) -> int:
        """Feature rows seen so far."""
        return self._n + self._pending_rows

    @property
    def mean(self) -> np.ndarray:
        """Running mean, (D,) float64 (the internal buffer; :attr:`mu` is a copy)."""
        self._flush()
        return self._mean

    @property
    def comoment(self) -> np.ndarray:
        """Sum of outer products of the centred rows, (D, D) float64 (the internal buffer)."""
        self._flush()
        return self._comoment

    @property
    def mu(self) -> np.ndarray:
        """Mean of the features, (D,) float64 (a copy)."""
        return self.mean.copy()

    @property
    def sigma(self) -> np.ndarray:
        """Unbiased covariance (N-1 denominator, as np.cov); needs at least 2 samples."""
        if self.n < 2:
            raise MetricInputError(f"FID needs at least 2 images per set, got {self.n}")
        return self.comoment / (self.n - 1)

    def save(self, path: str | os.PathLike) -> Path:
        """Write `mu`, `sigma` (pytorch-fid compatible keys), `n` and the feature name to an .npz file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            self.write(f)
        return path

    def write(self, f) -> None:
        """Write the .npz of :meth:`save` to an open binary file `f` (e.g. for an atomic write)."""
        np.savez(f, mu=self.mu, sigma=self.sigma, n=np.int64(self.n), features=np.str_(FEATURE_NAME))


def save_stats(stats: FeatureStats, path: str | os.PathLike) -> Path:
    """Save reference statistics to `path` (.npz) so a corpus is featurised once."""
    return stats.save(path)


def load_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, int | None]:
    """Read (mu (D,), sigma (D,D), n or None) from an .npz written by `save_stats` or pytorch-fid."""
    path = Path(path)
    data = read_file_bytes(path, STATS_MAX_BYTES)  # a regular file within the cap: a FIFO or device is never opened
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            if "mu" not in z or "sigma" not in z:
                raise MetricInputError(f"{path}: FID statistics need arrays 'mu' and 'sigma', found {list(z.keys())}")
            mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
            n = int(z["n"]) if "n" in z else None
            feats = str(z["features"]) if "features" in z else None
    except MetricInputError:
        raise
    except Exception as e:
        raise MetricInputError(f"{path}: cannot read FID statistics ({type(e).__name__}: {e})") from e
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise MetricInputError(f"{path}: mu {mu.shape} / sigma {sigma.shape} are not (D,) / (D,D)")
    if feats is not None and feats != FEATURE_NAME:
        raise MetricInputError(f"{path}: statistics were computed with '{feats}', not '{FEATURE_NAME}'")
    return mu, sigma, n


def _psd_factor(a: np.ndarray) -> np.ndarray:
    """U (D,r) with a = U·Uᵀ for a symmetric PSD matrix `a`, by LAPACK's pivoted Cholesky (dpstrf), which stops at
    the numerical rank r; so a covariance of N < D samples costs O(D·N²) instead of O(D³)."""
    from scipy.linalg.lapack import dpstrf

    c, piv, rank, info = dpstrf(np.ascontiguousarray((a + a.T) / 2), lower=1)
    if info < 0:
        raise MetricInputError(f"FID: covariance factorisation failed (LAPACK dpstrf info={info})")
    low = np.tril(c)[:, :rank]
    u = np.empty_like(low)
    u[piv - 1] = low  # dpstrf factors Pᵀ·a·P = L·Lᵀ with P[piv[k]-1, k] = 1, so a = (P·L)(P·L)ᵀ
    return u


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):
    |mu1 - mu2|² + tr(sigma1) + tr(sigma2) - 2·tr((sigma1·sigma2)^½).

    tr((Σ1Σ2)^½) is the sum of square roots of the eigenvalues of Σ1Σ2. With Σ1 = U·Uᵀ (pivoted Cholesky, U of
    rank r) those non-zero eigenvalues are the eigenvalues of the symmetric PSD r×r matrix Uᵀ·Σ2·U, so the
    result is real by construction: no imaginary-part clean-up as with scipy.linalg.sqrtm of the non-symmetric
    product, and much faster at D=2048. Agrees with the sqrtm formula to float64 rounding (tested).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or mu1.ndim != 1 or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise MetricInputError(f"FID: statistics do not match: mu {mu1.shape} vs {mu2.shape}, "
                               f"sigma {s1.shape} vs {s2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, s1, s2)):
        raise MetricInputError("FID: statistics contain NaN or inf")
    diff = mu1 - mu2
    u = _psd_factor(s1)
    m = u.T @ ((s2 + s2.T) / 2) @ u
    ev = np.linalg.eigvalsh((m + m.T) / 2) if m.size else np.zeros(0)
    tr_covmean = float(np.sqrt(np.clip(ev, 0, None)).sum())
    # a distance is >= 0: identical statistics give a float64 rounding residue of either sign (-2e-10)
    return max(0.0, float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean))


def batches_by_size(items: Iterable[tuple[str, torch.Tensor]], batch_size: int
                    ) -> Iterator[tuple[list[str], torch.Tensor]]:
    """Group consecutive (key, (3,H,W) tensor) items into (keys, (B,3,H,W)) batches of one size, B <= batch_size."""
    keys, tensors = [], []
    for key, t in items:
        if tensors and (t.shape != tensors[0].shape or len(tensors) == batch_size):
            yield keys, torch.stack(tensors)
            keys, tensors = [], []
        keys.append(key)
        tensors.append(t)
    if tensors:
        yield keys, torch.stack(tensors)


def folder_stats(folder: str | os.PathLike, extractor: InceptionFeatures, *, batch_size: int = 16,
                 skipped: list[tuple[str, str]] | None = None, progress: bool = False) -> FeatureStats:
    """Inception statistics of every readable image under `folder`; unreadable files are appended to `skipped`
    as (path, reason) (or raise if `skipped` is None)."""
    def readable():
        for key, path in iter_folder(folder):
            try:
                img, _ = read_image(path)
            except MetricInputError as e:
                if skipped is None:
                    raise
                skipped.append((str(path), str(e)))
                continue
            yield key, pil_to_tensor(img)

    stats = FeatureStats()
    bar = _progress(progress, f"FID features {folder}")
    for _, batch in batches_by_size(readable(), batch_size):
        stats.update(extractor(batch))
        bar.update(batch.shape[0])
    bar.close()
    return stats


def check_stats_source(source: str | os.PathLike, name: str = "input") -> None:
    """Refuse (MetricInputError naming ``name``) anything but an image folder or an ``.npz`` statistics file."""
    p = Path(source)
    if not (p.is_dir() or (p.is_file() and p.suffix == ".npz")):
        raise MetricInputError(f"{name} ({p}) must be a folder of images or an .npz file of saved FID statistics")


def stats_of(source: str | os.PathLike, extractor: InceptionFeatures, **kw) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of an image folder, or read from an .npz statistics file."""
    p = Path(source)
    check_stats_source(p)
    if p.suffix == ".npz" and p.is_file():
        mu, sigma, _ = load_stats(p)
        return mu, sigma
    s = checked_folder_stats(p, extractor, **kw)
    return s.mu, s.sigma


def checked_folder_stats(folder: str | os.PathLike, extractor: InceptionFeatures, **kw) -> FeatureStats:
    """:func:`folder_stats`, refusing (MetricInputError naming the folder) fewer than 2 readable images."""
    s = folder_stats(folder, extractor, **kw)
    if s.n < 2:
        raise MetricInputError(f"{folder}: FID needs at least 2 images per set, found {s.n} readable image(s)")
    return s


def fid_folders(a: str | os.PathLike, b: str | os.PathLike, *, weights_dir: str | os.PathLike | None = None,
                device: str | torch.device = "cpu", batch_size: int = 16,
                skipped: list[tuple[str, str]] | None = None, progress: bool = False) -> float:
    """FID between two image folders (either may instead be an .npz of saved statistics). The sets may differ
    in size and image size; each needs at least 2 readable images."""
    extractor = None
    if not all(Path(x).is_file() and Path(x).suffix == ".npz" for x in (a, b)):
        extractor = InceptionFeatures(weights_dir=weights_dir, device=device)
    mu1, s1 = stats_of(a, extractor, batch_size=batch_size, skipped=skipped, progress=progress)
    mu2, s2 = stats_of(b, extractor, batch_size=batch_size, skipped=skipped, progress=progress)
    return frechet_distance(mu1, s1, mu2, s2)


def _progress(enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(desc=desc, unit="img", disable=not enabled)


__all__ = ["InceptionFeatures", "FeatureStats", "frechet_distance", "save_stats", "load_stats", "fid_folders",
           "folder_stats", "to_uint8", "batches_by_size", "check_stats_source",
           "checked_folder_stats"]
