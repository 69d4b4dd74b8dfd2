"""Super-resolution with an upscale run (SR3, Saharia et al. 2021): sample x given a low-resolution
image, bicubic-upsampled and concatenated to x_t, noised to a small fixed augmentation level `aug`
that the network is told (Ho et al. 2021's conditioning augmentation; training drew it at random)."""
from __future__ import annotations

import torch
from PIL import Image
from torch import Tensor

from ..conditions import Condition
from ..conditions.lowres import DEFAULT_AUG, LowRes, condition, downsample, nearest, upsample
from ..data.decode import picture_to_unit
from ..data.transforms import set_channels, to_model_range
from ..errors import DataError, UsageError
from ..generation import LoadedRun, sample_images
from ..samplers import Callback

AUG_NOISE_SEED = 2**40  # the augmentation noise of result i is seeded AUG_NOISE_SEED + seed + i


def upscale(run: LoadedRun, low_res: Tensor, n: int | None = None, *, sampler: str | None = None,
            steps: int | None = None, seed: int = 0, aug: float = DEFAULT_AUG, callback: Callback = None,
            **options) -> Tensor:
    """Upscale a batch (N, C, h, w) or one (C, h, w) image in [-1, 1] of the run's low-res size
    (image_size / factor) by the run's factor: (N * n, C, H, W) in [-1, 1], n results per image
    (each seeded seed + i, in order image by image), or (N, C, H, W) when n is None."""
    low = check_low_res(run, low_res)
    if n is not None:
        if n < 1:
            raise UsageError(f"n must be >= 1, got {n}")
        low = low.repeat_interleave(n, dim=0)
    cond = low_condition(low, run.factor, aug, seed)
    options.setdefault("precision", run.precision)
    return sample_images(run.net, run.schedule, run.prediction, len(low), image_size=run.image_size,
                         cond=Condition(low=cond),
                         sampler=sampler or run.sampler, steps=steps, seed=seed, callback=callback, **options)


def check_low_res(run: LoadedRun, low_res: Tensor) -> Tensor:
    """low_res as (N, C, h, w) float32, checked against the run (task, channels, size, range)."""
    if run.task != "upscale":
        raise UsageError("this model generates images: it does not upscale (train one with --task upscale)")
    image = low_res[None] if low_res.ndim == 3 else low_res
    side = run.image_size // run.factor
    if image.ndim != 4 or image.shape[1] != run.channels:
        raise UsageError(f"low-resolution image of shape {tuple(low_res.shape)}: this model takes (C, h, w) or "
                         f"(N, C, h, w) with C = {run.channels}")
    if tuple(image.shape[-2:]) != (side, side):
        raise UsageError(f"the low-resolution image is {image.shape[-1]}x{image.shape[-2]}; this model upscales "
                         f"{side}x{side} images to {run.image_size}x{run.image_size}")
    image = image.float()
    if not bool(torch.isfinite(image).all()) or image.min() < -1 - 1e-4 or image.max() > 1 + 1e-4:
        raise DataError("the low-resolution image must lie in [-1, 1]")
    return image.clamp(-1, 1)


def low_condition(low: Tensor, factor: int, aug: float, seed: int) -> LowRes:
    """The condition of each result: upsampled, plus noise of std `aug` from its own generator."""
    if not 0 <= aug <= 2:
        raise UsageError(f"aug must lie in [0, 2], got {aug}")
    shape = (low.shape[1], low.shape[2] * factor, low.shape[3] * factor)
    noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(AUG_NOISE_SEED + seed + i))
                         for i in range(len(low))])
    return condition(low, factor, torch.full((len(low),), float(aug)), noise)


def low_res_picture(picture: Image.Image, run: LoadedRun, exact: bool = True) -> Tensor:
    """A decoded picture as the run's low-res input, (C, h, w) in [-1, 1] with the run's channels.
    A picture of the low-res size is taken as it is. Any other is refused (exact) or read as a
    full-size image (its center square, resized to the run's image size) and area-downsampled, as
    training made its inputs: the web page upscales whatever is uploaded or drawn."""
    side = run.image_size // run.factor
    if picture.size != (side, side) and exact:
        raise UsageError(f"the image is {picture.size[0]}x{picture.size[1]}; this run upscales {side}x{side} "
                         f"images to {run.image_size}x{run.image_size}")
    size = side if picture.size == (side, side) else run.image_size
    image = to_model_range(set_channels(picture_to_unit(picture, size)[None], run.channels))
    return (image if size == side else downsample(image, run.factor))[0]


def comparison(low: Tensor, results: Tensor, factor: int) -> Tensor:
    """The tiles that show an upscale: the low-res input (nearest-upscaled) | bicubic | the results."""
    return torch.cat([nearest(low[None], factor), upsample(low[None], factor), results])
