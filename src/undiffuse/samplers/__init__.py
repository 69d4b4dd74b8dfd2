"""Samplers: plain functions that run the reverse process.

    ddpm            ancestral, all T steps (Ho et al. 2020)
    ddim            first order, any steps, eta blends in DDPM's noise (Song et al. 2021)
    euler           Euler's method on the probability-flow ODE (Karras et al. 2022)
    euler-a         its ancestral variant: the same step to a lower noise level, then fresh noise
    heun            Heun's second-order method on the same ODE (Karras et al. 2022, alg. 1)
    dpmpp-2m/3m     DPM-Solver++ multistep, 2nd/3rd order in log-SNR (Lu et al. 2022)
    unipc           UniPC-bh2: DPM-Solver++(2M)'s step plus a corrector that reuses the next call (Zhao et al. 2023)
    ipndm(-v)       Adams-Bashforth to 4th order in sigma, fixed or variable-step weights (Zhang & Chen 2023)

Every sampler is a function
    run(denoise, schedule, x, timesteps, *, clip_denoised, generator, callback, **its options) -> x_0
of
    denoise(x_t, t) -> (eps, x0)   the noise and clean-image predictions (guidance.denoiser builds it
                                   from a network, guidance.from_eps from a bare eps function),
    schedule                       the NoiseSchedule the network was trained with,
    x                              the starting image at timesteps[0], (B, C, H, W),
    timesteps                      the descending integer steps to visit; the last one steps to the clean image.
Only `sample` turns a number of steps and a spacing into that list (Sampler.grid); img2img cuts it to
start part-way down. Fresh noise comes from `generator`: None, one torch.Generator, or a list with one
generator per image (so that an image depends on its own seed only, whatever the batch).
`callback({"i", "t", "x", "x0"})` sees every step, for animations.

A new sampler is one module with such a function (most are a `common.Step` handed to `common.walk`)
and its record in REGISTRY below; the command line, the web page, `eval` and tests/test_registry.py
read everything they need from the record.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from ..guidance import Denoise
from ..errors import UsageError
from ..grids import SPACINGS, karras_sigmas, karras_timesteps, timesteps
from ..noise import Generator, randn
from ..schedule import NoiseSchedule
from .ancestral import ddim, ddim_invert, ddim_step, ddim_stepper, ddpm
from .common import Callback, walk
from .ipndm import ipndm, ipndm_v
from .multistep import dpmpp_2m, dpmpp_3m
from .ode import euler, euler_ancestral, heun
from .unipc import unipc


@dataclass(frozen=True)
class Sampler:
    """One sampler's record: everything the command line, the web page and the tests need to know."""
    name: str  # as typed on the command line
    run: Callable[..., Tensor]  # run(denoise, schedule, x, timesteps, *, clip_denoised, generator, callback, ...)
    default_steps: int | None  # None: walks every step of the schedule (ddpm)
    calls_per_step: int = 1  # network evaluations a step (guidance batches both branches into one)
    options: tuple[str, ...] = ()  # its own keyword options, beyond those every sampler takes
    stochastic: bool = False  # adds fresh noise by default, so one noise image gives many results
    summary: str = ""

    @property
    def walks_every_step(self) -> bool:
        return self.default_steps is None

    def steps(self, steps: int | None, T: int) -> int:
        """The steps it takes down T levels when asked for `steps` (None: its default)."""
        return T if self.walks_every_step else steps or self.default_steps

    def network_calls(self, steps: int | None, T: int) -> int:
        """Network evaluations for one image; a multi-call step's last one, into the clean image, makes one."""
        return self.calls_per_step * self.steps(steps, T) - (self.calls_per_step - 1)

    def grid(self, schedule: NoiseSchedule, steps: int | None = None, spacing: str = "trailing",
             start: int | None = None) -> list[int]:
        """The descending timesteps it walks: from `start` (default T-1, the pure-noise end) down, `steps`
        of them placed by `spacing` (grids.timesteps), or every one for a sampler that walks every step."""
        T = schedule.T if start is None else start + 1
        if self.walks_every_step:
            if steps not in (None, T):
                raise UsageError(f"{self.name} walks all {T} steps; use another sampler for --steps {steps}")
            return list(range(T - 1, -1, -1))
        return timesteps(T, self.steps(steps, T), spacing, schedule)


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
    Sampler("ipndm", ipndm, 10, summary="Adams-Bashforth to 4th order in sigma, fixed weights (Zhang & Chen 2023)"),
    Sampler("ipndm-v", ipndm_v, 10, summary="iPNDM with weights for uneven steps"),
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
    return get(name).steps(steps, T)


def network_calls(name: str, steps: int | None, T: int = 1000) -> int:
    """Network evaluations a sampler makes for one image (guidance batches both branches in one)."""
    return get(name).network_calls(steps, T)


def sample(name: str, denoise: Denoise, schedule: NoiseSchedule, x: Tensor, *, steps: int | None = None,
           spacing: str = "trailing", **options) -> Tensor:
    """Run the sampler called `name` (CLI spelling, e.g. "dpmpp-2m") from x at step T-1 over its grid:
    `steps` steps (default its own number) placed by `spacing`; ddpm walks all T (steps None or T)."""
    record = get(name)
    return record.run(denoise, schedule, x, record.grid(schedule, steps, spacing), **options)


__all__ = ["REGISTRY", "Sampler", "get", "steps_walked", "network_calls", "sample", "SAMPLERS", "DEFAULT_STEPS",
           "STOCHASTIC", "SPACINGS", "Callback", "Generator", "timesteps", "karras_sigmas", "karras_timesteps", "randn",
           "walk", "ddpm", "ddim", "ddim_step", "ddim_stepper", "ddim_invert", "euler", "euler_ancestral", "heun",
           "dpmpp_2m", "dpmpp_3m", "unipc", "ipndm", "ipndm_v"]
