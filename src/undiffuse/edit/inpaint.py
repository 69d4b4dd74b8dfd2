"""Inpainting and outpainting: regenerate the masked pixels so that they agree with the rest.

Inpainting keeps the reverse process consistent with the known pixels by overwriting them, at every
step, with the known image noised to that step's level: x_t = m * x_t + (1 - m) * q(x_t | x0_known).
"replace" does only that (Song et al. 2021, "Score-based generative modeling through SDEs", app. I.2),
so the generated region never hears of the known one at the noisy steps where the layout is decided.
RePaint (Lugmayr et al. 2022, alg. 1 and sec. 4.2) goes back up `jump` steps by re-noising,
x_t ~ q(x_t | x_s), and walks down again, `resample` times in all, so that the two regions harmonise.
A mask is 1 where pixels are regenerated and 0 where the image is kept.
"""
from __future__ import annotations

import math
from itertools import groupby
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..guidance import Denoise
from ..errors import UsageError
from ..conditions import Condition
from ..generation import LoadedRun
from ..grids import timesteps
from ..noise import Generator, randn
from ..samplers import ddim_stepper, walk
from ..samplers.common import Callback, levels, pairs
from ..schedule import NoiseSchedule
from .common import guided_setup, image_batch


METHODS = ("repaint", "replace")


DEFAULT_STEPS = {"repaint": 50, "replace": 50}


DEFAULT_JUMP, DEFAULT_RESAMPLE = 5, 5  # RePaint's 10 and 10 over 250 steps cost 2,500 calls; this ~230


def replace_moves(T: int, steps: int, spacing: str = "trailing") -> list[tuple[int, int]]:
    """The (t, t_next) pairs of a plain sampler walk down: t_next = -1 is the clean image."""
    return pairs(timesteps(T, steps, spacing))


def repaint_moves(T: int, steps: int, jump: int = DEFAULT_JUMP, resample: int = DEFAULT_RESAMPLE) -> list[tuple[int, int]]:
    """RePaint's walk over `steps` levels (Lugmayr et al. 2022, get_schedule_jump): down one level at
    a time; on reaching every `jump`-th level, back up `jump` levels and down again, `resample` passes
    in all. Pairs (t, t_next); t_next < t is a denoising step, t_next > t a re-noising one."""
    if jump < 1 or resample < 1:
        raise UsageError(f"jump and resample must be >= 1, got {jump} and {resample}")
    grid = timesteps(T, steps)[::-1]  # level k (0 = least noisy) -> its step t; level -1 is the image
    left = {k: resample - 1 for k in range(0, steps - jump, jump)}
    k, path = steps - 1, [steps - 1]
    while k >= 0:
        k -= 1
        path.append(k)
        if left.get(k, 0) > 0:
            left[k] -= 1
            path += list(range(k + 1, k + jump + 1))
            k += jump
    ts = [grid[k] if k >= 0 else -1 for k in path]
    return list(zip(ts[:-1], ts[1:]))


def inpaint_moves(T: int, method: str = "repaint", steps: int | None = None, jump: int = DEFAULT_JUMP,
                  resample: int = DEFAULT_RESAMPLE) -> list[tuple[int, int]]:
    """The walk of an inpainting `method`: "repaint" or "replace"."""
    steps = steps or DEFAULT_STEPS.get(method, 50)
    if method == "repaint":
        return repaint_moves(T, steps, jump, resample)
    elif method == "replace":
        return replace_moves(T, steps)
    else:
        raise UsageError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def network_calls(moves: Sequence[tuple[int, int]]) -> int:
    """Denoising steps (each one network evaluation) among the moves."""
    return sum(t_next < t for t, t_next in moves)


def renoise(schedule: NoiseSchedule, x: Tensor, s: int, t: int, generator: Generator = None) -> Tensor:
    """A draw of x_t ~ q(x_t | x_s) for t > s (s = -1: x is clean): the forward process from s to t,
    x_t = sqrt(alpha_bar_t / alpha_bar_s) x_s + sqrt(1 - alpha_bar_t / alpha_bar_s) z."""
    a_s, a_t = levels(schedule, s)[0], levels(schedule, t)[0]
    ratio = a_t / a_s
    return ratio * x + math.sqrt(max(0.0, 1 - ratio ** 2)) * randn(x.shape, generator, x.device, x.dtype)


