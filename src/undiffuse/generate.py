"""From a run folder to images: load the (EMA) network a run describes, and sample it.

This is the library side of `undiffuse sample`: one generator per image, seeded seed + i, so that an
image depends on its seed only, not on the batch it was drawn in (NVlabs/edm's habit).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from . import checkpoint as ckpt
from .conditions import context_batch
from .denoiser import DEFAULT_GUIDANCE, denoiser
from .errors import UsageError
from .noise import generators, randn
from .run import read_run
from .samplers import Callback, sample
from .schedule import NoiseSchedule
from .unet import UNet

DEFAULT_SAMPLER = "ddim"  # 10 steps (samplers.DEFAULT_STEPS): the best fidelity and FID per network call on
# the budget models (benchmarks/budget_samplers.py), where fresh noise (eta 1) or 20-50 steps scored worse


@dataclass
class LoadedRun:
    net: UNet  # in eval mode, on its device
    schedule: NoiseSchedule
    prediction: str
    class_names: tuple[str, ...]  # () for an unconditional model
    image_size: int
    channels: int
    config: dict  # config.json as written

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_run(run: str | Path, *, weights: str = "ema", device: str | torch.device = "cpu") -> LoadedRun:
    """The network of a run folder; weights="ema" (default, better samples) or "raw"."""
    if weights not in ("ema", "raw"):
        raise UsageError(f"unknown weights {weights!r}; choose ema or raw")
    run = Path(run)
    record = read_run(run)  # every key checked before anything is built
    net = UNet(record.unet)
    ckpt.load_weights(net, run / (ckpt.EMA if weights == "ema" else ckpt.MODEL))
    net = net.to(device).eval().requires_grad_(False)
    return LoadedRun(net, record.schedule.build(), record.prediction, record.class_names, record.image_size,
                     record.channels, record.to_json())


def sample_images(net: UNet, schedule: NoiseSchedule, prediction: str, n: int, *,
                  image_size: int, labels: list[int] | None = None,
                  contexts: Tensor | None = None,
                  sampler: str = DEFAULT_SAMPLER, steps: int | None = None, guidance: float = 1.0, seed: int = 0,
                  clip_denoised: bool = True, batch_size: int = 250, callback: Callback = None,
                  **options) -> Tensor:
    """n images in [-1, 1], (n, C, H, W). For a conditional network: `labels`, a class id per image,
    or `contexts`, a (n, K) context vector per image (multi-hot, or a mixture: see parse_context).

    clip_denoised keeps each step's estimate of the clean image inside the data range [-1, 1]; it
    removes the speckles that a briefly trained model leaves. The callback sees the steps of each
    batch in turn; `options` go to the sampler (eta, add_noise, ...).
    """
    cfg = net.cfg
    side = image_size
    device = next(net.parameters()).device
    contexts = context_batch(cfg.context_dim, n, labels, contexts)
    gens = generators(n, seed)
    out = []
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        x = randn((stop - start, cfg.channels, side, side), gens[start:stop], device)
        context = contexts[start:stop].to(device) if contexts is not None else None
        eps_fn = denoiser(net, schedule.to(device), prediction=prediction, context=context, guidance=guidance)
        with torch.inference_mode():
            x = sample(sampler, eps_fn, schedule.to(device), x, steps=steps, generator=gens[start:stop],
                       clip_denoised=clip_denoised, callback=callback, **options)
        out.append(x.clamp(-1, 1).cpu())
    return torch.cat(out)


def generate(run: LoadedRun, n: int, **options) -> Tensor:
    """sample_images with the run's own schedule, prediction, size and classes."""
    return sample_images(run.net, run.schedule, run.prediction, n,
                         image_size=run.image_size, **options)


__all__ = ["DEFAULT_GUIDANCE", "DEFAULT_SAMPLER", "LoadedRun", "generate", "load_run", "sample_images"]
