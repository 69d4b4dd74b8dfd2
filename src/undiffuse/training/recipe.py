"""A training recipe that follows from the budget.

Published DDPM recipes (lr 2e-4, EMA 0.9999, thousands of warm-up steps) assume days on a GPU: an
EMA of 0.9999 averages the last ~10,000 steps, so a run of 2,000 steps samples from weights that are
mostly its random initialisation. Here every knob is a fraction of the steps the budget affords:
warm-up is the first few percent, the EMA averages over the last fifth of the run, the learning rate
decays on a cosine to a tenth of its peak, and the model is the largest that still gets enough steps.
"""
from __future__ import annotations

import math

from ..guidance import DEFAULT_GUIDANCE
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
# `auto` picks the largest size that still trains on this many images. Colour after 10 minutes of one
# busy core (benchmarks/colour_budget.py, small with the patch stem at about 120,000 images against
# tiny at about 240,000): FID 14.6-15.2 against 16.1 on Twemoji, 17.0-18.1 against 21.9 on the emoji.
# At 100,000 that small run sat so near the line that 3 of 13 such runs timed it under and fell back
# to tiny. Digits on one busy core stay tiny at 10 minutes (small would see about 50,000); on two
# quiet cores small sees about 100,000 and was picked at either line (`make demo`: fidelity 0.991,
# FID 6.15 against the one-core tiny demos' 0.982-0.985 and 5.3). All on an AMD EPYC Zen 4
# (avx512_bf16, no AMX).
MIN_IMAGES = 80_000


# On a CPU a budget affords few steps, and more, smaller steps learn the classes sooner: 4 minutes on
# one core drew the digit asked for far more often at batch 32 than at 128 (benchmarks/budget_recipe.py).
# On CUDA a larger batch keeps the GPU busy. Colour agrees: batch 64 on Twemoji (10 minutes of one busy
# core, benchmarks/colour_budget.py) saw as many images in half the steps and scored FID 21.1 against
# 14.6-16.1 at 32.
CPU_BATCH, CUDA_BATCH = 32, 128


def default_batch_size(device_type: str) -> int:
    return CPU_BATCH if device_type == "cpu" else CUDA_BATCH


def flips(channels: int) -> bool:
    """Whether a set's images are mirrored in training when the user did not say. Colour sets (photos,
    sprites, emoji, cars) look as likely mirrored, and a small one gains a second view of each image;
    one-channel sets are mostly glyphs (digits, letters) whose mirror images are not in the set.
    Even a colour set's flags and symbols are not lost to it: 10 minutes of one busy core on Twemoji
    scored FID 15.7 and 17.2 without flips (two seeds) against 14.6-16.1 with them, and in the emoji
    judge's features the real images half mirrored score about the real floor (colour_budget.py's
    reference rows: 3.1 against 3.0 on Twemoji, 3.9 against 3.5 on the emoji)."""
    return channels == 3


# How a run's samples are drawn unless asked otherwise: the guidance scale, the sampler and its steps,
# by the set's channels. Digits: guidance 2 with x0 clipping drew the digit asked 95% of the time
# against 72% at 1 (guidance.DEFAULT_GUIDANCE), and 10 DDIM steps scored the best FID per network call
# on the budget models (generation.DEFAULT_SAMPLER, samplers.DEFAULT_STEPS). Colour emoji after 10
# minutes of one busy core (benchmarks/colour_budget.py): FID 53 / 45 / 49 and fidelity 0.40 / 0.51 /
# 0.58 at guidance 2 / 3 / 4 (a colour model that saw its classes less sharply needs more); with the
# patch stem at guidance 3, FID 37 at 10 DDIM steps, 30 at 25: colour detail needs an accurate solve,
# and DPM-Solver++(2M) gives it in fewer calls: on the Twemoji run, FID 16.2 at 15 steps against
# DDIM's 20.5 at 25 (16.3 unipc 15, 16.4 ipndm 15, 16.5 dpmpp-2m 25: solved, more steps do not help).
GUIDANCE = {1: DEFAULT_GUIDANCE, 3: 3.0}
SAMPLER = {1: None, 3: "dpmpp-2m"}  # None: generation.DEFAULT_SAMPLER
SAMPLE_STEPS = {1: None, 3: 15}  # None: the sampler's own default


