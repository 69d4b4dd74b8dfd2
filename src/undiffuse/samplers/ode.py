"""The probability-flow ODE in z = x_t / a = x0 + sigma eps, where dz/dsigma = eps (Karras et al. 2022): Euler, its ancestral variant, Heun."""
from __future__ import annotations

import torch
from torch import Tensor

from ..denoiser import EpsFn
from ..grids import timesteps
from ..noise import Generator, randn
from ..schedule import NoiseSchedule
from .common import Callback, _levels, _pairs, _predict, _report


@torch.no_grad()
def euler(eps_fn: EpsFn, schedule: NoiseSchedule, x: Tensor, *, steps: int = 20, spacing: str = "trailing",
          clip_denoised: bool = False, generator: Generator = None, callback: Callback = None) -> Tensor:
    """Euler's method on the probability-flow ODE, written for z = x_t / a = x0 + sigma eps, where it
    reads dz/dsigma = eps (Karras et al. 2022, eq. 4). In exact arithmetic this is DDIM with eta=0."""
    return euler_ancestral(eps_fn, schedule, x, steps=steps, eta=0.0, spacing=spacing,
                           clip_denoised=clip_denoised, generator=generator, callback=callback)


@torch.no_grad()
def euler_ancestral(eps_fn: EpsFn, schedule: NoiseSchedule, x: Tensor, *, steps: int = 20, eta: float = 1.0,
                    spacing: str = "trailing", clip_denoised: bool = False, generator: Generator = None,
                    callback: Callback = None) -> Tensor:
    """Euler to a noise level sigma_down below the next one, then fresh noise of std sigma_up back up
    to it: sigma_down^2 + sigma_up^2 = sigma_next^2, with sigma_up chosen (at eta = 1) so that the
    step has the variance of the true reverse process, as DDPM's posterior has."""
    for i, (t, t_next) in enumerate(_pairs(timesteps(schedule.T, steps, spacing, schedule))):
        eps, x0 = _predict(eps_fn, schedule, x, t, clip_denoised)
        a, s = _levels(schedule, t)
        a_next, s_next = _levels(schedule, t_next)
        sigma, sigma_next = s / a, s_next / a_next
        sigma_up = eta * min(sigma_next, (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2)) ** 0.5 / sigma)
        sigma_down = (sigma_next ** 2 - sigma_up ** 2) ** 0.5
        z = x / a + (sigma_down - sigma) * eps
        if sigma_up > 0:
            z = z + sigma_up * randn(x.shape, generator, x.device, x.dtype)
        x = a_next * z
        _report(callback, i, t, x, x0)
    return x


@torch.no_grad()
def heun(eps_fn: EpsFn, schedule: NoiseSchedule, x: Tensor, *, steps: int = 10, spacing: str = "trailing",
         clip_denoised: bool = False, generator: Generator = None, callback: Callback = None) -> Tensor:
    """Heun's method (the trapezoid rule with an Euler predictor) on dz/dsigma = eps, Karras et al.
    2022, alg. 1: two network calls a step, except the last into sigma = 0, which is an Euler step."""
    for i, (t, t_next) in enumerate(_pairs(timesteps(schedule.T, steps, spacing, schedule))):
        eps, x0 = _predict(eps_fn, schedule, x, t, clip_denoised)
        a, s = _levels(schedule, t)
        a_next, s_next = _levels(schedule, t_next)
        dsigma = s_next / a_next - s / a
        z = x / a + dsigma * eps
        if t_next >= 0:
            eps_next, _ = _predict(eps_fn, schedule, a_next * z, t_next, clip_denoised)
            z = x / a + dsigma * (eps + eps_next) / 2
        x = a_next * z
        _report(callback, i, t, x, x0)
    return x
