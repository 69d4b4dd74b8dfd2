"""What the editing functions share: the guided denoiser and generators of n results, and the image batch."""
from __future__ import annotations

import torch
from torch import Tensor

from ..conditioning import ASKS, condition_for
from ..conditions import Condition, rows_of
from ..errors import UsageError
from ..generation import check_student
from ..guidance import denoiser
from ..noise import generators


def guided_setup(run, n: int, seed: int, cond: Condition | None, guidance: float | None, ask: dict,
                 drawing: dict | None = None):
    """The guided denoiser of n images and their generators, as sample_images builds them: `cond` as
    given, or what `ask` asks for (conditioning.resolve; an edit asked nothing is unconditional).
    drawing: the sampler options of an edit that draws from noise (interpolate), which a distilled
    student can serve; the edits that start from an image refuse one."""
    precision = run.precision  # first: deciding it may give the run a faster network (generation.faster_layout)
    device = next(run.net.parameters()).device
    cond, guidance = condition_for(run, n, cond, guidance, "none", **ask)
    if run.student_calls and drawing is None:
        teacher = run.config.get("finetuned_from") or {}
        raise UsageError(f"this is a distilled student: it draws from noise in {run.student_calls} network calls "
                         f"(sample, interpolate); edit images with its teacher, {teacher.get('run', 'the run it came from')}")
    if drawing is not None:
        check_student(run, drawing, guidance)
    denoise = denoiser(run.net, run.schedule.to(device), prediction=run.prediction,
                       cond=rows_of(cond, slice(None), device), guidance=guidance, precision=precision)
    return denoise, generators(n, seed)


def split_asks(options: dict) -> tuple[dict, dict]:
    """(what to draw, the rest) of an edit's keyword arguments."""
    return {k: v for k, v in options.items() if k in ASKS}, {k: v for k, v in options.items() if k not in ASKS}


def image_batch(run, image, n, ask: dict) -> tuple[Tensor, int]:
    """image as (n, C, H, W) float on the run's device; n from the argument, the labels or contexts
    asked for, or the batch."""
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[1] != run.channels:
        raise UsageError(f"image of shape {tuple(image.shape)}: this model takes (C, H, W) or (N, C, H, W) "
                         f"with C = {run.channels}")
    n = n or next((len(ask[k]) for k in ("labels", "contexts") if ask.get(k) is not None), len(image))
    if len(image) not in (1, n):
        raise UsageError(f"{len(image)} images for {n} results")
    device = next(run.net.parameters()).device
    return image.to(device, torch.float32).expand(n, -1, -1, -1), n
