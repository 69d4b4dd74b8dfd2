"""Where a sampler steps: the descending list of integer timesteps it visits, as data.

Every sampler takes this list, so img2img starts a sampler part-way down by cutting the list, and
inpainting walks its own list with the same steps.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .errors import UsageError
from .schedule import NoiseSchedule

SPACINGS = ("trailing", "leading", "linspace", "karras")


def timesteps(T: int, steps: int, spacing: str = "trailing", schedule: NoiseSchedule | None = None) -> list[int]:
    """`steps` integer steps in [0, T), descending, for samplers that skip steps.

    trailing (Lin et al. 2023, table 2) always starts from T-1, the step the noise really belongs to;
    leading is DDIM's original choice; linspace spreads them evenly from T-1 to 0; karras (needs the
    schedule) spaces the noise levels sigma as Karras et al. 2022, eq. 5, with rho = 7.
    """
    if not 1 <= steps <= T:
        raise UsageError(f"steps must lie in [1, {T}], got {steps}")
    if spacing == "trailing":
        ts = [round(T - 1 - i * T / steps) for i in range(steps)]
    elif spacing == "leading":
        ts = [i * (T // steps) for i in range(steps)][::-1]
    elif spacing == "linspace":
        ts = torch.linspace(T - 1, 0, steps).round().long().tolist()
    elif spacing == "karras":
        if schedule is None or schedule.T != T:
            raise UsageError("karras spacing needs the schedule")
        ts = karras_timesteps(schedule, steps)
    else:
        raise UsageError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    return ts


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022, eq. 5: noise levels evenly spaced in sigma^(1/rho), from sigma_max down."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def karras_timesteps(schedule: NoiseSchedule, steps: int, rho: float = 7.0) -> list[int]:
    """The steps whose noise levels lie nearest (in log sigma) to Karras' levels.

    A discrete-time network is only trained at integer steps, so the sampler moves between those and
    uses their exact noise levels. Where Karras' levels crowd together at low noise, steps are pushed
    apart so that there are exactly `steps` distinct ones.
    """
    log_sigmas = schedule.sigmas.log()
    wanted = karras_sigmas(schedule.sigmas[0].item(), schedule.sigmas[-1].item(), steps, rho).log()
    nearest = (wanted[:, None] - log_sigmas[None]).abs().argmin(dim=1).tolist()
    ts = [0] * steps
    for i in range(steps - 1, -1, -1):  # from the low-noise end up: strictly increasing
        ts[i] = nearest[i] if i == steps - 1 else max(nearest[i], ts[i + 1] + 1)
    if ts[0] > schedule.T - 1:
        raise UsageError(f"karras spacing fits at most {schedule.T} steps")
    return ts