def default_guidance(channels: int) -> float:
    return GUIDANCE[channels]


def default_sampler(channels: int) -> str | None:
    return SAMPLER[channels]


def default_sample_steps(channels: int) -> int | None:
    return SAMPLE_STEPS[channels]


def patch_for(image_size: int, channels: int, device_type: str, block_style: str, task: str = "generate") -> int:
    """The patch stem a new run gets when the user did not say. A CPU budget is short, and a 2x2 stem
    (pixel unshuffle) runs a colour 32x32 U-Net at 16x16 for a quarter of the cost per width: in 10
    minutes of one busy core the emoji set's auto model went from tiny without it to small with it,
    fidelity 0.40 -> 0.59 and FID 53 -> 43 at guidance 2 (benchmarks/colour_budget.py). Glyph sets
    (one channel) draw well without it and are left as they were; adm blocks stay exportable to
    diffusers, whose UNet2DModel has no such stem; super-resolution is all fine detail; on CUDA a
    budget affords the full resolution."""
    if device_type == "cpu" and channels == 3 and image_size >= 32 and block_style != "adm" and task == "generate":
        return 2
    return 1


def block_style_for(patch: int) -> str:
    """The U-Net blocks a new run gets when the user did not say: adm, which exports one to one to
    diffusers' UNet2DModel, and which trained as well as film in the same wall-clock minutes (10
    minutes of one busy core on the digits: 4,541 steps to film's 4,182, fidelity 0.993 and 0.995, FID
    4.27 and 5.10; benchmarks/block_styles.py). Behind a patch stem, which no UNet2DModel has, film
    blocks, as the colour recipe was measured with (patch_for); `--block-style film` keeps the
    course notebook's FiLM scaling anywhere."""
    return "film" if patch > 1 else "adm"


def prediction_for(patch: int) -> str:
    """What a new run's network predicts when the user did not say. eps, as DDPM, by default: it drew
    the digits of every benchmark here. v behind a patch stem, where one coarse pixel must predict
    four pixels of independent noise: on the emoji with a 2x2 stem, 10 minutes of one busy
    core, guidance 3 and 10 DDIM steps, v scored FID 27 and fidelity 0.75 where eps scored 37 and
    0.70 (benchmarks/colour_budget.py)."""
    return "v" if patch > 1 else "eps"


def min_snr_for(patch: int) -> float:
    """The min-SNR-gamma of a new run's loss when the user did not say (Hang et al. 2023: each image's
    error counts as its x0 error times min(SNR, gamma), so the nearly clean steps do not dominate).
    5, their choice, everywhere the digits were measured. Behind a patch stem (colour, v) a lower gamma
    weighs the noisy steps, where a sprite's shape is decided, more: 10 minutes of one busy core on
    Twemoji (benchmarks/colour_budget.py) scored FID 13.3 and 13.7 at gamma 1 and 14.9 at 2 against
    14.6-16.1 at 5 (four runs); with --seed 1, 16.1 at 1 against 22.1 at 5; --seed 2, 17.5 against
    18.7. On the emoji, 17.9 at 1 (fidelity 0.83, recall 0.35) against 17.0 and 18.1 at 5 (fidelity
    0.78-0.79, recall 0.41-0.47). All on an AMD EPYC Zen 4 (avx512_bf16, no AMX)."""
    return 1.0 if patch > 1 else 5.0


