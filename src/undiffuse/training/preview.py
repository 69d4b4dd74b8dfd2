"""The grids a run draws as it trains, from its EMA weights: one image per class, the first training
captions of a text run, an upscale run's first training images upscaled, or 8 unconditional."""
from __future__ import annotations

from pathlib import Path

import torch

from ..conditions.lowres import DEFAULT_AUG, LowRes, condition, downsample
from ..generate import DEFAULT_GUIDANCE, sample_images
from ..viz import save_grid
from .setup import Setup


def write_grid(setup: Setup, ema: torch.nn.Module, run: Path, step: int) -> Path:
    """RUN/samples/stepN.png."""
    labels = list(range(setup.context_dim)) if setup.context_dim else None
    n = len(labels) if labels else 8
    text, captions = None, setup.captions
    if captions is not None and len(captions) > 1:  # the first training captions, one image each
        rows = torch.arange(1, min(9, len(captions)))
        text, n = captions.batch(rows), len(rows)
    images = sample_images(ema, setup.schedule, setup.cfg.diffusion.prediction, n, labels=labels,
                           image_size=setup.data.image_size, seed=0, text=text, low=grid_low(setup, n),
                           guidance=DEFAULT_GUIDANCE if labels or text is not None else 1.0)
    path = run / "samples" / f"step{step:07d}.png"
    path.parent.mkdir(exist_ok=True)
    save_grid(images, path, nrow=n)
    return path


def grid_low(setup: Setup, n: int) -> LowRes | None:
    """An upscale run's grid conditions: its first n training images, downsampled, at the sampling level."""
    if setup.cfg.source.task != "upscale":
        return None
    images, factor = setup.data.images[:n].float(), setup.cfg.source.factor
    generator = torch.Generator().manual_seed(0)
    low = condition(downsample(images, factor), factor, torch.full((len(images),), DEFAULT_AUG),
                    torch.randn(images.shape, generator=generator))
    return low.rows(0, n, setup.device)
