"""Data whose optimal denoiser is known in closed form: every pixel i.i.d. N(m, s^2).

With x_t = a x0 + sigma eps (a = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar)), x_t is Gaussian with
mean a m and variance a^2 s^2 + sigma^2, and E[eps | x_t] = sigma (x_t - a m) / (a^2 s^2 + sigma^2).
"""
import torch

from undiffuse.schedule import NoiseSchedule, _take


def exact_eps(schedule: NoiseSchedule, m: float, s: float):
    def eps_fn(x_t, t):
        ab = _take(schedule.alpha_bar, t, x_t)
        a, sigma = ab.sqrt(), (1 - ab).sqrt()
        return sigma * (x_t - a * m) / (a ** 2 * s ** 2 + sigma ** 2)

    return eps_fn
