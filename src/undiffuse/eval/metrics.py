"""How close generated images are to real ones, measured in a feature space.

Each metric compares two sets of feature vectors, one row per image:
- FID (Heusel et al. 2017): the Frechet distance between Gaussians fitted to the two sets,
  |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)).
- KID (Binkowski et al. 2018): the unbiased estimate of the squared maximum mean discrepancy with the
  kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets; unbiased, so 0 in expectation when
  the two sets come from one distribution, whatever their size.
- Precision and recall (Kynkaenniemi et al. 2019): the share of generated images inside the real
  images' manifold (a ball around each real feature reaching its k-th nearest real neighbour), and
  the share of real images inside the generated manifold.

The feature spaces: "digits", the penultimate layer of a small CNN trained on the bundled MNIST
digits (features.py, shipped with the package), and "inception", the 2048 pool features of the
Inception-v3 of FID (inception.py; its weights must be on the machine).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError

FEATURES = ("digits", "emoji", "effnet-lite0", "inception")
Array = Tensor | np.ndarray


def _as_float64(feats: Array, name: str) -> np.ndarray:
    array = feats.detach().cpu().double().numpy() if isinstance(feats, Tensor) else np.asarray(feats, np.float64)
    if array.ndim != 2 or len(array) < 2:
        raise DataError(f"{name} must be (N, D) features with N >= 2, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise DataError(f"{name} holds NaN or infinite values")
    return array


# --- FID -----------------------------------------------------------------------------------------

def frechet_distance(feats_a: Array, feats_b: Array) -> float:
    """FID between two feature sets: the Frechet distance of the Gaussians with their moments."""
    a, b = _as_float64(feats_a, "feats_a"), _as_float64(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise DataError(f"features of different widths: {a.shape[1]} and {b.shape[1]}")
    return frechet_distance_from_moments(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def frechet_distance_from_moments(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(cov_a) + tr(cov_b) - 2 tr((cov_a cov_b)^(1/2))."""
    from scipy import linalg

    mu_a, mu_b = np.atleast_1d(mu_a), np.atleast_1d(mu_b)
    cov_a, cov_b = np.atleast_2d(cov_a), np.atleast_2d(cov_b)
    root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():
        # A singular product (fewer images than features) can defeat sqrtm; a tiny ridge, as in
        # pytorch-fid, moves the eigenvalues off zero and changes the distance negligibly.
        ridge = np.eye(len(cov_a)) * 1e-6
        root = linalg.sqrtm((cov_a + ridge) @ (cov_b + ridge))
    if np.iscomplexobj(root):
        # cov_a cov_b has real non-negative eigenvalues; imaginary parts are rounding noise
        # unless they are large, which means the covariances themselves are broken.
        if not np.allclose(np.diagonal(root).imag, 0, atol=1e-3):
            raise DataError(f"FID: imaginary component {np.abs(root.imag).max():.3g} in the matrix square root")
        root = root.real
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


# --- KID -----------------------------------------------------------------------------------------

