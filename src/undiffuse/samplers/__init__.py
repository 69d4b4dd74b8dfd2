"""Samplers: plain functions that run the reverse process.

    ddpm            ancestral, all T steps (Ho et al. 2020)
    ddim            first order, any steps, eta blends in DDPM's noise (Song et al. 2021)
    euler           Euler's method on the probability-flow ODE (Karras et al. 2022)
    euler-a         its ancestral variant: the same step to a lower noise level, then fresh noise
    heun            Heun's second-order method on the same ODE (Karras et al. 2022, alg. 1)
    dpmpp-2m/3m     DPM-Solver++ multistep, 2nd/3rd order in log-SNR (Lu et al. 2022)
    unipc           UniPC-bh2: DPM-Solver++(2M)'s step plus a corrector that reuses the next call (Zhao et al. 2023)

Every sampler takes
    eps_fn(x_t, t) -> eps   the noise prediction (conditioning.denoiser builds it from a network),
    schedule                the NoiseSchedule the network was trained with,
    x                       the starting noise x_{T-1}, (B, C, H, W),
and keyword options, and returns x_0. Fresh noise comes from `generator`: None, one
torch.Generator, or a list with one generator per image (so that an image depends on its own seed
only, whatever the batch). `callback({"i", "t", "x", "x0"})` sees every step, for animations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from ..denoiser import EpsFn
from ..errors import UsageError
from ..grids import SPACINGS, karras_sigmas, karras_timesteps, timesteps
from ..noise import Generator, randn
from ..schedule import NoiseSchedule
from .ancestral import ddim, ddim_invert, ddim_step, ddpm
from .common import Callback
from .multistep import dpmpp_2m, dpmpp_3m
from .ode import euler, euler_ancestral, heun
from .unipc import unipc


@dataclass(frozen=True)
class Sampler:
    """One sampler's record: everything the command line, the web page and the tests need to know."""
    name: str  # as typed on the command line
    run: Callable[..., Tensor]  # run(eps_fn, schedule, x, *, steps, spacing, clip_denoised, generator, callback, ...)
    default_steps: int | None  # None: walks every step of the schedule (ddpm)
    calls_per_step: int = 1  # network evaluations a step (guidance batches both branches into one)
    options: tuple[str, ...] = ()  # its own keyword options, beyond those every sampler takes
    stochastic: bool = False  # adds fresh noise by default, so one noise image gives many results
    summary: str = ""

    @property
    def walks_every_step(self) -> bool:
        return self.default_steps is None

    def network_calls(self, steps: int | None, T: int) -> int:
        """Network evaluations for one image; a multi-call step's last one, into the clean image, makes one."""
        if self.walks_every_step:
            return T
        steps = steps or self.default_steps
        return self.calls_per_step * steps - (self.calls_per_step - 1)


# ddim: 10 steps drew digits as recognisable as 20 or 50 and scored the best FID on the budget models
# (benchmarks/budget_samplers.py); the others take about 20 network calls.
REGISTRY: dict[str, Sampler] = {s.name: s for s in (
    Sampler("ddpm", ddpm, None, options=("add_noise",), stochastic=True,
            summary="ancestral, all T steps (Ho et al. 2020)"),
    Sampler("ddim", ddim, 10, options=("eta",), summary="first order; eta blends in DDPM's noise (Song et al. 2021)"),
    Sampler("euler", euler, 20, summary="Euler on the probability-flow ODE (Karras et al. 2022)"),
    Sampler("euler-a", euler_ancestral, 20, options=("eta",), stochastic=True,
            summary="Euler to a lower level, then fresh noise"),
    Sampler("heun", heun, 10, calls_per_step=2, summary="second order, two calls a step (Karras et al. 2022)"),
    Sampler("dpmpp-2m", dpmpp_2m, 20, summary="DPM-Solver++(2M), multistep in log-SNR (Lu et al. 2022)"),
    Sampler("dpmpp-3m", dpmpp_3m, 20, summary="DPM-Solver++(3M)"),
    Sampler("unipc", unipc, 20, summary="UniPC-bh2 predictor-corrector (Zhao et al. 2023)"),
)}
SAMPLERS = {name: s.run for name, s in REGISTRY.items()}
DEFAULT_STEPS = {name: s.default_steps for name, s in REGISTRY.items() if not s.walks_every_step}
STOCHASTIC = tuple(name for name, s in REGISTRY.items() if s.stochastic)  # the others map a noise image to one image


def get(name: str) -> Sampler:
    """The record of a sampler by its command-line name, or a UsageError that lists them."""
    if name not in REGISTRY:
        raise UsageError(f"unknown sampler {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def steps_walked(name: str, steps: int | None, T: int = 1000) -> int:
    """The sampler steps one run takes: how often the callback is called (heun's steps make two calls)."""
    record = get(name)
    return T if record.walks_every_step else steps or record.default_steps


def network_calls(name: str, steps: int | None, T: int = 1000) -> int:
    """Network evaluations a sampler makes for one image (guidance batches both branches in one)."""
    return get(name).network_calls(steps, T)


def sample(name: str, eps_fn: EpsFn, schedule: NoiseSchedule, x: Tensor, *, steps: int | None = None,
           **options) -> Tensor:
    """Run the sampler called `name` (CLI spelling, e.g. "dpmpp-2m"); `steps` is ignored by DDPM."""
    record = get(name)
    if record.walks_every_step:
        if steps not in (None, schedule.T):
            raise UsageError(f"{name} walks all {schedule.T} steps; use another sampler for --steps {steps}")
        return record.run(eps_fn, schedule, x, **options)
    return record.run(eps_fn, schedule, x, steps=steps or record.default_steps, **options)


__all__ = ["REGISTRY", "Sampler", "get", "steps_walked", "SAMPLERS", "DEFAULT_STEPS", "STOCHASTIC", "SPACINGS", "Callback", "Generator", "network_calls", "sample",
           "timesteps", "karras_sigmas", "karras_timesteps", "randn", "ddpm", "ddim", "ddim_step", "ddim_invert",
           "euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_3m", "unipc"]
