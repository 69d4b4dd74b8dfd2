"""The adapter from a network to what samplers call, with classifier-free guidance.

Guided prediction (Ho & Salimans 2022): eps = eps_null + w * (eps_ctx - eps_null); w = 0 is
unconditional, w = 1 conditional, and one batched pass computes both branches otherwise.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .parameterization import to_eps
from .schedule import NoiseSchedule

EpsFn = Callable[[Tensor, Tensor], Tensor]
# Guidance 2 with x0 clipping: on the demo model, 95% of DDIM-50 digits are recognised as the digit asked
# for, against 72% at guidance 1 (benchmarks/digit_quality.py); clipping alone takes 85% to 95%.
DEFAULT_GUIDANCE = 2.0


def guided(eps_null: Tensor, eps_ctx: Tensor, w: float) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6 with w' = w - 1). w = 0 and w = 1 return
    the unconditional and conditional predictions exactly, without floating-point round-off."""
    if w == 0:
        return eps_null
    if w == 1:
        return eps_ctx
    return eps_null + w * (eps_ctx - eps_null)


def denoiser(model: nn.Module, schedule: NoiseSchedule, *, prediction: str = "eps",
             context: Tensor | None = None, guidance: float = 1.0) -> EpsFn:
    """The one adapter from a network to the `eps_fn(x_t, t)` that samplers take.

    context: (B, K) per image, or None for an unconditional model (or all-null rows).
    guidance: w; 1 asks one conditional pass, 0 one unconditional pass, anything else both.
    """
    def eps_fn(x_t: Tensor, t: Tensor) -> Tensor:
        t = t.expand(x_t.shape[0]) if t.ndim == 0 else t
        if context is None or guidance == 1.0:
            return to_eps(model(x_t, t, context), x_t, t, schedule, prediction)
        if guidance == 0.0:
            return to_eps(model(x_t, t, None), x_t, t, schedule, prediction)
        b = x_t.shape[0]
        null = torch.arange(2 * b, device=x_t.device) >= b
        pred = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([context, context]), null)
        eps = to_eps(pred, torch.cat([x_t, x_t]), torch.cat([t, t]), schedule, prediction)
        return guided(eps[b:], eps[:b], guidance)

    return eps_fn
