"""Samplers: plain functions that run the reverse process.

Every sampler takes
    eps_fn(x_t, t) -> eps   the noise prediction (conditioning.denoiser builds it from a network),
    schedule                the NoiseSchedule the network was trained with,
    x                       the starting noise x_{T-1}, (B, C, H, W),
and keyword options, and returns x_0. Fresh noise comes from `generator`: None, one
torch.Generator, or a list with one generator per image (so that an image depends on its own seed
only, whatever the batch). `callback({"i", "t", "x", "x0"})` sees every step, for animations.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from .conditioning import EpsFn
from .schedule import NoiseSchedule, _take

Generator = torch.Generator | Sequence[torch.Generator] | None
Callback = Callable[[dict], None] | None
SPACINGS = ("trailing", "leading", "linspace")


def randn(shape: Sequence[int], generator: Generator = None, device="cpu", dtype=torch.float32) -> Tensor:
    """Standard normal noise; with a list of generators, row i comes from generator i alone."""
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = generator.device if generator is not None else device
        return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
    rows = [torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype) for g in generator]
    return torch.stack(rows).to(device)


def timesteps(T: int, steps: int, spacing: str = "trailing") -> list[int]:
    """`steps` integer steps in [0, T), descending, for samplers that skip steps.

    trailing (Lin et al. 2023, table 2) always starts from T-1, the step the noise really belongs to;
    leading is DDIM's original choice; linspace spreads them evenly from T-1 to 0.
    """
    if not 1 <= steps <= T:
        raise ValueError(f"steps must lie in [1, {T}], got {steps}")
    if spacing == "trailing":
        ts = [round(T - 1 - i * T / steps) for i in range(steps)]
    elif spacing == "leading":
        ts = [i * (T // steps) for i in range(steps)][::-1]
    elif spacing == "linspace":
        ts = torch.linspace(T - 1, 0, steps).round().long().tolist()
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    return ts


def _predict(eps_fn: EpsFn, schedule: NoiseSchedule, x: Tensor, t: int, clip: bool) -> tuple[Tensor, Tensor]:
    """(eps, x0) at step t; clipping x0 to the data range [-1, 1] re-derives eps to match."""
    t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    eps = eps_fn(x, t_batch)
    x0 = schedule.x0_from_eps(x, t_batch, eps)
    if clip:
        x0 = x0.clamp(-1, 1)
        eps = schedule.eps_from_x0(x, t_batch, x0)
    return eps, x0


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
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0})
    return x


@torch.no_grad()
def ddim(eps_fn: EpsFn, schedule: NoiseSchedule, x: Tensor, *, steps: int = 50, eta: float = 0.0,
         spacing: str = "trailing", clip_denoised: bool = False, generator: Generator = None,
         callback: Callback = None) -> Tensor:
    """Song et al. 2021, eq. 12, over explicit (t, t_next) pairs. eta=0: deterministic; eta=1 with all
    T steps: the same marginals as DDPM."""
    ts = timesteps(schedule.T, steps, spacing)
    alpha_bar = schedule.alpha_bar
    for i, (t, t_next) in enumerate(zip(ts, ts[1:] + [-1])):
        eps, x0 = _predict(eps_fn, schedule, x, t, clip_denoised)
        ab = alpha_bar[t].item()
        ab_next = alpha_bar[t_next].item() if t_next >= 0 else 1.0
        sigma = eta * ((1 - ab_next) / (1 - ab) * (1 - ab / ab_next)) ** 0.5
        x = ab_next ** 0.5 * x0 + (1 - ab_next - sigma ** 2) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * randn(x.shape, generator, x.device, x.dtype)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0})
    return x


SAMPLERS = {"ddpm": ddpm, "ddim": ddim}


def sample(name: str, eps_fn: EpsFn, schedule: NoiseSchedule, x: Tensor, *, steps: int | None = None,
           **options) -> Tensor:
    """Run the sampler called `name` (CLI spelling, e.g. "ddim"); `steps` is ignored by DDPM."""
    if name == "ddpm":
        if steps not in (None, schedule.T):
            raise ValueError(f"ddpm walks all {schedule.T} steps; use ddim for --steps {steps}")
        return ddpm(eps_fn, schedule, x, **options)
    elif name == "ddim":
        return ddim(eps_fn, schedule, x, steps=steps or 50, **options)
    else:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