def unet_config(size: str, image_size: int, channels: int, context_dim: int,
                context_mode: str = CONTEXT_MODE, block_style: str = "film", text_dim: int = 0,
                cond_channels: int = 0, patch: int = 1) -> UNetConfig:
    """Halve the resolution until it reaches 8 or less (28 -> 14 -> 7); attend at 8x8 and below. A patch
    stem divides the image by `patch` before the first level."""
    if size not in MODEL_SIZES:
        raise UsageError(f"unknown model size {size!r}; choose one of auto, {', '.join(MODEL_SIZES)}")
    image_size = math.ceil(image_size / patch)
    resolutions = [image_size]
    while resolutions[-1] > 8 and resolutions[-1] % 2 == 0:
        resolutions.append(resolutions[-1] // 2)
    if len(resolutions) == 1:  # odd or tiny sizes: the U-Net pads to a multiple of 4
        resolutions = [image_size, math.ceil(image_size / 2), math.ceil(image_size / 4)]
    mults = tuple([1] + [2] * (len(resolutions) - 1))
    attention = tuple(i for i, r in enumerate(resolutions) if r <= 8 and i > 0)
    return UNetConfig(channels=channels, mults=mults, attention=attention, context_dim=context_dim,
                      context_mode=context_mode, block_style=block_style, text_dim=text_dim,
                      cond_channels=cond_channels, patch=patch, **MODEL_SIZES[size])


# The share of the run the EMA averages over: its 'horizon' 1 / (1 - decay) is EMA_SHARE x steps. A
# budget run ends at a tenth of its peak learning rate, still large, so its last weights are noisy and
# a longer average pays, up to a point: 10 minutes of one busy core (benchmarks/colour_budget.py) scored
# FID 14.6, 14.7, 15.2 and 16.1 on Twemoji with a fifth, 16.8 with a tenth, 15.6 with a quarter and 15.9
# with a third; 17.0 and 18.1 on the emoji with a fifth against 19.8 with a tenth; the digit demo held
# (two `undiffuse demo` side by side, `undiffuse eval --n 1000`: fidelity 0.985 and FID 5.34 with a
# fifth, 0.982 and 5.31 with a tenth).
EMA_SHARE = 0.2


def plan(steps: int, batch_size: int, lr: float | None = None, warmup: int | None = None,
         ema_decay: float | None = None) -> Plan:
    """Fill in what the user left to the recipe, from the number of steps the run will take."""
    lr = lr if lr is not None else peak_lr(batch_size)
    warmup = warmup if warmup is not None else max(10, min(1000, steps // 20))
    ema_decay = ema_decay if ema_decay is not None else min(0.9999, 1 - 1 / max(10, EMA_SHARE * steps))
    return Plan(steps=steps, lr=lr, warmup=min(warmup, steps), ema_decay=ema_decay)


def peak_lr(batch_size: int) -> float:
    """Up to 128 images a step, 2e-3 whatever the batch: at batch 32 on a 4-minute budget, 2e-3 and 4e-3
    drew the digit asked equally often, 1e-3 much less often (benchmarks/budget_recipe.py). Larger
    batches take less noisy steps: the peak grows with sqrt(batch) from there."""
    return 2e-3 * math.sqrt(max(1.0, batch_size / 128))


def lr_at(step: int, plan: Plan, done: float | None = None) -> float:
    """Linear warm-up over plan.warmup steps, then a cosine from the peak down to a tenth of it at the
    end of the run (down to 0, the EMA averaging calmer weights, scored FID 17.5 on Twemoji against
    14.6-16.1: benchmarks/colour_budget.py, 10 minutes of one busy core). done: the share of the run
    behind us (of a time budget: the elapsed share); by default step / plan.steps."""
    if step < plan.warmup:
        return plan.lr * (step + 1) / plan.warmup
    done = step / plan.steps if done is None else done
    warm = plan.warmup / plan.steps
    progress = min(1.0, max(0.0, (done - warm) / max(1e-9, 1 - warm)))
    return plan.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def ema_decay_at(step: int, plan: Plan) -> float:
    """The EMA warms up as (1 + step) / (10 + step), so early averages are not dominated by noise."""
    return min(plan.ema_decay, (1 + step) / (10 + step))
