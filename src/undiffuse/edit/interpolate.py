"""Interpolation: walk the great circle between two seeds' noise (slerp), where Gaussian noise in high
dimension lives, and let a deterministic sampler map every point to an image."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..errors import UsageError
from ..conditions import Condition
from ..generation import LoadedRun, run_steps
from ..noise import generators, randn
from ..samplers import get, sample
from ..samplers.common import Callback
from .common import guided_setup


def slerp(a: Tensor, b: Tensor, w: float | Tensor) -> Tensor:
    """Spherical interpolation between a and b, per row (Shoemake 1985): the angle between them is
    cut in the ratio w : 1 - w. w = 0 and 1 give a and b exactly; rows of equal norm keep it."""
    flat_a, flat_b = a.flatten(1).double(), b.flatten(1).double()
    cos = (flat_a * flat_b).sum(1) / (flat_a.norm(dim=1) * flat_b.norm(dim=1))
    theta = cos.clamp(-1, 1).acos()[:, None]
    w = torch.as_tensor(w, dtype=torch.float64)
    w = w.reshape(-1, 1) if w.ndim else w  # one weight per row
    sin = theta.sin()
    near = sin.abs() < 1e-6  # (anti)parallel rows: the circle is undefined, fall back to a straight line
    ca = torch.where(near, 1 - w, ((1 - w) * theta).sin() / torch.where(near, 1.0, sin))
    cb = torch.where(near, w, (w * theta).sin() / torch.where(near, 1.0, sin))
    shape = (-1,) + (1,) * (a.ndim - 1)
    return (ca.reshape(shape) * a.double() + cb.reshape(shape) * b.double()).to(a.dtype)


def interpolate(run: LoadedRun, seeds: Sequence[int] = (0, 1), n: int = 8, *, sampler: str | None = None,
                steps: int | None = None, cond: Condition | None = None, guidance: float | None = None,
                clip_denoised: bool = True, callback: Callback = None, **ask) -> Tensor:
    """n images along the great circle from seed a's starting noise to seed b's, each through the same
    deterministic sampler (default: the run's, with its steps): the first and last are `sample`'s
    images for those seeds. What to draw:
    `cond` or `ask` as generation.generate takes it (labels or contexts: one per image, so a class may
    change along the strip; a prompt; nothing: unconditional). Returns (n, C, H, W) in [-1, 1]."""
    if len(seeds) != 2 or n < 2:
        raise UsageError(f"interpolate takes two seeds and n >= 2, got {list(seeds)} and n = {n}")
    sampler = sampler or run.sampler
    if get(sampler).stochastic:
        raise UsageError(f"{sampler} adds fresh noise at every step; interpolation needs a deterministic sampler")
    device = next(run.net.parameters()).device
    shape = (1, run.channels, run.image_size, run.image_size)
    a, b = (randn(shape, generators(1, s), device) for s in seeds)  # exactly sample_images' noise for seed s
    w = torch.linspace(0, 1, n, dtype=torch.float64)
    x = slerp(a.expand(n, *shape[1:]), b.expand(n, *shape[1:]), w)
    denoise, _ = guided_setup(run, n, 0, cond, guidance, ask, drawing={"sampler": sampler, "steps": steps})
    steps = run_steps(run, sampler, steps)
    with torch.inference_mode():
        out = sample(sampler, denoise, run.schedule.to(device), x, steps=steps, clip_denoised=clip_denoised,
                     callback=callback)
    return out.clamp(-1, 1).cpu()
