"""ZCA whitening as MTT / DD-Ranking use it (kornia ``ZCAWhitening(eps=0.1, compute_inv=True)``).

Upstream (MTT ``utils.py`` ``get_dataset``, DD-Ranking ``ddranking/utils/data.py`` ``get_dataset``): the
whole training split is stacked, ``zca.fit(images)`` is called once, and the same fitted transform is applied
to the training and the test images. Note that for CIFAR-10/100 and Tiny ImageNet both use ``ToTensor()``
only (no Normalize) when ZCA is on: the fit sees 0..1 images. What this module is fed is the caller's choice.

kornia's fit (``kornia/enhance/zca.py``, ``zca_mean``), mirrored here:
- X: the images flattened to (N, D), D = C * H * W; mu = the mean over samples;
- Sigma = (X - mu)^T (X - mu) / (N - 1) (``unbiased=True``);
- U, S from the decomposition of Sigma (kornia: SVD; here ``torch.linalg.eigh``, Sigma being symmetric,
  with eigenvalues clamped at 0, so round-off cannot make them negative);
- T = U diag(1 / sqrt(S + eps)) U^T, T_inv = U diag(sqrt(S + eps)) U^T;
- whiten: (x_flat - mu) @ T; inverse (kornia ``inverse_transform``): (y + mu T) @ T_inv = y @ T_inv + mu.

Differences, all within round-off: Sigma is accumulated in float64 over chunks of images (memory
O(D^2 + chunk * D), so 60,000 MNIST-size images fit in a few hundred MB), and decomposed in float64;
kornia does both in the images' dtype (float32). The stored mean and matrices are float32, as kornia's.
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import atomic_write
from ..cachedir import cache_root
from ..errors import RD3Error
from .tensors import safe_load

log = logging.getLogger("rd3fast")
CACHE_VERSION = 1  # bump when what a cached fit means changes

# The D x D matrices of a 64 px RGB set are 12288^2 floats (600 MB as float32, 1.2 GB in float64 while
# fitting); beyond that ZCA is neither what upstream does nor affordable.
MAX_FEATURES = 3 * 64 * 64


def _check_features(shape: tuple[int, ...]) -> int:
    d = math.prod(shape)
    if d > MAX_FEATURES:
        raise RD3Error(f"ZCA is for sets of at most 64 px (C x H x W <= 3 x 64 x 64 = {MAX_FEATURES} features): "
                       f"images of {' x '.join(map(str, shape))} would need a {d} x {d} whitening matrix")
    return d


@dataclass
class ZCA:
    """A fitted ZCA transform for images of ``image_shape`` (C, H, W)."""

    mean: torch.Tensor  # float32 (D,)
    matrix: torch.Tensor  # float32 (D, D): U diag((S + eps)^-1/2) U^T (symmetric)
    inverse_matrix: torch.Tensor  # float32 (D, D): U diag((S + eps)^1/2) U^T
    eps: float
    image_shape: tuple[int, int, int]

    @classmethod
    def fit(cls, images: torch.Tensor, eps: float = 0.1, chunk: int = 4096,
            device: torch.device | str | None = None) -> "ZCA":
        """Fit on float images (N, C, H, W), ``chunk`` images at a time, on ``device`` (default: the
        images' device)."""
        if images.dim() != 4 or not images.is_floating_point():
            raise RD3Error(f"ZCA.fit expects float N x C x H x W images, got {images.dtype} {tuple(images.shape)}")
        shape = tuple(int(s) for s in images.shape[1:])
        d = _check_features(shape)
        n = len(images)
        if n < 2:
            raise RD3Error(f"ZCA.fit needs at least 2 images for a covariance, got {n}")
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
            raise RD3Error(f"ZCA eps: expected a finite value > 0, got {eps!r}")
        if chunk < 1:
            raise ValueError(f"chunk: expected >= 1, got {chunk}")
        dev = torch.device(device) if device is not None else images.device

        def flat(i: int) -> torch.Tensor:
            return images[i:i + chunk].reshape(-1, d).to(device=dev, dtype=torch.float64)

        total = torch.zeros(d, dtype=torch.float64, device=dev)
        for i in range(0, n, chunk):
            total += flat(i).sum(dim=0)
        mean = total / n
        cov = torch.zeros(d, d, dtype=torch.float64, device=dev)
        for i in range(0, n, chunk):  # centred second pass: no cancellation from E[xx^T] - mu mu^T
            c = flat(i) - mean
            cov.addmm_(c.T, c)
        cov /= n - 1
        cov = (cov + cov.T) / 2  # exactly symmetric for eigh
        s, u = torch.linalg.eigh(cov)
        s = s.clamp_min(0) + eps
        matrix = (u * s.rsqrt()) @ u.T
        inverse = (u * s.sqrt()) @ u.T
        return cls(mean=mean.float(), matrix=matrix.float(), inverse_matrix=inverse.float(), eps=float(eps),
                   image_shape=shape)

    def to(self, device: torch.device | str) -> "ZCA":
        return ZCA(mean=self.mean.to(device), matrix=self.matrix.to(device),
                   inverse_matrix=self.inverse_matrix.to(device), eps=self.eps, image_shape=self.image_shape)

    def _flat(self, x: torch.Tensor, what: str) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != tuple(self.image_shape):
            raise RD3Error(f"ZCA {what}: fitted on images of {' x '.join(map(str, self.image_shape))} (C x H x W), "
                           f"got a batch of shape {' x '.join(map(str, x.shape))}")
        return x.reshape(len(x), -1).to(torch.float32)

    def _apply(self, x: torch.Tensor, what: str, chunk: int, fn) -> torch.Tensor:
        flat = self._flat(x, what)
        dev = flat.device
        mean, matrix, inverse = (t.to(dev) for t in (self.mean, self.matrix, self.inverse_matrix))
        out = torch.empty_like(flat)
        for i in range(0, len(flat), chunk):  # bounds the float32 temporaries
            out[i:i + chunk] = fn(flat[i:i + chunk], mean, matrix, inverse)
        return out.reshape(x.shape)

    def __call__(self, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Whitened float32 images, same shape: (x_flat - mean) @ matrix, on x's device."""
        return self._apply(x, "whitening", chunk, lambda v, m, t, _: (v - m) @ t)

    def inverse(self, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Back from whitened images: x_flat @ inverse_matrix + mean (kornia's ``inverse_transform``)."""
        return self._apply(x, "inverse", chunk, lambda v, m, _, ti: torch.addmm(m, v, ti))


def fit_pixels(images: torch.Tensor, eps: float = 0.1, device: torch.device | str | None = None,
               cache_dir: str | Path | None = None) -> ZCA:
    """ZCA of uint8 images (N, C, H, W) taken as [0, 1] pixels (ToTensor(), what MTT / DD-Ranking whiten),
    on the CPU when done. The fit (11.5 s for Fashion-MNIST's 60k images on 2 CPU cores) is cached under the
    rd3fast cache root (``cachedir``), keyed by a sha256 of the pixels themselves, their shape and eps: any
    change of the training set is a new key. A cache that cannot be read is refitted, one that cannot be
    written is skipped (logged): the cache only saves time."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise RD3Error(f"ZCA: expected uint8 N x C x H x W training images, got {images.dtype} {tuple(images.shape)}")
    _check_features(tuple(images.shape[1:]))
    h = hashlib.sha256(f"v{CACHE_VERSION}|{tuple(images.shape)}|eps={float(eps)!r}|".encode())
    h.update(images.contiguous().numpy().tobytes())
    path = cache_root(cache_dir) / "zca" / f"{h.hexdigest()[:32]}.pt"
    if path.is_file():
        try:
            saved = safe_load(path)  # the one torch loader (weights_only); a refusal lands below
            return ZCA(mean=saved["mean"], matrix=saved["matrix"], inverse_matrix=saved["inverse_matrix"],
                       eps=float(saved["eps"]), image_shape=tuple(saved["image_shape"]))
        except Exception as e:  # noqa: BLE001 - a damaged entry is refitted, never trusted
            log.warning("ZCA cache %s unreadable (%s): fitting again", path, type(e).__name__)
    zca = ZCA.fit(images.float() / 255, eps=eps, device=device).to("cpu")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp, open(tmp, "wb") as f:
            torch.save({"mean": zca.mean, "matrix": zca.matrix, "inverse_matrix": zca.inverse_matrix,
                        "eps": zca.eps, "image_shape": list(zca.image_shape)}, f)
    except (OSError, RD3Error) as e:
        log.warning("ZCA cache %s not written (%s); the next run fits again", path, e)
    return zca
