"""Data whose optimal denoiser is known in closed form.

With x_t = a x0 + s eps (a = sqrt(alpha_bar), s = sqrt(1 - alpha_bar)):
- every pixel i.i.d. N(m, S^2): x_t ~ N(a m, a^2 S^2 + s^2) and E[eps | x_t] = s (x_t - a m) / (a^2 S^2 + s^2);
- a mixture sum_k w_k N(mu_k, C_k) in d dimensions: given component k, x_t ~ N(a mu_k, a^2 C_k + s^2 I)
  and E[x0 | x_t, k] = mu_k + a C_k (a^2 C_k + s^2 I)^-1 (x_t - a mu_k); E[x0 | x_t] weighs these by
  the posterior of k. A single full-covariance Gaussian is the mixture of one.
Images are (B, 1, 1, d): the d pixels of one image are the d dimensions. Samplers take a denoiser
(x_t, t) -> (eps, x0); `guidance.from_eps` makes one of these eps functions.
"""
import math

import torch

from undiffuse.guidance import from_eps
from undiffuse.schedule import NoiseSchedule, take


def exact_eps(schedule: NoiseSchedule, m: float, s: float):
    def eps_fn(x_t, t):
        ab = take(schedule.alpha_bar, t, x_t)
        a, sigma = ab.sqrt(), (1 - ab).sqrt()
        return sigma * (x_t - a * m) / (a ** 2 * s ** 2 + sigma ** 2)

    return eps_fn


def exact_denoise(schedule: NoiseSchedule, m: float, s: float):
    """exact_eps as samplers take it."""
    return from_eps(exact_eps(schedule, m, s), schedule)


class Mixture:
    def __init__(self, weights, means, covs):
        self.w = torch.as_tensor(weights, dtype=torch.float64)
        self.mu = torch.as_tensor(means, dtype=torch.float64)  # (K, d)
        self.cov = torch.as_tensor(covs, dtype=torch.float64)  # (K, d, d)

    @property
    def d(self) -> int:
        return self.mu.shape[1]

    def sample(self, n: int, generator) -> torch.Tensor:
        k = torch.multinomial(self.w, n, replacement=True, generator=generator)
        z = torch.randn(n, self.d, generator=generator, dtype=torch.float64)
        chol = torch.linalg.cholesky(self.cov)
        return (self.mu[k] + (chol[k] @ z[:, :, None])[..., 0]).reshape(n, 1, 1, self.d)

    def mean(self) -> torch.Tensor:
        return self.w @ self.mu

    def covariance(self) -> torch.Tensor:
        m = self.mean()
        second = (self.w[:, None, None] * (self.cov + self.mu[:, :, None] * self.mu[:, None, :])).sum(0)
        return second - m[:, None] * m[None, :]

    def x0(self, x_t: torch.Tensor, a: float, s: float) -> torch.Tensor:
        """E[x0 | x_t] for x_t = a x0 + s eps (a, s floats)."""
        x = x_t.reshape(-1, self.d).to(torch.float64)
        eye = torch.eye(self.d, dtype=torch.float64)
        c = a * a * self.cov + s * s * eye  # (K, d, d)
        c_inv = torch.linalg.inv(c)
        diff = x[:, None, :] - a * self.mu[None]  # (B, K, d)
        maha = torch.einsum("bki,kij,bkj->bk", diff, c_inv, diff)
        log_p = self.w.log() - 0.5 * maha - 0.5 * torch.logdet(c)[None] - 0.5 * self.d * math.log(2 * math.pi)
        post = torch.softmax(log_p, dim=1)  # (B, K)
        gain = a * self.cov @ c_inv  # (K, d, d)
        cond = self.mu[None] + torch.einsum("kij,bkj->bki", gain, diff)
        return (post[:, :, None] * cond).sum(1).reshape(x_t.shape).to(x_t.dtype)

    def eps_fn(self, schedule: NoiseSchedule):
        """The exact denoiser as samplers take it: eps(x_t, t) at integer steps t."""
        def eps_fn(x_t, t):
            ab = schedule.alpha_bar[int(t.reshape(-1)[0])].item()
            a, s = math.sqrt(ab), math.sqrt(1 - ab)
            return (x_t - a * self.x0(x_t, a, s)) / s

        return eps_fn

    def denoise(self, schedule: NoiseSchedule):
        """The exact denoiser as samplers take it: (eps, x0)."""
        return from_eps(self.eps_fn(schedule), schedule)

    def flow(self, x: torch.Tensor, sigma_from: float, sigma_to: float, steps: int = 2000) -> torch.Tensor:
        """The probability-flow ODE solved accurately, as the reference for the samplers: z = x_t / a
        obeys dz/d(log sigma) = z - D(z, sigma) (D = E[x0 | z]); classical RK4 in log sigma."""
        def slope(z, log_sigma):
            sigma = math.exp(log_sigma)
            a = 1 / math.sqrt(1 + sigma * sigma)
            return z - self.x0(a * z, a, sigma * a)

        u, u_end = math.log(sigma_from), math.log(sigma_to)
        h = (u_end - u) / steps
        z = x * math.sqrt(1 + sigma_from ** 2)
        for _ in range(steps):
            k1 = slope(z, u)
            k2 = slope(z + h / 2 * k1, u + h / 2)
            k3 = slope(z + h / 2 * k2, u + h / 2)
            k4 = slope(z + h * k3, u + h)
            z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            u += h
        return z / math.sqrt(1 + sigma_to ** 2)
