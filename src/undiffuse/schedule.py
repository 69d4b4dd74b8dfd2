"""The forward (noising) process of a DDPM, as one immutable value.

Glossary, used everywhere in undiffuse (Ho et al. 2020, "Denoising Diffusion Probabilistic Models"):
    t          integer step in [0, T); t = 0 is the least noisy step, T - 1 the most noisy.
    beta_t     variance of the noise added at step t.
    alpha_t    1 - beta_t.
    alpha_bar  prod_{s <= t} alpha_s: the fraction of the signal's variance left at step t.
    eps        standard Gaussian noise.
    x0         a clean image; x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * eps  (eq. 4).
    v          sqrt(alpha_bar) * eps - sqrt(1 - alpha_bar) * x0  (Salimans & Ho 2022).
    snr        alpha_bar / (1 - alpha_bar).
    sigma      sqrt((1 - alpha_bar) / alpha_bar): the noise level of x_t / sqrt(alpha_bar) = x0 + sigma eps,
               the "variance exploding" view in which the ODE samplers (Euler, Heun, DPM-Solver) step.
    lambda     log(sqrt(alpha_bar) / sqrt(1 - alpha_bar)) = -log sigma, half the log-SNR.

All tensors are float64 so that products over 1000 steps keep their precision; the functions that
touch images cast the few coefficients they need to the images' dtype and device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import UsageError

SCHEDULES = ("linear", "cosine", "sigmoid")


@dataclass(frozen=True)
class NoiseSchedule:
    """betas for steps 0..T-1 and everything that follows from them."""

    betas: Tensor  # (T,) float64

    def __post_init__(self):
        betas = self.betas.to(torch.float64)
        if betas.ndim != 1 or len(betas) < 2:
            raise UsageError("a schedule needs a 1-D tensor of at least 2 betas")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise UsageError("every beta must lie in (0, 1)")
        object.__setattr__(self, "betas", betas)

    @property
    def T(self) -> int:
        return len(self.betas)

    @property
    def alphas(self) -> Tensor:
        return 1.0 - self.betas

    @property
    def alpha_bar(self) -> Tensor:
        return torch.cumprod(self.alphas, dim=0)

    @property
    def alpha_bar_prev(self) -> Tensor:
        """alpha_bar_{t-1}, with alpha_bar_{-1} = 1 (x_{-1} is the clean image)."""
        return torch.cat([self.alpha_bar.new_ones(1), self.alpha_bar[:-1]])

    @property
    def snr(self) -> Tensor:
        return self.alpha_bar / (1.0 - self.alpha_bar)

    @property
    def sigmas(self) -> Tensor:
        return ((1.0 - self.alpha_bar) / self.alpha_bar).sqrt()

    @property
    def posterior_variance(self) -> Tensor:
        """Variance of q(x_{t-1} | x_t, x0): beta_tilde_t (eq. 7)."""
        return self.betas * (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar)

    def to(self, device) -> "NoiseSchedule":
        return NoiseSchedule(self.betas.to(device))

    # --- the forward process -------------------------------------------------------------
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Noise x0 to step t in one shot (eq. 4). t: (B,) integer steps."""
        a, s = self._signal_noise(t, x0)
        return a * x0 + s * noise

    # --- conversions between what a network may predict ----------------------------------
    def x0_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        a, s = self._signal_noise(t, x_t)
        return (x_t - s * eps) / a

    def eps_from_x0(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        a, s = self._signal_noise(t, x_t)
        return (x_t - a * x0) / s

    def v_target(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        a, s = self._signal_noise(t, x0)
        return a * eps - s * x0

    def eps_from_v(self, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
        # a^2 + s^2 = 1, so eps = s * x_t + a * v.
        a, s = self._signal_noise(t, x_t)
        return s * x_t + a * v

    def posterior_mean(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Mean of q(x_{t-1} | x_t, x0) (eq. 7)."""
        ab, ab_prev, beta = (take(v, t, x_t) for v in (self.alpha_bar, self.alpha_bar_prev, self.betas))
        coef_x0 = ab_prev.sqrt() * beta / (1 - ab)
        coef_xt = (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab)
        return coef_x0 * x0 + coef_xt * x_t

    def _signal_noise(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        ab = take(self.alpha_bar, t, like)
        return ab.sqrt(), (1 - ab).sqrt()


def take(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """values[t] shaped (B, 1, 1, ...) to broadcast over `like`, in like's dtype and device."""
    t = torch.as_tensor(t, device=values.device).long().reshape(-1)
    out = values[t].to(device=like.device, dtype=like.dtype)
    return out.reshape(-1, *([1] * (like.ndim - 1)))


def linear(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
    """Ho et al. 2020: betas linear from 1e-4 to 0.02 over T = 1000 steps (rescaled for other T)."""
    scale = 1000 / T  # keeps alpha_bar_T about the same when T changes (improved-diffusion)
    betas = torch.linspace(beta_start * scale, beta_end * scale, T, dtype=torch.float64)
    return NoiseSchedule(betas.clamp(max=0.999))  # very short schedules (T < 50) would pass 1


def cosine(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
    """Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2)."""
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return NoiseSchedule(betas.clamp(max=max_beta))


def sigmoid(T: int = 1000, start: float = -3.0, end: float = 3.0, tau: float = 1.0,
            max_beta: float = 0.999) -> NoiseSchedule:
    """Jabri et al. 2022 ("Scalable adaptive computation", alg. 1): alpha_bar follows a falling sigmoid
    in t; it keeps more signal than cosine early on, which suits larger images."""
    v_start, v_end = torch.sigmoid(torch.tensor(start / tau)), torch.sigmoid(torch.tensor(end / tau))
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = (v_end - torch.sigmoid((steps * (end - start) + start) / tau)) / (v_end - v_start)
    betas = 1 - f[1:] / f[:-1]
    return NoiseSchedule(betas.clamp(max=max_beta))


def zero_terminal_snr(schedule: NoiseSchedule) -> NoiseSchedule:
    """Lin et al. 2023, alg. 1: shift and scale sqrt(alpha_bar) so that the last step holds no signal
    (as at sampling time, where x_{T-1} is pure noise) while the first step keeps its value.

    Train such a schedule with prediction v or x0: with no signal left, eps says nothing about x0.
    """
    root = schedule.alpha_bar.sqrt()
    first, last = root[0], root[-1]
    alpha_bar = ((root - last) * first / (first - last)) ** 2
    # Exactly zero would make x0 = (x_t - s eps) / a undefined at the first sampling step. An SNR of
    # 1e-9 is zero for all practical purposes, and keeps a = sqrt(alpha_bar) large enough for float32
    # to carry a v-prediction through that conversion (to about 0.1%).
    alpha_bar[-1] = min(alpha_bar[-2].item() / 4, 1e-9)
    previous = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    return NoiseSchedule(1 - alpha_bar / previous)


def make_schedule(name: str, T: int = 1000, zero_snr: bool = False) -> NoiseSchedule:
    makers = {"linear": linear, "cosine": cosine, "sigmoid": sigmoid}
    if name not in makers:
        raise UsageError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    schedule = makers[name](T)
    return zero_terminal_snr(schedule) if zero_snr else schedule
