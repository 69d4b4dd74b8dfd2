"""iPNDM (Zhang & Chen 2023, "improved PNDM"): Adams-Bashforth multistep on the probability-flow ODE
in z = x_t / a = x0 + sigma eps, where dz/dsigma = eps, with lower orders while the history fills.

The published form takes the fixed-step Adams-Bashforth weights whatever the steps' lengths; it is
exact in its order on grids uniform in sigma and keeps second order on grids whose steps change
smoothly. Its variable-step form (`ipndm-v`) integrates the polynomial through the past slopes over
the step exactly, so it keeps its order on any grid. Both take one network call a step, and the last
step, into sigma = 0, returns the clean-image prediction as the other solvers' last steps do.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..guidance import Denoise
from ..noise import Generator
from ..schedule import NoiseSchedule
from .common import Callback, Step, levels, pairs, walk

# Adams-Bashforth weights of the newest slope first, for 1 to 4 slopes of equal spacing
FIXED_WEIGHTS = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))
MAX_ORDER = len(FIXED_WEIGHTS)


@torch.no_grad()
def ipndm(denoise: Denoise, schedule: NoiseSchedule, x: Tensor, timesteps: list[int], *, order: int = MAX_ORDER,
          clip_denoised: bool = False, generator: Generator = None, callback: Callback = None) -> Tensor:
    """iPNDM as published: fixed Adams-Bashforth weights, orders 1, 2, 3 for the first steps, then `order`."""
    return walk(denoise, schedule, x, pairs(timesteps), _adams_step(schedule, order, variable=False),
                clip_denoised=clip_denoised, callback=callback)


@torch.no_grad()
def ipndm_v(denoise: Denoise, schedule: NoiseSchedule, x: Tensor, timesteps: list[int], *, order: int = MAX_ORDER,
            clip_denoised: bool = False, generator: Generator = None, callback: Callback = None) -> Tensor:
    """iPNDM's variable-step form: the weights integrate the interpolating polynomial over each step."""
    return walk(denoise, schedule, x, pairs(timesteps), _adams_step(schedule, order, variable=True),
                clip_denoised=clip_denoised, callback=callback)


def _adams_step(schedule: NoiseSchedule, order: int, variable: bool) -> Step:
    if not 1 <= order <= MAX_ORDER:
        raise ValueError(f"iPNDM's order is 1 to {MAX_ORDER}, not {order}")
    history: list[tuple[float, Tensor]] = []  # (sigma, eps), newest first

    def step(x: Tensor, eps: Tensor, x0: Tensor, t: int, t_next: int) -> Tensor:
        a, s = levels(schedule, t)
        sigma = s / a
        history[:] = [(sigma, eps)] + history[:order - 1]
        if t_next < 0:  # into sigma = 0: z there is the clean-image prediction itself
            return x0
        a_next, s_next = levels(schedule, t_next)
        h = s_next / a_next - sigma
        sigmas = [level for level, _ in history]
        weights = variable_weights(sigmas, h) if variable else FIXED_WEIGHTS[len(history) - 1]
        slope = sum(w * d for w, (_, d) in zip(weights, history))
        return a_next * (x / a + h * slope)

    return step


def variable_weights(sigmas: list[float], h: float) -> list[float]:
    """w_j with sum_j w_j d_j = (1/h) integral over [sigma_0, sigma_0 + h] of the polynomial through
    (sigma_j, d_j): each Lagrange basis polynomial integrated exactly, in u = (sigma - sigma_0) / h so
    that the nodes are O(1) numbers (on an equal grid u_j = -j and the weights are FIXED_WEIGHTS)."""
    u = [(level - sigmas[0]) / h for level in sigmas]
    weights = []
    for j, u_j in enumerate(u):
        basis = np.polynomial.Polynomial([1.0])
        for m, u_m in enumerate(u):
            if m != j:
                basis = basis * np.polynomial.Polynomial([-u_m, 1.0]) / (u_j - u_m)
        antiderivative = basis.integ()
        weights.append(float(antiderivative(1.0) - antiderivative(0.0)))
    return weights
