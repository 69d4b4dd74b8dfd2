"""The objective: L = || target - net(x_t, t, c) ||^2 with t uniform per image (Ho et al. 2020, alg. 1),
min-SNR weighted. The training loop calls `per_image_loss`, which `diffusion_loss` averages, exactly
as a user does; `draw_noise` draws its t and noise."""
from __future__ import annotations

import torch

from ..parameterization import min_snr_weight, target


def diffusion_loss(model, schedule, x0, t, noise, cond=None, *, prediction: str = "eps",
                   min_snr: float | None = None) -> torch.Tensor:
    """The mean over the batch of the per-image squared error of the target, computed in float32
    under autocast: x0 noised to step t with `noise`, and the network asked for the target given
    `cond` (conditions/condition.py: B rows, null rows where guidance dropout struck; None: unconditional).

    min_snr = gamma weights each image so that its loss, expressed as an x0 error, counts
    min(snr, gamma): the many nearly clean steps stop dominating the gradient (Hang et al. 2023,
    eq. 7), which several times speeds up convergence. None or 0 gives Ho et al.'s plain MSE.
    """
    return per_image_loss(model, schedule, x0, t, noise, cond, prediction=prediction, min_snr=min_snr).mean()


def per_image_loss(model, schedule, x0, t, noise, cond=None, *, prediction: str = "eps",
                   min_snr: float | None = None) -> torch.Tensor:
    """Each image's (weighted) loss, (B,): what diffusion_loss averages, and what the log splits by t."""
    x_t = schedule.q_sample(x0, t, noise)
    error = model(x_t, t, cond).float() - target(prediction, schedule, x0, t, noise)
    per_image = error.pow(2).flatten(1).mean(1)
    if min_snr:
        per_image = per_image * min_snr_weight(schedule, t, min_snr, prediction)
    return per_image


def draw_noise(T: int, shape, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """t uniform in [0, T) per image and the Gaussian noise eps of shape (B, C, H, W), on the CPU."""
    return torch.randint(T, (shape[0],), generator=generator), torch.randn(shape, generator=generator)