def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD^2 of samples x (m, d) and y (n, d) with k(u, v) = (u.v / d + 1)^3."""
    d = x.shape[1]
    k_xx, k_yy, k_xy = ((p @ q.T / d + 1) ** 3 for p, q in ((x, x), (y, y), (x, y)))
    m, n = len(x), len(y)
    # U-statistics: the diagonal k(x_i, x_i) is left out of the within-set means
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


def kid(feats_a: Array, feats_b: Array, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """KID: (mean, standard error) of the unbiased polynomial MMD^2 over random subsets.

    Each subset draws subset_size rows from each set without replacement (clipped to the smaller
    set); the standard error is the spread (std) of the subset estimates, the `kid_std` that
    torch-fidelity and torchmetrics report.
    """
    a, b = _as_float64(feats_a, "feats_a"), _as_float64(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise DataError(f"features of different widths: {a.shape[1]} and {b.shape[1]}")
    if subsets < 1 or subset_size < 2:
        raise DataError(f"KID needs subsets >= 1 and subset_size >= 2, got {subsets} and {subset_size}")
    m = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    values = [polynomial_mmd2(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)])
              for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))


# --- precision and recall ------------------------------------------------------------------------

def knn_radii(feats: Tensor, k: int, chunk: int = 1024) -> Tensor:
    """The distance from each row to its k-th nearest other row."""
    radii = []
    for rows in feats.split(chunk):
        # the k+1 smallest distances include the row itself at distance 0
        radii.append(torch.cdist(rows, feats).topk(k + 1, largest=False).values[:, -1])
    return torch.cat(radii)


def _inside(points: Tensor, centres: Tensor, radii: Tensor, chunk: int = 1024) -> Tensor:
    """For each point: does it lie in some ball (centres[j], radii[j])?"""
    return torch.cat([(torch.cdist(rows, centres) <= radii).any(1) for rows in points.split(chunk)])


def precision_recall(real_feats: Array, fake_feats: Array, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaenniemi et al. 2019) with k-nearest-neighbour manifolds."""
    real = torch.from_numpy(_as_float64(real_feats, "real_feats"))
    fake = torch.from_numpy(_as_float64(fake_feats, "fake_feats"))
    if real.shape[1] != fake.shape[1]:
        raise DataError(f"features of different widths: {real.shape[1]} and {fake.shape[1]}")
    if not 1 <= k < min(len(real), len(fake)):
        raise DataError(f"k must lie in [1, {min(len(real), len(fake)) - 1}] for these sets, got {k}")
    precision = _inside(fake, real, knn_radii(real, k)).double().mean().item()
    recall = _inside(real, fake, knn_radii(fake, k)).double().mean().item()
    return precision, recall


# --- feature extractors --------------------------------------------------------------------------

def feature_extractor(name: str = "digits", weights: str | Path | None = None, device: str | torch.device = "cpu",
                      batch_size: int = 250) -> Callable[[Tensor], Tensor]:
    """A function from images (B, C, H, W) in [-1, 1] to features (B, D) float64 on the CPU.

    "digits": DigitNet's 128 penultimate features (weights: the shipped file unless given);
    "emoji": EmojiNet's 256 penultimate features, likewise;
    "effnet-lite0": EfficientNet-Lite0's 1280 pooled ImageNet features (efficientnet.py; the `colour` extra);
    "inception": Inception-v3's 2048 pool features as in FID (weights: a path or the torch hub cache).
    """
    if name == "digits":
        from .features import as_digit_input, load_digit_net

        net, prepare = load_digit_net(weights, device), as_digit_input
        embed = net.embed
    elif name == "emoji":
        from .features import as_emoji_input, load_emoji_net

        net, prepare = load_emoji_net(weights, device), as_emoji_input
        embed = net.embed
    elif name == "effnet-lite0":
        from .efficientnet import as_efficientnet_input, load_efficientnet

        net, prepare = load_efficientnet(weights, device), as_efficientnet_input
        embed = net.features
    elif name == "inception":
        from .inception import as_inception_input, load_inception

        net, prepare = load_inception(weights, device), as_inception_input
        embed = net.pool_features
    else:
        raise DataError(f"unknown features {name!r}; choose one of {', '.join(FEATURES)}")

    def extract(images: Tensor) -> Tensor:
        if images.ndim != 4:
            raise DataError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        out = []
        with torch.inference_mode():
            for batch in images.split(batch_size):
                out.append(embed(prepare(batch.to(device))).double().cpu())
        return torch.cat(out) if out else torch.empty(0, 0, dtype=torch.float64)

    return extract


def score_features(real_feats: Array, fake_feats: Array, k: int = 3) -> dict:
    """FID, KID (mean and std), precision and recall of fake against real features."""
    kid_mean, kid_std = kid(real_feats, fake_feats)
    precision, recall = precision_recall(real_feats, fake_feats, k)
    return {"fid": frechet_distance(real_feats, fake_feats), "kid": kid_mean, "kid_std": kid_std,
            "precision": precision, "recall": recall, "n_real": len(real_feats), "n_fake": len(fake_feats)}


def score(real: Tensor, fake: Tensor, features: str = "digits", weights: str | Path | None = None,
          k: int = 3, device: str | torch.device = "cpu") -> dict:
    """FID, KID (mean and std), precision and recall of `fake` against `real`, images in [-1, 1]."""
    extract = feature_extractor(features, weights, device)
    return {**score_features(extract(real), extract(fake), k), "features": features}
