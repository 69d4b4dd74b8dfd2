"""Bringing any source to one form: float [0, 1] (N, C, S, S), square, with the wanted channels,
and only then the model's [-1, 1]."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import DataError
from ..memory import require


_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's convert("L")


class Loaded(NamedTuple):
    images: Tensor  # float32 (N, C, S, S) in [0, 1], C in {1, 3}
    labels: Tensor | None
    class_names: tuple[str, ...]
    skipped: int = 0
    files: tuple[str, ...] = ()  # a folder's images kept, as posix paths relative to it, in order
    captions: tuple[str, ...] = ()  # a set's own caption of each image (the bundled emoji's names), or ()


def fit_square(images: Tensor, size: int) -> Tensor:
    """Center-crop (N, C, H, W) to its largest square, then resize that to size x size. Cropping first
    keeps the resized copy at size x size whatever the shape (a 1 x 2,000,000 strip would otherwise be
    resized to 16 x 32,000,000 before its crop)."""
    h, w = images.shape[2:]
    if h == w == size:
        return images
    n, c = images.shape[:2]
    require(f"{n:,} images of {c}x{size}x{size}", 4 * n * c * size * size, hint="choose a smaller --image-size")
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = images[:, :, top:top + side, left:left + side]
    if side == size:
        return square.contiguous()
    out = []
    for chunk in square.split(512):  # bounds the memory of the resized copy
        resized = F.interpolate(chunk, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        out.append(resized.clamp(0, 1))  # bicubic overshoots
    return torch.cat(out)


def set_channels(images: Tensor, channels: int) -> Tensor:
    """(N, C, H, W) in [0, 1] with C in {1, 3} to `channels`: repeat gray, or take the luminance."""
    if images.shape[1] == channels:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    return (images * torch.tensor(_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)


def to_model_range(images: Tensor) -> Tensor:
    """[0, 1] -> [-1, 1] float32: the one place where the model's pixel range is decided."""
    return (images.to(torch.float32) * 2 - 1).contiguous()


def check_options(image_size: int | None, channels: int | None) -> None:
    if image_size is not None and (not isinstance(image_size, int) or not 8 <= image_size <= 1024):
        raise DataError(f"image size {image_size!r} is not supported; use an integer from 8 to 1024")
    if channels is not None and channels not in (1, 3):
        raise DataError(f"channels {channels!r} is not supported; use 1 (grayscale) or 3 (RGB)")
