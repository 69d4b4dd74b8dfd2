"""What every sampler shares: the network's prediction at one step, the noise levels, the callback."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..denoiser import EpsFn
from ..schedule import NoiseSchedule

Callback = Callable[[dict], None] | None


def _pairs(ts: list[int]) -> list[tuple[int, int]]:
    """(t, t_next) for each step; t_next = -1 is the clean image."""
    return list(zip(ts, ts[1:] + [-1]))


def _levels(schedule: NoiseSchedule, t: int) -> tuple[float, float]:
    """(a, s) = (sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)); (1, 0) at t = -1."""
    if t < 0:
        return 1.0, 0.0
    ab = schedule.alpha_bar[t].item()
    return ab ** 0.5, (1 - ab) ** 0.5


def _predict(eps_fn: EpsFn, schedule: NoiseSchedule, x: Tensor, t: int, clip: bool) -> tuple[Tensor, Tensor]:
    """(eps, x0) at step t; clipping x0 to the data range [-1, 1] re-derives eps to match."""
    t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    eps = eps_fn(x, t_batch)
    x0 = schedule.x0_from_eps(x, t_batch, eps)
    if clip:
        x0 = x0.clamp(-1, 1)
        eps = schedule.eps_from_x0(x, t_batch, x0)
    return eps, x0


def _report(callback: Callback, i: int, t: int, x: Tensor, x0: Tensor) -> None:
    if callback is not None:
        callback({"i": i, "t": t, "x": x, "x0": x0})
