"""What the editing functions share: the guided denoiser and generators of n results, and the image batch."""
from __future__ import annotations

import torch
from torch import Tensor

from ..conditions import context_batch
from ..denoiser import denoiser
from ..errors import UsageError
from ..generate import text_options
from ..noise import generators


def guided_setup(run, n, labels, contexts, guidance, seed, prompt=None, negative_prompt=None):
    """The guided denoiser of n images and their generators, as sample_images builds them. A text run
    takes `prompt` (without one, the edit is unconditional) and `negative_prompt`."""
    precision = run.precision  # first: deciding it may give the run a faster network (generate.faster_layout)
    device = next(run.net.parameters()).device
    context = context_batch(run.net.cfg.context_dim, n, labels, contexts)
    text = {}
    if prompt is not None or negative_prompt is not None:
        text = text_options(run, n, prompt="" if prompt is None else prompt, negative_prompt=negative_prompt)
    denoise = denoiser(run.net, run.schedule.to(device), prediction=run.prediction,
                       context=None if context is None else context.to(device), guidance=guidance,
                       precision=precision, **text)
    return denoise, generators(n, seed)


def image_batch(run, image, n, labels, contexts) -> tuple[Tensor, int]:
    """image as (n, C, H, W) float on the run's device; n from the argument, labels, contexts or batch."""
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[1] != run.channels:
        raise UsageError(f"image of shape {tuple(image.shape)}: this model takes (C, H, W) or (N, C, H, W) "
                         f"with C = {run.channels}")
    n = n or (len(labels) if labels is not None else len(contexts) if contexts is not None else len(image))
    if len(image) not in (1, n):
        raise UsageError(f"{len(image)} images for {n} results")
    device = next(run.net.parameters()).device
    return image.to(device, torch.float32).expand(n, -1, -1, -1), n
