"""First-order samplers: DDPM's ancestral steps and DDIM (Ho et al. 2020; Song et al. 2021)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..denoiser import EpsFn
from ..grids import timesteps
from ..noise import Generator, randn
from ..schedule import NoiseSchedule, _take
from .common import Callback, _levels, _pairs, _predict, _report


@torch.no_grad()
def ddpm(eps_fn: EpsFn, schedule: NoiseSchedule, x: Tensor, *, add_noise: bool = True,
         clip_denoised: bool = False, generator: Generator = None, callback: Callback = None) -> Tensor:
    """Ancestral sampling, Ho et al. 2020 alg. 2: x_{t-1} ~ N(mu(x_t, x0_hat), beta_tilde_t).

    add_noise=False drops the sigma_t * z term: every step moves to the posterior mean, and the
    samples collapse toward blurry averages of the data (kept for teaching why the noise matters).
    """
    for i, t in enumerate(range(schedule.T - 1, -1, -1)):
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        _, x0 = _predict(eps_fn, schedule, x, t, clip_denoised)
        mean = schedule.posterior_mean(x0, x, t_batch)
        if add_noise and t > 0:
            std = _take(schedule.posterior_variance, t_batch, x).sqrt()
            x = mean + std * randn(x.shape, generator, x.device, x.dtype)
        else:
            x = mean
        _report(callback, i, t, x, x0)
    return x


@torch.no_grad()
def ddim(eps_fn: EpsFn, schedule: NoiseSchedule, x: Tensor, *, steps: int = 20, eta: float = 0.0,
         spacing: str = "trailing", clip_denoised: bool = False, generator: Generator = None,
         callback: Callback = None) -> Tensor:
    """Song et al. 2021, eq. 12, over explicit (t, t_next) pairs. eta=0: deterministic; eta=1 with all
    T steps: the same marginals as DDPM."""
    for i, (t, t_next) in enumerate(_pairs(timesteps(schedule.T, steps, spacing, schedule))):
        eps, x0 = _predict(eps_fn, schedule, x, t, clip_denoised)
        x = ddim_step(schedule, x0, eps, t, t_next, eta, generator)
        _report(callback, i, t, x, x0)
    return x


def ddim_step(schedule: NoiseSchedule, x0: Tensor, eps: Tensor, t: int, t_next: int, eta: float,
              generator: Generator = None) -> Tensor:
    """One step of Song et al. 2021, eq. 12, from step t to t_next < t (-1: the clean image), given
    the predictions at t. eta = 1 samples the posterior q(x_t_next | x_t, x0): DDPM's ancestral step."""
    ab, ab_next = _levels(schedule, t)[0] ** 2, _levels(schedule, t_next)[0] ** 2
    sigma = eta * ((1 - ab_next) / (1 - ab) * (1 - ab / ab_next)) ** 0.5
    x = ab_next ** 0.5 * x0 + (1 - ab_next - sigma ** 2) ** 0.5 * eps
    if sigma > 0:
        x = x + sigma * randn(x.shape, generator, x.device, x.dtype)
    return x


@torch.no_grad()
def ddim_invert(eps_fn: EpsFn, schedule: NoiseSchedule, x0: Tensor, *, steps: int = 50,
                spacing: str = "trailing", callback: Callback = None) -> Tensor:
    """DDIM run upward: the noise x_{T-1} that `ddim(..., steps, spacing)` maps back to about x0.

    Each step from t to the noisier t_next reuses the prediction at t_next from the current, less
    noisy x (the only one at hand), so the round trip is exact only as the steps shrink.
    """
    ts = timesteps(schedule.T, steps, spacing, schedule)[::-1]
    x = x0
    for i, (t, t_next) in enumerate(zip([-1] + ts[:-1], ts)):
        t_batch = torch.full((x.shape[0],), t_next, device=x.device, dtype=torch.long)
        eps = eps_fn(x, t_batch)
        a, s = _levels(schedule, t)
        a_next, s_next = _levels(schedule, t_next)
        x = a_next * (x - s * eps) / a + s_next * eps
        _report(callback, i, t_next, x, (x - s_next * eps) / a_next)
    return x
