"""The objective: L = || target - net(x_t, t, c) ||^2 with t uniform per image (Ho et al. 2020, alg. 1),
min-SNR weighted. The training loop and every user call the same functions."""
from __future__ import annotations

import torch

from ..parameterization import min_snr_weight, target
from ..unet import UNet


def diffusion_loss(model: UNet, schedule, x0, context, null, generator, prediction: str,
                   min_snr: float | None = None):
    """One Monte-Carlo estimate of the loss: noise x0 to a random t and regress the target.

    min_snr = gamma weights each image so that its loss, expressed as an x0 error, counts
    min(snr, gamma): the many nearly clean steps stop dominating the gradient (Hang et al. 2023,
    eq. 7), which several times speeds up convergence. None gives Ho et al.'s plain MSE.
    """
    t, noise = draw_noise(schedule.T, x0.shape, generator)
    t, noise = t.to(x0.device), noise.to(x0.device)
    return per_image_loss(model, schedule, x0, t, noise, context, null, prediction, min_snr).mean()


def draw_noise(T: int, shape, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """t uniform in [0, T) per image and the Gaussian noise eps of shape (B, C, H, W)."""
    return torch.randint(T, (shape[0],), generator=generator), torch.randn(shape, generator=generator)


def per_image_loss(model, schedule, x0, t, noise, context, null, prediction: str, min_snr: float | None):
    """(B,) squared errors of the target, min-SNR weighted; computed in float32 under autocast."""
    x_t = schedule.q_sample(x0, t, noise)
    per_image = (model(x_t, t, context, null).float() - target(prediction, schedule, x0, t, noise)).pow(2).flatten(1).mean(1)
    if min_snr:
        per_image = per_image * min_snr_weight(schedule, t, min_snr, prediction)
    return per_image