@torch.no_grad()
def inpaint_walk(denoise: Denoise, schedule: NoiseSchedule, x: Tensor, known: Tensor, mask: Tensor,
                 moves: Sequence[tuple[int, int]], *, eta: float = 1.0, clip_denoised: bool = False,
                 generator: Generator = None, callback: Callback = None) -> Tensor:
    """Inpaint along `moves` (replace_moves or repaint_moves), starting from the noise x at moves[0][0].

    known: the image (B, C, H, W) whose pixels with mask 0 are kept; mask broadcasts to it (1 = regenerate).
    Each run of steps down is the samplers' walk with DDIM's step, projected after every step: the
    kept region becomes the known image noised to the new level with fresh noise, so the last step,
    into t = -1, puts back the known pixels exactly. eta: 1 ancestral steps (RePaint's), 0
    deterministic DDIM steps in the generated region.
    """
    mask = mask.to(x.dtype)

    def merge(x: Tensor, t: int) -> Tensor:
        return _merge(schedule, x, known, mask, t, generator)

    x = merge(x, moves[0][0])
    calls = 0  # the callback's i counts network calls, as the samplers' does
    for going_up, stretch in groupby(moves, key=lambda move: move[1] > move[0]):
        stretch = list(stretch)
        if going_up:  # RePaint going back up: both regions re-noised together, keeping them coherent
            for t, t_next in stretch:
                x = renoise(schedule, x, t, t_next, generator)
            continue
        x = walk(denoise, schedule, x, stretch, ddim_stepper(schedule, eta, generator), clip_denoised=clip_denoised,
                 callback=callback, project=merge, first=calls)
        calls += len(stretch)
    return x


def _merge(schedule, x, known, mask, t, generator):
    """The generated region of x with the known image, noised to step t, elsewhere."""
    if t >= 0:
        noise = randn(known.shape, generator, known.device, known.dtype)
        known = schedule.q_sample(known, torch.full((len(known),), t), noise)
    return mask * x + (1 - mask) * known


def inpaint(run: LoadedRun, image: Tensor, mask: Tensor, *, method: str = "repaint", steps: int | None = None,
            jump: int = DEFAULT_JUMP, resample: int = DEFAULT_RESAMPLE, eta: float = 1.0, n: int | None = None,
            cond: Condition | None = None, guidance: float | None = None, seed: int = 0, clip_denoised: bool = True,
            callback: Callback = None, **ask) -> Tensor:
    """Regenerate the pixels where mask is 1 so that they agree with the rest. image: (C, H, W) or
    (N, C, H, W) in [-1, 1]; mask: (H, W), (1, H, W) or (N, 1, H, W), bool or float. n results (default:
    the batch, or one per label), result i seeded seed + i. method "repaint" (jump, resample) or
    "replace" (eta: 1 ancestral, 0 deterministic). What to draw: `cond`, or `ask` as generation.generate
    takes it (nothing: unconditional). Returns (n, C, H, W) in [-1, 1]."""
    moves = inpaint_moves(run.schedule.T, method, steps, jump, resample)
    eta = 1.0 if method == "repaint" else eta  # RePaint's steps are ancestral
    image, n = image_batch(run, image, n, ask)
    mask = _mask_batch(mask, image)
    denoise, gens = guided_setup(run, n, seed, cond, guidance, ask)
    x = randn(image.shape, gens, image.device)
    with torch.inference_mode():
        out = inpaint_walk(denoise, run.schedule.to(image.device), x, image, mask, moves, eta=eta,
                           clip_denoised=clip_denoised, generator=gens, callback=callback)
    return out.clamp(-1, 1).cpu()


def outpaint(run: LoadedRun, image: Tensor, pad: Sequence[int], **options) -> Tensor:
    """Extend the image by pad = (left, top, right, bottom) pixels, generated to agree with it: the
    padded canvas is inpainted with the border as the mask. The U-Net is convolutional (it edge-pads
    odd sizes itself), so any canvas runs, but far beyond the training size the network sees only
    noise around the generated pixels and draws patterns of the training images' scale."""
    pad = tuple(int(p) for p in pad)
    if len(pad) != 4 or min(pad) < 0 or max(pad) == 0:
        raise UsageError(f"pad must be four non-negative pixel counts (left, top, right, bottom), not all 0; got {pad}")
    left, top, right, bottom = pad
    batch = image if image.ndim == 4 else image[None]
    canvas = F.pad(batch, (left, right, top, bottom), value=0.0)  # grey: never seen, it is all masked
    mask = torch.ones(canvas.shape[-2:])
    mask[top:top + batch.shape[-2], left:left + batch.shape[-1]] = 0
    return inpaint(run, canvas, mask, **options)


def _mask_batch(mask: Tensor, image: Tensor) -> Tensor:
    """mask as (1 or N, 1, H, W) float, 1 = regenerate."""
    mask = torch.as_tensor(mask).to(image.device, torch.float32)
    mask = mask.reshape(1, 1, *mask.shape) if mask.ndim == 2 else mask[None] if mask.ndim == 3 else mask
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[-2:] != image.shape[-2:] or len(mask) not in (1, len(image)):
        raise UsageError(f"mask of shape {tuple(mask.shape)} for images of shape {tuple(image.shape)}: give (H, W), "
                         "(1, H, W) or (N, 1, H, W) with the image's H and W")
    return mask
