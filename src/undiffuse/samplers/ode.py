"""The probability-flow ODE in z = x_t / a = x0 + sigma eps, where dz/dsigma = eps (Karras et al. 2022): Euler, its ancestral variant, Heun."""
from __future__ import annotations

import torch
from torch import Tensor

from ..guidance import Denoise
from ..noise import Generator, randn
from ..schedule import NoiseSchedule
from .common import Callback, Step, predict, levels, pairs, walk

# Karras et al. 2022's sigma_max for data in [-1, 1] (table 1, "EDM"): at higher noise the data's
# spread is lost in the noise, E[x0 | z] is the data mean, and eps is constant along the flow.
SIGMA_MAX = 80.0


@torch.no_grad()
def euler(denoise: Denoise, schedule: NoiseSchedule, x: Tensor, timesteps: list[int], *,
          clip_denoised: bool = False, generator: Generator = None, callback: Callback = None) -> Tensor:
    """Euler's method on the probability-flow ODE, written for z = x_t / a = x0 + sigma eps, where it
    reads dz/dsigma = eps (Karras et al. 2022, eq. 4). In exact arithmetic this is DDIM with eta=0."""
    return euler_ancestral(denoise, schedule, x, timesteps, eta=0.0, clip_denoised=clip_denoised,
                           generator=generator, callback=callback)


@torch.no_grad()
def euler_ancestral(denoise: Denoise, schedule: NoiseSchedule, x: Tensor, timesteps: list[int], *,
                    eta: float = 1.0, clip_denoised: bool = False, generator: Generator = None,
                    callback: Callback = None) -> Tensor:
    """Euler to a noise level sigma_down below the next one, then fresh noise of std sigma_up back up
    to it: sigma_down^2 + sigma_up^2 = sigma_next^2, with sigma_up chosen (at eta = 1) so that the
    step has the variance of the true reverse process, as DDPM's posterior has."""
    return walk(denoise, schedule, x, pairs(timesteps), _euler_step(schedule, eta, generator),
                clip_denoised=clip_denoised, callback=callback)


def _euler_step(schedule: NoiseSchedule, eta: float, generator: Generator) -> Step:
    def step(x: Tensor, eps: Tensor, x0: Tensor, t: int, t_next: int) -> Tensor:
        a, s = levels(schedule, t)
        a_next, s_next = levels(schedule, t_next)
        sigma, sigma_next = s / a, s_next / a_next
        sigma_up = eta * min(sigma_next, (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2)) ** 0.5 / sigma)
        sigma_down = (sigma_next ** 2 - sigma_up ** 2) ** 0.5
        z = x / a + (sigma_down - sigma) * eps
        if sigma_up > 0:
            z = z + sigma_up * randn(x.shape, generator, x.device, x.dtype)
        return a_next * z

    return step


@torch.no_grad()
def heun(denoise: Denoise, schedule: NoiseSchedule, x: Tensor, timesteps: list[int], *,
         clip_denoised: bool = False, generator: Generator = None, callback: Callback = None) -> Tensor:
    """Heun's method (the trapezoid rule with an Euler predictor) on dz/dsigma = eps, Karras et al.
    2022, alg. 1: two network calls a step, except the last into sigma = 0, which is an Euler step.
    A step that comes down through SIGMA_MAX takes its trapezoid over the part below it (_corrected)."""
    def step(x: Tensor, eps: Tensor, x0: Tensor, t: int, t_next: int) -> Tensor:
        a, s = levels(schedule, t)
        a_next, s_next = levels(schedule, t_next)
        sigma, sigma_next = s / a, s_next / a_next
        z = x / a + (sigma_next - sigma) * eps  # Euler's predictor
        if t_next >= 0:
            eps_next, _ = predict(denoise, schedule, a_next * z, t_next, clip_denoised)
            z = z + (sigma_next - _corrected(sigma, sigma_next)) * (eps_next - eps) / 2
        return a_next * z

    return walk(denoise, schedule, x, pairs(timesteps), step, clip_denoised=clip_denoised, callback=callback)


def _corrected(sigma: float, sigma_next: float) -> float:
    """Where the trapezoid of a step from sigma down to sigma_next starts.

    The trapezoid assumes eps varies linearly in sigma over the step. From the top of a cosine or
    sigmoid schedule (sigma ~2e4, the next level ~6 at 10 steps) it does not: eps stays constant down
    to about SIGMA_MAX and changes only near sigma_next, and the trapezoid spreads that change over a
    step 3000 times too long, sending samples to |x| ~ 20 (diffusers' HeunDiscreteScheduler does the
    same). Above SIGMA_MAX eps is constant, so Euler's slope is exact there: a step that comes down
    through SIGMA_MAX is Euler's down to it and the trapezoid's below it, as if the schedule started at
    Karras et al.'s sigma_max. Chosen over an Euler first step because it keeps the two calls a step
    that the registry counts (2 steps - 1), and the error stays Heun's below SIGMA_MAX. Steps
    that start below SIGMA_MAX, as every step of the order tests does past the first few, are Heun's.
    """
    return min(sigma, SIGMA_MAX) if sigma_next < SIGMA_MAX else sigma
