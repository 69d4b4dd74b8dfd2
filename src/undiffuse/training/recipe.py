"""A training recipe that follows from the budget.

Published DDPM recipes (lr 2e-4, EMA 0.9999, thousands of warm-up steps) assume days on a GPU: an
EMA of 0.9999 averages the last ~10,000 steps, so a run of 2,000 steps samples from weights that are
mostly its random initialisation. Here every knob is a fraction of the steps the budget affords:
warm-up is the first few percent, the EMA averages over the last tenth of the run, the learning rate
decays on a cosine to a tenth of its peak, and the model is the largest that still gets enough steps.
"""
from __future__ import annotations

import math

from ..errors import UsageError
from ..run import Plan
from ..unet import UNetConfig

# Width and depth per size; the levels follow from the image size (see `unet_config`).
MODEL_SIZES = {
    "tiny": dict(base=16, blocks=1),
    "small": dict(base=32, blocks=1),
    "medium": dict(base=64, blocks=2),
    "large": dict(base=128, blocks=2),
}
CONTEXT_MODE = "both"  # how new runs feed the class to the U-Net (unet.CONTEXT_MODES); see BENCHMARKS.md
MIN_IMAGES = 100_000  # `auto` picks the largest size that still trains on this many images


# On a CPU a budget affords few steps, and more, smaller steps learn the classes sooner: 4 minutes on
# one core drew the digit asked for far more often at batch 32 than at 128 (benchmarks/budget_recipe.py).
# On CUDA a larger batch keeps the GPU busy.
CPU_BATCH, CUDA_BATCH = 32, 128


def default_batch_size(device_type: str) -> int:
    return CPU_BATCH if device_type == "cpu" else CUDA_BATCH


def unet_config(size: str, image_size: int, channels: int, context_dim: int,
                context_mode: str = CONTEXT_MODE, block_style: str = "film", text_dim: int = 0,
                cond_channels: int = 0) -> UNetConfig:
    """Halve the resolution until it reaches 8 or less (28 -> 14 -> 7); attend at 8x8 and below."""
    if size not in MODEL_SIZES:
        raise UsageError(f"unknown model size {size!r}; choose one of auto, {', '.join(MODEL_SIZES)}")
    resolutions = [image_size]
    while resolutions[-1] > 8 and resolutions[-1] % 2 == 0:
        resolutions.append(resolutions[-1] // 2)
    if len(resolutions) == 1:  # odd or tiny sizes: the U-Net pads to a multiple of 4
        resolutions = [image_size, math.ceil(image_size / 2), math.ceil(image_size / 4)]
    mults = tuple([1] + [2] * (len(resolutions) - 1))
    attention = tuple(i for i, r in enumerate(resolutions) if r <= 8 and i > 0)
    return UNetConfig(channels=channels, mults=mults, attention=attention, context_dim=context_dim,
                      context_mode=context_mode, block_style=block_style, text_dim=text_dim,
                      cond_channels=cond_channels, **MODEL_SIZES[size])


def plan(steps: int, batch_size: int, lr: float | None = None, warmup: int | None = None,
         ema_decay: float | None = None) -> Plan:
    """Fill in what the user left to the recipe, from the number of steps the run will take."""
    lr = lr if lr is not None else peak_lr(batch_size)
    warmup = warmup if warmup is not None else max(10, min(1000, steps // 20))
    # Average over roughly the last tenth of the run: the 'horizon' 1 / (1 - decay).
    ema_decay = ema_decay if ema_decay is not None else min(0.9999, 1 - 1 / max(10, steps / 10))
    return Plan(steps=steps, lr=lr, warmup=min(warmup, steps), ema_decay=ema_decay)


def peak_lr(batch_size: int) -> float:
    """Up to 128 images a step, 2e-3 whatever the batch: at batch 32 on a 4-minute budget, 2e-3 and 4e-3
    drew the digit asked equally often, 1e-3 much less often (benchmarks/budget_recipe.py). Larger
    batches take less noisy steps: the peak grows with sqrt(batch) from there."""
    return 2e-3 * math.sqrt(max(1.0, batch_size / 128))


def lr_at(step: int, plan: Plan, done: float | None = None) -> float:
    """Linear warm-up over plan.warmup steps, then a cosine from the peak down to a tenth of it at the
    end of the run. done: the share of the run behind us (of a time budget: the elapsed share);
    by default step / plan.steps."""
    if step < plan.warmup:
        return plan.lr * (step + 1) / plan.warmup
    done = step / plan.steps if done is None else done
    warm = plan.warmup / plan.steps
    progress = min(1.0, max(0.0, (done - warm) / max(1e-9, 1 - warm)))
    return plan.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def ema_decay_at(step: int, plan: Plan) -> float:
    """The EMA warms up as (1 + step) / (10 + step), so early averages are not dominated by noise."""
    return min(plan.ema_decay, (1 + step) / (10 + step))
