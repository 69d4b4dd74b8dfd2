"""UniPC-bh2 (Zhao et al. 2023): a multistep predictor with a corrector that reuses the next network call."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..guidance import Denoise
from ..noise import Generator
from ..schedule import NoiseSchedule
from .common import Callback, Step, levels, pairs, walk
from .multistep import trusted_history


@torch.no_grad()
def unipc(denoise: Denoise, schedule: NoiseSchedule, x: Tensor, timesteps: list[int], *,
          clip_denoised: bool = False, generator: Generator = None, callback: Callback = None) -> Tensor:
    """UniPC-bh2, Zhao et al. 2023: a second-order multistep predictor (UniP) whose every step is then
    redone by the corrector (UniC) with the prediction at the step's end as well, which the next step
    needs anyway: one network call a step, and one order more than the predictor alone (third order,
    measured in tests/test_solvers.py). Like diffusers' UniPCMultistepScheduler (which it matches,
    tests/test_unipc.py) the first step is first order and the last one, into the clean image, takes
    the prediction as it is, with no corrector after it; as in _dpmpp_step, the predictor drops to
    first order where the step is far longer than the history it would extrapolate from (trusted_history)."""
    return walk(denoise, schedule, x, pairs(timesteps), _unipc_step(schedule), clip_denoised=clip_denoised,
                callback=callback)


def _unipc_step(schedule: NoiseSchedule) -> Step:
    """The Step of one walk: it keeps the history of clean-image predictions and the last predictor's start."""
    history: list[tuple[float, Tensor]] = []  # (lambda, D), newest first
    last: list = []  # where the last predictor started: x, s, lambda, how many history points it used

    def step(x: Tensor, eps: Tensor, x0: Tensor, t: int, t_next: int) -> Tensor:
        a, s = levels(schedule, t)
        lam = math.log(a / s)
        if last:  # UniC: the same step again, now knowing D at its end
            x_start, s_start, lam_start, used = last
            h = lam - lam_start
            x = _unipc_move(x_start, s_start, a, s, h, history[0][1], _unic_points(history[:used], h, x0))
        history[:] = [(lam, x0)] + history[:1]
        if t_next < 0:  # into sigma = 0, as in _dpmpp_step; no corrector follows the last step
            return x0
        a_next, s_next = levels(schedule, t_next)
        h = math.log(a_next / s_next) - lam
        used = len(trusted_history(history, h))
        older = [((history[1][0] - lam) / h, history[1][1], 0.5)] if used == 2 else []
        last[:] = [x, s, lam, used]
        return _unipc_move(x, s, a_next, s_next, h, x0, older)  # UniP-2 (first step: UniP-1, DDIM)

    return step


def _unipc_move(x, s, a_next, s_next, h, d0, points):
    """UniPC's step in the data-prediction form, where B(h) = e^h - 1 (Zhao et al.'s bh2), taken at -h,
    makes the weight of the differences that of D0 itself:

        x_next = (s_next / s) x + a_next (1 - e^-h) (D0 + sum_k rho_k (D_k - D0) / r_k),

    where D_k is the clean-image prediction at lambda + r_k h (r_k < 0: an earlier step; r = 1: the
    step's end) and the weights rho_k solve the order conditions. The predictor's rho = 1/2 on the
    previous step's D makes it Lu et al.'s DPM-Solver++(2M) step."""
    slope = d0
    for r, d, rho in points:
        slope = slope + (rho / r) * (d - d0)
    return (s_next / s) * x - a_next * math.expm1(-h) * slope


def _unic_points(history, h, d_end):
    """The corrector's points (r, D, rho): D at the step's end and, after a second-order predictor,
    the prediction before its start. The weights solve sum_k rho_k r_k^(n-1) = b_n for n = 1..p, with
    b_n = n! z phi_(n+1)(z) / B(z), z = -h (Zhao et al. 2023, UniC-p); p = 1 takes rho = 1/2, which
    meets that condition to the order needed (diffusers does the same)."""
    if len(history) == 1:
        return [(1.0, d_end, 0.5)]
    z = -h
    e = math.expm1(z)
    b1 = 1 / z - 1 / e
    b2 = 2 * (e / z ** 2 - 1 / z - 0.5) / e
    r = (history[1][0] - history[0][0]) / h
    return [(r, history[1][1], (b1 - b2) / (1 - r)), (1.0, d_end, (b2 - r * b1) / (1 - r))]
