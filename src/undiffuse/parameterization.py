"""What the network predicts, and the one place that converts it.

A network trained with `prediction` eps, x0 or v outputs that quantity; samplers want both the noise
eps and the clean-image estimate x0, and training wants the target and the loss weight. Every branch
on the prediction type lives here.

    x_t = a x0 + s eps,  a = sqrt(alpha_bar_t), s = sqrt(1 - alpha_bar_t),  v = a eps - s x0  (Salimans & Ho 2022)
"""
from __future__ import annotations

import torch
from torch import Tensor

from .errors import UsageError
from .schedule import NoiseSchedule

PREDICTIONS = ("eps", "x0", "v")


def predictable(prediction: str | None, zero_snr: bool) -> bool:
    """Whether a network predicting `prediction` can be trained and sampled on the schedule: a
    zero-terminal-SNR schedule leaves no signal at its last step, where the noise says nothing about
    the image, so it needs v or x0 prediction (Lin et al. 2023)."""
    return not (zero_snr and prediction in (None, "eps"))


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise UsageError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
    return prediction


def to_eps_x0(pred: Tensor, x_t: Tensor, t: Tensor, schedule: NoiseSchedule, prediction: str) -> tuple[Tensor, Tensor]:
    """The network's output as (eps, x0); the quantity it predicts is passed through untouched."""
    if prediction == "eps":
        return pred, schedule.x0_from_eps(x_t, t, pred)
    if prediction == "x0":
        return schedule.eps_from_x0(x_t, t, pred), pred
    if prediction == "v":
        eps = schedule.eps_from_v(x_t, t, pred)
        return eps, schedule.x0_from_eps(x_t, t, eps)
    raise UsageError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


def to_eps(pred: Tensor, x_t: Tensor, t: Tensor, schedule: NoiseSchedule, prediction: str) -> Tensor:
    """Whatever the network predicts, as the noise eps."""
    return to_eps_x0(pred, x_t, t, schedule, prediction)[0]


def target(prediction: str, schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """What a network of this prediction type is trained to output for x_t = q_sample(x0, t, noise)."""
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    if prediction == "v":
        return schedule.v_target(x0, t, noise)
    raise UsageError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


def min_snr_weight(schedule: NoiseSchedule, t: Tensor, gamma: float, prediction: str) -> Tensor:
    """The factor that turns the target's squared error into min(snr, gamma) times the x0 error
    (Hang et al. 2023, eq. 7): the many nearly clean steps stop dominating the gradient."""
    snr = schedule.snr.to(t.device)[t].float()
    clipped = snr.clamp(max=gamma)
    # ||eps err||^2 = snr ||x0 err||^2 and ||v err||^2 = (snr + 1) ||x0 err||^2
    scale = {"eps": snr, "v": snr + 1, "x0": torch.ones_like(snr)}[check_prediction(prediction)]
    return clipped / scale
