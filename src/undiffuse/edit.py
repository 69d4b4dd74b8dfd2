"""Editing with a trained model, without retraining: inpainting, outpainting, image-to-image, interpolation.

A mask is 1 where pixels are regenerated and 0 where the image is kept. Two levels:
- over any eps_fn(x_t, t) and NoiseSchedule, as the samplers take them (so that the exact denoiser of
  Gaussian data can check them): `inpaint_walk` with `replace_moves` or `repaint_moves`, `sdedit`, `slerp`;
- over a loaded run (`generate.load_run`): `inpaint`, `outpaint`, `img2img`, `interpolate`, with labels,
  contexts and classifier-free guidance exactly as `generate.sample_images` takes them.

Inpainting keeps the reverse process consistent with the known pixels by overwriting them, at every
step, with the known image noised to that step's level: x_t = m * x_t + (1 - m) * q(x_t | x0_known).
"replace" does only that (Song et al. 2021, "Score-based generative modeling through SDEs", app. I.2),
so the generated region never hears of the known one at the noisy steps where the layout is decided.
RePaint (Lugmayr et al. 2022, alg. 1 and sec. 4.2) goes back up `jump` steps by re-noising,
x_t ~ q(x_t | x_s), and walks down again, `resample` times in all, so that the two regions harmonise.
Image-to-image is SDEdit (Meng et al. 2022): noise the image to step t0 = round(strength * T) - 1 and
run a sampler from there. Interpolation walks the great circle between two seeds' noise (slerp), where
Gaussian noise in high dimension lives, and a deterministic sampler maps it to images.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .conditioning import EpsFn, denoiser
from .generate import LoadedRun, context_batch, generators
from .samplers import DEFAULT_STEPS as SAMPLER_STEPS
from .samplers import (SAMPLERS, STOCHASTIC, Callback, Generator, _levels, _pairs, _predict, _report, ddim_step, randn,
                       sample, timesteps)
from .schedule import NoiseSchedule

METHODS = ("repaint", "replace")
DEFAULT_STEPS = {"repaint": 50, "replace": 50}
DEFAULT_JUMP, DEFAULT_RESAMPLE = 5, 5  # RePaint's 10 and 10 over 250 steps cost 2,500 calls; this ~230


# --- low level: any eps_fn ---------------------------------------------------------------------------

def replace_moves(T: int, steps: int, spacing: str = "trailing") -> list[tuple[int, int]]:
    """The (t, t_next) pairs of a plain sampler walk down: t_next = -1 is the clean image."""
    return _pairs(timesteps(T, steps, spacing))


def repaint_moves(T: int, steps: int, jump: int = DEFAULT_JUMP, resample: int = DEFAULT_RESAMPLE) -> list[tuple[int, int]]:
    """RePaint's walk over `steps` levels (Lugmayr et al. 2022, get_schedule_jump): down one level at
    a time; on reaching every `jump`-th level, back up `jump` levels and down again, `resample` passes
    in all. Pairs (t, t_next); t_next < t is a denoising step, t_next > t a re-noising one."""
    if jump < 1 or resample < 1:
        raise ValueError(f"jump and resample must be >= 1, got {jump} and {resample}")
    levels = timesteps(T, steps)[::-1]  # level k (0 = least noisy) -> its step t; level -1 is the image
    left = {k: resample - 1 for k in range(0, steps - jump, jump)}
    k, path = steps - 1, [steps - 1]
    while k >= 0:
        k -= 1
        path.append(k)
        if left.get(k, 0) > 0:
            left[k] -= 1
            path += list(range(k + 1, k + jump + 1))
            k += jump
    ts = [levels[k] if k >= 0 else -1 for k in path]
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
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def network_calls(moves: Sequence[tuple[int, int]]) -> int:
    """Denoising steps (each one network evaluation) among the moves."""
    return sum(t_next < t for t, t_next in moves)


def renoise(schedule: NoiseSchedule, x: Tensor, s: int, t: int, generator: Generator = None) -> Tensor:
    """A draw of x_t ~ q(x_t | x_s) for t > s (s = -1: x is clean): the forward process from s to t,
    x_t = sqrt(alpha_bar_t / alpha_bar_s) x_s + sqrt(1 - alpha_bar_t / alpha_bar_s) z."""
    a_s, a_t = _levels(schedule, s)[0], _levels(schedule, t)[0]
    ratio = a_t / a_s
    return ratio * x + math.sqrt(max(0.0, 1 - ratio ** 2)) * randn(x.shape, generator, x.device, x.dtype)


@torch.no_grad()
def inpaint_walk(eps_fn: EpsFn, schedule: NoiseSchedule, x: Tensor, known: Tensor, mask: Tensor,
                 moves: Sequence[tuple[int, int]], *, eta: float = 1.0, clip_denoised: bool = False,
                 generator: Generator = None, callback: Callback = None) -> Tensor:
    """Inpaint along `moves` (replace_moves or repaint_moves), starting from the noise x at moves[0][0].

    known: the image (B, C, H, W) whose pixels with mask 0 are kept; mask broadcasts to it (1 = regenerate).
    After every step down the kept region is the known image noised to the new level with fresh noise,
    so the last step, into t = -1, puts back the known pixels exactly. eta: 1 ancestral steps
    (RePaint's), 0 deterministic DDIM steps in the generated region.
    """
    mask = mask.to(x.dtype)
    x = _merge(schedule, x, known, mask, moves[0][0], generator)
    i = 0  # counts network calls, as the samplers' callbacks do
    for t, t_next in moves:
        if t_next > t:  # RePaint going back up: both regions re-noised together, keeping them coherent
            x = renoise(schedule, x, t, t_next, generator)
            continue
        eps, x0 = _predict(eps_fn, schedule, x, t, clip_denoised)
        x = _merge(schedule, ddim_step(schedule, x0, eps, t, t_next, eta, generator), known, mask, t_next, generator)
        _report(callback, i, t, x, x0)
        i += 1
    return x


def _merge(schedule, x, known, mask, t, generator):
    """The generated region of x with the known image, noised to step t, elsewhere."""
    if t >= 0:
        noise = randn(known.shape, generator, known.device, known.dtype)
        known = schedule.q_sample(known, torch.full((len(known),), t), noise)
    return mask * x + (1 - mask) * known


def sdedit_plan(T: int, strength: float, sampler: str = "ddim", steps: int | None = None) -> tuple[int, int]:
    """(t0, k): round(strength * T) forward steps put the image at step t0 = that - 1 (-1: no noise
    at all, T - 1: the pure-noise end), and the sampler walks k steps from there (at most t0 + 1;
    ddpm all of them; by default the sampler's usual number)."""
    if not 0 <= strength <= 1:
        raise ValueError(f"strength must lie in [0, 1], got {strength}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    t0 = round(strength * T) - 1
    k = t0 + 1 if sampler == "ddpm" else min(steps or SAMPLER_STEPS[sampler], t0 + 1)
    return t0, k


def truncate(schedule: NoiseSchedule, t: int) -> NoiseSchedule:
    """The schedule of steps 0..t alone: alpha_bar is a running product, so its first t + 1 values
    are unchanged, and any sampler run on it starts at step t with the network's own step numbers."""
    return NoiseSchedule(schedule.betas[:t + 1])


@torch.no_grad()
def sdedit(eps_fn: EpsFn, schedule: NoiseSchedule, image: Tensor, strength: float, *, sampler: str = "ddim",
           steps: int | None = None, generator: Generator = None, clip_denoised: bool = False,
           callback: Callback = None, **options) -> Tensor:
    """Meng et al. 2022: x_t0 ~ q(x_t0 | image), then `sampler` from t0 down (`steps` steps at most
    t0 + 1; ddpm walks all of them). strength 0 returns the image itself; strength 1 starts from pure
    noise, as `sample` does, and ignores the image."""
    t0, steps = sdedit_plan(schedule.T, strength, sampler, steps)
    if t0 < 0:
        return image.clone()
    noise = randn(image.shape, generator, image.device, image.dtype)
    x = noise if t0 == schedule.T - 1 else schedule.q_sample(image, torch.full((len(image),), t0), noise)
    if t0 == 0:  # one step to go: the network's clean image
        eps, x0 = _predict(eps_fn, schedule, x, 0, clip_denoised)
        _report(callback, 0, 0, x0, x0)
        return x0
    return sample(sampler, eps_fn, truncate(schedule, t0), x, steps=None if sampler == "ddpm" else steps, generator=generator, clip_denoised=clip_denoised,
                  callback=callback, **options)


def slerp(a: Tensor, b: Tensor, w: float | Tensor) -> Tensor:
    """Spherical interpolation between a and b, per row (Shoemake 1985): the angle between them is
    cut in the ratio w : 1 - w. w = 0 and 1 give a and b exactly; rows of equal norm keep it."""
    flat_a, flat_b = a.flatten(1).double(), b.flatten(1).double()
    cos = (flat_a * flat_b).sum(1) / (flat_a.norm(dim=1) * flat_b.norm(dim=1))
    theta = cos.clamp(-1, 1).acos()[:, None]
    w = torch.as_tensor(w, dtype=torch.float64)
    w = w.reshape(-1, 1) if w.ndim else w  # one weight per row
    sin = theta.sin()
    near = sin.abs() < 1e-6  # (anti)parallel rows: the circle is undefined, fall back to a straight line
    ca = torch.where(near, 1 - w, ((1 - w) * theta).sin() / torch.where(near, 1.0, sin))
    cb = torch.where(near, w, (w * theta).sin() / torch.where(near, 1.0, sin))
    shape = (-1,) + (1,) * (a.ndim - 1)
    return (ca.reshape(shape) * a.double() + cb.reshape(shape) * b.double()).to(a.dtype)


# --- high level: a loaded run ------------------------------------------------------------------------

def inpaint(run: LoadedRun, image: Tensor, mask: Tensor, *, method: str = "repaint", steps: int | None = None,
            jump: int = DEFAULT_JUMP, resample: int = DEFAULT_RESAMPLE, eta: float = 1.0, n: int | None = None,
            labels: list[int] | None = None, contexts: Tensor | None = None, guidance: float = 1.0,
            seed: int = 0, clip_denoised: bool = True, callback: Callback = None) -> Tensor:
    """Regenerate the pixels where mask is 1 so that they agree with the rest. image: (C, H, W) or
    (N, C, H, W) in [-1, 1]; mask: (H, W), (1, H, W) or (N, 1, H, W), bool or float. n results (default:
    the batch, or one per label), result i seeded seed + i. method "repaint" (jump, resample) or
    "replace" (eta: 1 ancestral, 0 deterministic). Returns (n, C, H, W) in [-1, 1]."""
    moves = inpaint_moves(run.schedule.T, method, steps, jump, resample)
    eta = 1.0 if method == "repaint" else eta  # RePaint's steps are ancestral
    image, n = _image_batch(run, image, n, labels, contexts)
    mask = _mask_batch(mask, image)
    eps_fn, gens = _setup(run, n, labels, contexts, guidance, seed)
    x = randn(image.shape, gens, image.device)
    with torch.inference_mode():
        out = inpaint_walk(eps_fn, run.schedule.to(image.device), x, image, mask, moves, eta=eta,
                           clip_denoised=clip_denoised, generator=gens, callback=callback)
    return out.clamp(-1, 1).cpu()


def outpaint(run: LoadedRun, image: Tensor, pad: Sequence[int], **options) -> Tensor:
    """Extend the image by pad = (left, top, right, bottom) pixels, generated to agree with it: the
    padded canvas is inpainted with the border as the mask. The U-Net is convolutional (it edge-pads
    odd sizes itself), so any canvas runs, but far beyond the training size the network sees only
    noise around the generated pixels and draws patterns of the training images' scale."""
    pad = tuple(int(p) for p in pad)
    if len(pad) != 4 or min(pad) < 0 or max(pad) == 0:
        raise ValueError(f"pad must be four non-negative pixel counts (left, top, right, bottom), not all 0; got {pad}")
    left, top, right, bottom = pad
    batch = image if image.ndim == 4 else image[None]
    canvas = F.pad(batch, (left, right, top, bottom), value=0.0)  # grey: never seen, it is all masked
    mask = torch.ones(canvas.shape[-2:])
    mask[top:top + batch.shape[-2], left:left + batch.shape[-1]] = 0
    return inpaint(run, canvas, mask, **options)


def img2img(run: LoadedRun, image: Tensor, *, strength: float, sampler: str = "ddim", steps: int | None = None,
            n: int | None = None, labels: list[int] | None = None, contexts: Tensor | None = None,
            guidance: float = 1.0, seed: int = 0, clip_denoised: bool = True, callback: Callback = None,
            **options) -> Tensor:
    """SDEdit: noise the image to step round(strength * T) - 1 and denoise it with `sampler` in at most
    `steps` steps (the sampler's default number), conditioned like `sample`; strength 0 gives the image
    back, 1 ignores it (the same images as `sample` with that seed). Returns (n, C, H, W) in [-1, 1]."""
    sdedit_plan(run.schedule.T, strength, sampler, steps)  # validates strength and sampler before any work
    image, n = _image_batch(run, image, n, labels, contexts)
    eps_fn, gens = _setup(run, n, labels, contexts, guidance, seed)
    with torch.inference_mode():
        out = sdedit(eps_fn, run.schedule.to(image.device), image, strength, sampler=sampler, steps=steps,
                     generator=gens, clip_denoised=clip_denoised, callback=callback, **options)
    return out.clamp(-1, 1).cpu()


def interpolate(run: LoadedRun, seeds: Sequence[int] = (0, 1), n: int = 8, *, sampler: str = "ddim",
                steps: int | None = None, labels: list[int] | None = None, contexts: Tensor | None = None,
                guidance: float = 1.0, clip_denoised: bool = True, callback: Callback = None) -> Tensor:
    """n images along the great circle from seed a's starting noise to seed b's, each through the same
    deterministic sampler: the first and last are `sample`'s images for those seeds. labels/contexts:
    one per image (a class may also change along the strip). Returns (n, C, H, W) in [-1, 1]."""
    if len(seeds) != 2 or n < 2:
        raise ValueError(f"interpolate takes two seeds and n >= 2, got {list(seeds)} and n = {n}")
    if sampler in STOCHASTIC:
        raise ValueError(f"{sampler} adds fresh noise at every step; interpolation needs a deterministic sampler")
    device = next(run.net.parameters()).device
    shape = (1, run.channels, run.image_size, run.image_size)
    a, b = (randn(shape, generators(1, s), device) for s in seeds)  # exactly sample_images' noise for seed s
    w = torch.linspace(0, 1, n, dtype=torch.float64)
    x = slerp(a.expand(n, *shape[1:]), b.expand(n, *shape[1:]), w)
    eps_fn, _ = _setup(run, n, labels, contexts, guidance, 0)
    with torch.inference_mode():
        out = sample(sampler, eps_fn, run.schedule.to(device), x, steps=steps, clip_denoised=clip_denoised,
                     callback=callback)
    return out.clamp(-1, 1).cpu()


def _setup(run, n, labels, contexts, guidance, seed):
    """The guided eps_fn of n images and their generators, as sample_images builds them."""
    device = next(run.net.parameters()).device
    context = context_batch(run.net.cfg.context_dim, n, labels, contexts)
    eps_fn = denoiser(run.net, run.schedule.to(device), prediction=run.prediction,
                      context=None if context is None else context.to(device), guidance=guidance)
    return eps_fn, generators(n, seed)


def _image_batch(run, image, n, labels, contexts) -> tuple[Tensor, int]:
    """image as (n, C, H, W) float on the run's device; n from the argument, labels, contexts or batch."""
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[1] != run.channels:
        raise ValueError(f"image of shape {tuple(image.shape)}: this model takes (C, H, W) or (N, C, H, W) "
                         f"with C = {run.channels}")
    n = n or (len(labels) if labels is not None else len(contexts) if contexts is not None else len(image))
    if len(image) not in (1, n):
        raise ValueError(f"{len(image)} images for {n} results")
    device = next(run.net.parameters()).device
    return image.to(device, torch.float32).expand(n, -1, -1, -1), n


def _mask_batch(mask: Tensor, image: Tensor) -> Tensor:
    """mask as (1 or N, 1, H, W) float, 1 = regenerate."""
    mask = torch.as_tensor(mask).to(image.device, torch.float32)
    mask = mask.reshape(1, 1, *mask.shape) if mask.ndim == 2 else mask[None] if mask.ndim == 3 else mask
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[-2:] != image.shape[-2:] or len(mask) not in (1, len(image)):
        raise ValueError(f"mask of shape {tuple(mask.shape)} for images of shape {tuple(image.shape)}: give (H, W), "
                         "(1, H, W) or (N, 1, H, W) with the image's H and W")
    return mask


def load_mask(path, size: int, like=None) -> Tensor:
    """A mask image as (size, size) float, 1 where it is white (regenerate): center-cropped to a square
    and resized with nearest pixels, so that it stays a mask. `like`: the image file it belongs to;
    their shapes must agree up to scale, or the two crops would not cover the same pixels."""
    from PIL import Image

    from .data import DataError

    try:
        with Image.open(path) as img:
            gray = np.asarray(img.convert("L"), dtype=np.float32) / 255
        shape = None
        if like is not None:
            with Image.open(like) as other:
                shape = other.size[::-1]
    except FileNotFoundError:
        raise DataError(f"mask '{path}': no such file") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"mask '{path}' cannot be read ({e})") from None
    h, w = gray.shape
    if shape is not None and abs(h / w - shape[0] / shape[1]) > 0.02 * shape[0] / shape[1]:
        raise DataError(f"mask '{path}' is {w}x{h} but the image is {shape[1]}x{shape[0]}: give a mask of the "
                        "image's shape (or a scaled copy)")
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = torch.from_numpy(gray[top:top + side, left:left + side].copy())
    return (F.interpolate(square[None, None], size=(size, size), mode="nearest")[0, 0] > 0.5).float()
