"""How a low-resolution image reaches the U-Net (SR3, Saharia et al. 2021): area-downsampled by the
factor, upsampled back to full size (bicubic) and concatenated to x_t as extra input channels; with
Gaussian conditioning augmentation (Ho et al. 2021, cascaded diffusion): the upsampled image gets noise
of std `level` (in [-1, 1] units) and the network is told the level, a random one in [0, max] in
training and a small fixed one when sampling, so that it tolerates imperfect inputs."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

TASKS = ("generate", "upscale")
DEFAULT_AUG = 0.1  # the level sampling tells the network (and adds), by default
TRAIN_AUG = 0.5  # training draws the level uniformly in [0, TRAIN_AUG]


@dataclass(frozen=True)
class LowRes:
    """The condition of a batch: the upsampled, noised low-res images (B, C, H, W) and their levels (B,)."""
    image: Tensor
    level: Tensor

    def rows(self, index, device=None) -> "LowRes":
        """The rows `index` (a slice or row numbers): a part of a Condition (condition.py)."""
        return LowRes(self.image[index].to(device), self.level[index].to(device))

    def cat(self, other: "LowRes") -> "LowRes":
        return LowRes(torch.cat([self.image, other.image]), torch.cat([self.level, other.level]))

    def against(self) -> "LowRes":
        return self  # guidance leaves the image to upscale as it is, in both branches

    @property
    def steers(self) -> bool:
        return False


def downsample(x: Tensor, factor: int) -> Tensor:
    """Area (box) downsampling by an integer factor: (B, C, H, W) -> (B, C, H/f, W/f)."""
    return F.avg_pool2d(x, factor)


def upsample(low: Tensor, factor: int) -> Tensor:
    """Bicubic upsampling back to full size, clamped to [-1, 1]."""
    return F.interpolate(low, scale_factor=factor, mode="bicubic", align_corners=False).clamp(-1, 1)


def nearest(low: Tensor, factor: int) -> Tensor:
    return F.interpolate(low, scale_factor=factor, mode="nearest")


def condition(low: Tensor, factor: int, level: Tensor, noise: Tensor) -> LowRes:
    """The LowRes of low-res images (B, C, h, w): upsampled, plus `level` (B,) times `noise` (B, C, H, W)."""
    up = upsample(low, factor)
    return LowRes(up + level.to(up)[:, None, None, None] * noise.to(up), level.float())


def training_condition(x0: Tensor, factor: int, generator: torch.Generator, max_level: float = TRAIN_AUG) -> LowRes:
    """The condition of a training batch x0 (B, C, H, W): its downsampled self, at random levels."""
    level = torch.rand(x0.shape[0], generator=generator) * max_level
    noise = torch.randn(x0.shape, generator=generator)
    return condition(downsample(x0, factor), factor, level, noise)
