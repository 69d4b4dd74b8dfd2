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
    schedule) spaces the noise levels sigma as Karras et al. 2022, eq. 5, with rho = 7. T may be less
    than the schedule's length: the grid of its first T steps, where img2img starts part-way down.
    """
    if not 1 <= steps <= T:
        raise UsageError(f"steps must lie in [1, {T}], got {steps}")
    if spacing == "trailing":
        return [round(T - 1 - i * T / steps) for i in range(steps)]
    if spacing == "leading":
        return [i * (T // steps) for i in range(steps)][::-1]
    if spacing == "linspace":
        return torch.linspace(T - 1, 0, steps).round().long().tolist()
    if spacing == "karras":
        if schedule is None or schedule.T < T:
            raise UsageError("karras spacing needs the schedule")
        return _karras_steps(schedule.sigmas[:T], steps)
    raise UsageError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022, eq. 5: noise levels evenly spaced in sigma^(1/rho), from sigma_max down."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def karras_timesteps(schedule: NoiseSchedule, steps: int, rho: float = 7.0) -> list[int]:
    """`steps` distinct descending steps from T-1 down to 0 whose noise levels lie nearest (in log
    sigma) to Karras' levels, on any schedule (see _karras_steps)."""
    if not 1 <= steps <= schedule.T:
        raise UsageError(f"steps must lie in [1, {schedule.T}], got {steps}")
    return _karras_steps(schedule.sigmas, steps, rho)


def _karras_steps(sigmas: Tensor, steps: int, rho: float = 7.0) -> list[int]:
    """A discrete-time network is trained at integer steps only, so the sampler moves between those
    and uses their exact noise levels: each of Karras' levels snaps to the nearest step in log sigma.

    The levels run from the largest finite sigma (a zero-terminal-SNR schedule may end at an infinite
    one) down to sigma_0, and the first step is T-1 whatever its sigma. Where levels crowd onto the
    same step (at low noise on every schedule; at the top of cosine and zero-SNR schedules, whose
    sigma jumps by orders of magnitude over the last steps), they are pushed apart, each to the
    nearest free step below the one before that leaves room for the rest: always `steps` steps.
    """
    T = len(sigmas)
    finite = torch.isfinite(sigmas)
    log_sigmas = torch.where(finite, sigmas.log(), torch.inf)
    wanted = karras_sigmas(sigmas[0].item(), sigmas[finite].max().item(), steps, rho).log()
    nearest = (wanted[:, None] - log_sigmas[None]).abs().argmin(dim=1).tolist()
    ts = [T - 1]
    for i in range(1, steps):  # below the step before, and high enough for the steps - 1 - i still to come
        ts.append(max(steps - 1 - i, min(nearest[i], ts[-1] - 1)))
    return ts
