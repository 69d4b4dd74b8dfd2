"""First-order samplers: DDPM's ancestral steps and DDIM (Ho et al. 2020; Song et al. 2021)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..guidance import Denoise
from ..errors import UsageError
from ..noise import Generator, randn
from ..schedule import NoiseSchedule, take
from .common import Callback, Step, predict, report, levels, pairs, walk


@torch.no_grad()
def ddpm(denoise: Denoise, schedule: NoiseSchedule, x: Tensor, timesteps: list[int], *, add_noise: bool = True,
         clip_denoised: bool = False, generator: Generator = None, callback: Callback = None) -> Tensor:
    """Ancestral sampling, Ho et al. 2020 alg. 2: x_{t-1} ~ N(mu(x_t, x0_hat), beta_tilde_t), one
    step at a time, so `timesteps` is every step from its first down to 0.

    add_noise=False drops the sigma_t * z term: every step moves to the posterior mean, and the
    samples collapse toward blurry averages of the data (kept for teaching why the noise matters).
    """
    if list(timesteps) != list(range(len(timesteps) - 1, -1, -1)):
        raise UsageError("ddpm steps to the very next step: give it every step from its first down to 0")

    def step(x: Tensor, eps: Tensor, x0: Tensor, t: int, t_next: int) -> Tensor:
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        mean = schedule.posterior_mean(x0, x, t_batch)
        if not (add_noise and t > 0):
            return mean
        std = take(schedule.posterior_variance, t_batch, x).sqrt()
        return mean + std * randn(x.shape, generator, x.device, x.dtype)

    return walk(denoise, schedule, x, pairs(timesteps), step, clip_denoised=clip_denoised, callback=callback)


@torch.no_grad()
def ddim(denoise: Denoise, schedule: NoiseSchedule, x: Tensor, timesteps: list[int], *, eta: float = 0.0,
         clip_denoised: bool = False, generator: Generator = None, callback: Callback = None) -> Tensor:
    """Song et al. 2021, eq. 12, over the given steps. eta=0: deterministic; eta=1 with every step:
    the same marginals as DDPM."""
    return walk(denoise, schedule, x, pairs(timesteps), ddim_stepper(schedule, eta, generator),
                clip_denoised=clip_denoised, callback=callback)


def ddim_stepper(schedule: NoiseSchedule, eta: float = 0.0, generator: Generator = None) -> Step:
    """ddim_step as the Step that `walk` takes (inpainting walks its own moves with it)."""
    return lambda x, eps, x0, t, t_next: ddim_step(schedule, x0, eps, t, t_next, eta, generator)


def ddim_step(schedule: NoiseSchedule, x0: Tensor, eps: Tensor, t: int, t_next: int, eta: float,
              generator: Generator = None) -> Tensor:
    """One step of Song et al. 2021, eq. 12, from step t to t_next (-1: the clean image), given the
    predictions at t. eta = 1 samples the posterior q(x_t_next | x_t, x0): DDPM's ancestral step.
    With eta = 0 t_next may also lie above t: the deterministic step read upward (ddim_invert)."""
    ab, ab_next = levels(schedule, t)[0] ** 2, levels(schedule, t_next)[0] ** 2
    sigma = eta * ((1 - ab_next) / (1 - ab) * (1 - ab / ab_next)) ** 0.5 if eta else 0.0
    x = ab_next ** 0.5 * x0 + (1 - ab_next - sigma ** 2) ** 0.5 * eps
    if sigma > 0:
        x = x + sigma * randn(x.shape, generator, x.device, x.dtype)
    return x


@torch.no_grad()
def ddim_invert(denoise: Denoise, schedule: NoiseSchedule, x0: Tensor, timesteps: list[int], *,
                callback: Callback = None) -> Tensor:
    """DDIM run upward: the noise at timesteps[0] that `ddim(denoise, schedule, x, timesteps)` maps
    back to about x0 (timesteps descending, as ddim takes them; this walks them from the bottom up).

    Each step from t to the noisier t_next is ddim_step at eta = 0 with the prediction at t_next made
    from the current, less noisy x (the only one at hand), so the round trip is exact only as the
    steps shrink.
    """
    up = list(timesteps)[::-1]
    x = x0
    for i, (t, t_next) in enumerate(zip([-1] + up[:-1], up)):
        eps, _ = predict(denoise, schedule, x, t_next, False)
        a, s = levels(schedule, t)
        clean = (x - s * eps) / a
        x = ddim_step(schedule, clean, eps, t, t_next, 0.0)
        report(callback, i, t_next, x, clean)
    return x
