"""What every sampler shares: the denoiser's prediction at one step (with clipping), the noise levels,
the walk over (t, t_next) pairs and the callback.

A single-step sampler is a `Step` handed to `walk`; a multistep one is a Step that keeps its history
in a closure. Inpainting walks its own pairs (RePaint goes back up between runs of steps down) with
DDIM's Step and a `project` hook that puts back the known pixels after every step.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from ..guidance import Denoise
from ..schedule import NoiseSchedule

Callback = Callable[[dict], None] | None
Step = Callable[[Tensor, Tensor, Tensor, int, int], Tensor]  # (x, eps, x0, t, t_next) -> x at t_next
Project = Callable[[Tensor, int], Tensor] | None  # (x, t_next) -> x, applied after every step


def pairs(ts: list[int]) -> list[tuple[int, int]]:
    """(t, t_next) for each step of a descending list; the last t_next, -1, is the clean image."""
    return list(zip(ts, ts[1:] + [-1]))


def levels(schedule: NoiseSchedule, t: int) -> tuple[float, float]:
    """(a, s) = (sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)); (1, 0) at t = -1."""
    if t < 0:
        return 1.0, 0.0
    ab = schedule.alpha_bar[t].item()
    return ab ** 0.5, (1 - ab) ** 0.5


def predict(denoise: Denoise, schedule: NoiseSchedule, x: Tensor, t: int, clip: bool) -> tuple[Tensor, Tensor]:
    """(eps, x0) at step t; clipping x0 to the data range [-1, 1] re-derives eps to match (the one
    place that does, so every sampler clips alike)."""
    t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    eps, x0 = denoise(x, t_batch)
    if clip:
        x0 = x0.clamp(-1, 1)
        eps = schedule.eps_from_x0(x, t_batch, x0)
    return eps, x0


def report(callback: Callback, i: int, t: int, x: Tensor, x0: Tensor) -> None:
    if callback is not None:
        callback({"i": i, "t": t, "x": x, "x0": x0})


def walk(denoise: Denoise, schedule: NoiseSchedule, x: Tensor, moves: Sequence[tuple[int, int]], step: Step, *,
         clip_denoised: bool = False, callback: Callback = None, project: Project = None, first: int = 0) -> Tensor:
    """The loop of every sampler: at each (t, t_next), the prediction at t, the step to t_next, the
    projection (if any), and the callback's {"i", "t", "x", "x0"} with i counted from `first`."""
    for i, (t, t_next) in enumerate(moves, first):
        eps, x0 = predict(denoise, schedule, x, t, clip_denoised)
        x = step(x, eps, x0, t, t_next)
        if project is not None:
            x = project(x, t_next)
        report(callback, i, t, x, x0)
    return x
