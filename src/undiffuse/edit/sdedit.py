"""Image-to-image, SDEdit (Meng et al. 2022): noise the image to step t0 = round(strength * T) - 1 and
run a sampler from there."""
from __future__ import annotations

import torch
from torch import Tensor

from ..guidance import Denoise
from ..errors import UsageError
from ..conditions import Condition
from ..generation import LoadedRun
from ..noise import Generator, randn
from ..samplers import get
from ..samplers.common import Callback
from ..schedule import NoiseSchedule
from .common import guided_setup, image_batch, split_asks


def sdedit_plan(T: int, strength: float, sampler: str = "ddim", steps: int | None = None) -> tuple[int, int]:
    """(t0, k): round(strength * T) forward steps put the image at step t0 = that - 1 (-1: no noise
    at all, T - 1: the pure-noise end), and the sampler walks k steps from there (at most t0 + 1;
    a sampler that walks every step, all of them; by default the sampler's usual number)."""
    if not 0 <= strength <= 1:
        raise UsageError(f"strength must lie in [0, 1], got {strength}")
    record = get(sampler)
    t0 = round(strength * T) - 1
    return t0, min(record.steps(steps, t0 + 1), t0 + 1)


@torch.no_grad()
def sdedit(denoise: Denoise, schedule: NoiseSchedule, image: Tensor, strength: float, *, sampler: str = "ddim",
           steps: int | None = None, spacing: str = "trailing", generator: Generator = None,
           clip_denoised: bool = False, callback: Callback = None, **options) -> Tensor:
    """Meng et al. 2022: x_t0 ~ q(x_t0 | image), then `sampler` over its grid cut to start at t0
    (`steps` steps, at most t0 + 1; ddpm walks all of them). strength 0 returns the image itself;
    strength 1 starts from pure noise, as `sample` does, and ignores the image."""
    t0, steps = sdedit_plan(schedule.T, strength, sampler, steps)
    if t0 < 0:
        return image.clone()
    noise = randn(image.shape, generator, image.device, image.dtype)
    x = noise if t0 == schedule.T - 1 else schedule.q_sample(image, torch.full((len(image),), t0), noise)
    record = get(sampler)
    return record.run(denoise, schedule, x, record.grid(schedule, steps, spacing, start=t0), generator=generator,
                      clip_denoised=clip_denoised, callback=callback, **options)


def img2img(run: LoadedRun, image: Tensor, *, strength: float, sampler: str | None = None, steps: int | None = None,
            n: int | None = None, cond: Condition | None = None, guidance: float | None = None, seed: int = 0,
            clip_denoised: bool = True, callback: Callback = None, **options) -> Tensor:
    """SDEdit: noise the image to step round(strength * T) - 1 and denoise it with `sampler` in at most
    `steps` steps (the sampler's default number; sampler: the run's by default), conditioned like `sample`; strength 0 gives the image
    back, 1 ignores it (the same images as `sample` with that seed). What to draw: `cond`, or asked in
    `options` as generation.generate takes it (label, labels, context, contexts, prompt, prompts,
    negative_prompt; nothing: unconditional); the other options go to the sampler. Returns (n, C, H, W)
    in [-1, 1]."""
    sampler = sampler or run.sampler
    sdedit_plan(run.schedule.T, strength, sampler, steps)  # validates strength and sampler before any work
    ask, options = split_asks(options)
    image, n = image_batch(run, image, n, ask)
    denoise, gens = guided_setup(run, n, seed, cond, guidance, ask)
    with torch.inference_mode():
        out = sdedit(denoise, run.schedule.to(image.device), image, strength, sampler=sampler, steps=steps,
                     generator=gens, clip_denoised=clip_denoised, callback=callback, **options)
    return out.clamp(-1, 1).cpu()
