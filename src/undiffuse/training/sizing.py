"""Which model a new run trains, in which precision, and its plan.

With a step budget: the size asked for (auto: small) and the recipe for that many steps. With a time
budget: a step of each size is timed on real batches, smallest first, and the largest that still sees
MIN_IMAGES images in the budget is kept; its step count is a first estimate that the deadline
re-fits as training goes (budget.py). The precision (precision.py) is decided on the same timed
steps: where auto has bf16 units to try, each size is timed in fp32 and in bf16, and its speed is
that of the faster, so a budget spends what the machine's arithmetic affords.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import torch

from ..conditions.text import CONTEXT_TOKENS
from ..errors import UsageError
from ..memory import require
from ..precision import Precision, choose as choose_precision, measure
from ..run import MAX_STEPS, Plan
from ..unet import UNet, UNetConfig, count_parameters
from .budget import Stopwatch
from .learner import Learner
from .recipe import MIN_IMAGES, plan
from .setup import Setup

# Bytes a training step keeps per element of the estimate below (activation_elements): float32 is 4,
# and autograd keeps some tensors not counted there (GroupNorm statistics, the allocator's slack).
# Calibrated once against torch's real peak on a CPU (benchmarks/step_memory.py: the peak resident
# memory of a forward and backward pass at two batch sizes, so that the fixed part cancels): per
# image, measured / (4 bytes x elements) was 1.32 (tiny, 16x16), 1.07 (tiny, 28), 1.08 (small, 16),
# 1.09 (small, 28), 1.02 (small, 32), 0.86 (small, 64), 1.21 (medium, 16), 1.03 (medium, 28);
# e.g. small at 28x28: 8.19 MB measured, 7.54 MB counted; an upscale run (--options '{"task": "upscale",
# "factor": 4}') 1.05 (tiny, 28) and 1.02 (small, 28), a text run ('{"captions": "templates"}', its
# cross-attention counted) 0.94 and 0.98. 1.3 covers them, so a step the estimate
# admits fits, and memory.require leaves a fifth of the free memory beside it.
BYTES_PER_ELEMENT = 4 * 1.3
# Measured the same way at 28x28 (small, medium), as shares of the fp32 step's memory per image:
# autocast to bf16 keeps 0.51-0.52 of it (half-size copies of most activations); gradient
# checkpointing 0.79 and 0.58 (the blocks' inputs, the skips, one block's recomputed inside).
REDUCED = {"fp32": 1.0, "bf16": 0.6, "fp16": 0.6, "auto": 1.0}  # auto: not yet decided, so fp32's
CHECKPOINTED = 0.8


def choose(setup: Setup, watch: Stopwatch) -> tuple[str, Plan, Precision]:
    """(size, plan, precision); a time budget's clock (`watch`) already runs, and the timing counts against it."""
    o = setup.cfg.optim
    if o.budget_seconds is None:
        size, plan_ = step_budget(setup)
        return size, plan_, step_precision(Learner(setup, size), watch.clock)[0]
    chosen = None
    for size in setup.sizes():
        try:
            check_step_memory(setup, size)
        except UsageError:
            if chosen is None:
                raise
            break  # larger sizes need more memory still
        learner = Learner(setup, size)
        precision, timed = step_precision(learner, watch.clock)
        seconds = seconds_per_step(learner, watch.clock, timed)
        room = 0.95 * (o.budget_seconds - watch.elapsed)  # a first estimate: the deadline decides
        steps = min(MAX_STEPS, max(1, int(room / seconds)))
        if chosen is not None and steps * o.batch_size < MIN_IMAGES:
            break  # larger sizes are slower still
        chosen = size, steps, precision
    size, steps, precision = chosen
    return size, plan(steps, o.batch_size, o.lr, o.warmup, o.ema_decay), precision


def step_budget(setup: Setup) -> tuple[str, Plan]:
    """A step budget's size and plan, known before anything is built."""
    o, sizes = setup.cfg.optim, setup.sizes()
    size = "small" if len(sizes) > 1 else sizes[0]
    check_step_memory(setup, size)
    return size, plan(o.steps, o.batch_size, o.lr, o.warmup, o.ema_decay)


def step_precision(learner: Learner, clock: Callable[[], float]) -> tuple[Precision, dict[str, float]]:
    """The precision of the run's option (auto: the faster where bf16 units may help; precision.py),
    set on `learner`, with the seconds of the steps its choice timed (none where nothing was timed)."""
    times: dict[str, float] = {}

    def timer(workload, names):
        times.update(measure(workload, names, clock=clock))
        return times

    learner.precision = choose_precision(learner.setup.cfg.optim.precision, learner.setup.device,
                                         functools.partial(_step_in, learner), timer=timer)
    return learner.precision, times


def seconds_per_step(learner: Learner, clock: Callable[[], float], timed: dict[str, float]) -> float:
    """A whole step in the learner's precision: its forward and backward as `timed` (or timed now, on
    real batches, without touching the weights), and ~5% for the optimizer step and the EMA."""
    chosen = learner.precision
    if chosen.name not in timed:
        timed = measure(functools.partial(_step_in, learner), (chosen.name,), clock=clock)
        learner.precision = chosen  # the workload set the probe's
    return timed[chosen.name] * 1.05


def _step_in(learner: Learner, precision: Precision) -> None:
    """Forward and backward of one batch in `precision`; the gradients are dropped."""
    learner.precision = precision
    learner.probe_backward()
    learner.model.zero_grad(set_to_none=True)
    if learner.setup.device.type == "cuda":
        torch.cuda.synchronize()


# --- the memory of a training step ------------------------------------------------------------------

def check_step_memory(setup: Setup, size: str) -> None:
    """Refuse (UsageError: the figure and the limit) a step that cannot fit, before anything is built."""
    o, r = setup.cfg.optim, setup.cfg.runtime
    require(f"a training step of {o.batch_size} images of {setup.data.image_size}x{setup.data.image_size} "
            f"({size} model{f', {r.grad_accum} micro-batches' if r.grad_accum > 1 else ''})",
            step_bytes(setup, size), setup.device,
            hint="lower --batch-size, or raise --grad-accum to compute the same step in parts")


def step_bytes(setup: Setup, size: str) -> int:
    """The memory of one step on this process: the activations of its part of a micro-batch, the
    weights with their EMA, gradients and two Adam moments, and the global batch (its noise, its
    low-res inputs or prompt tokens)."""
    cfg, data = setup.cfg, setup.data
    unet = setup.unet_config(size)
    micro = math.ceil(math.ceil(cfg.optim.batch_size / cfg.runtime.grad_accum) / setup.world.size)
    per_image = activation_elements(unet, data.image_size) * BYTES_PER_ELEMENT * REDUCED[cfg.optim.precision]
    per_image *= CHECKPOINTED if cfg.runtime.grad_checkpointing else 1.0
    with torch.device("meta"):
        weights = 5 * 4 * count_parameters(UNet(unet))
    images = 2 + (unet.cond_channels > 0)  # x0 and its noise, and an upscaling run's low-res input
    batch = 4 * cfg.optim.batch_size * (images * data.channels * data.image_size ** 2 + CONTEXT_TOKENS * unet.text_dim)
    return int(micro * per_image + weights + batch)


def activation_elements(unet: UNetConfig, image_size: int) -> int:
    """The elements per image that a forward pass of this U-Net keeps for its backward pass: each
    residual block's normalised, activated and convolved maps, each attention's q, k, v and weights."""
    padded = math.ceil(image_size / unet.multiple) * unet.multiple
    side = padded // unet.patch  # the side of the first level, after a patch stem
    chans, blocks = unet.level_channels, unet.blocks
    skips, c, total = [chans[0]], chans[0], 3 * (unet.channels + unet.cond_channels) * padded * padded
    for i, c_out in enumerate(chans):  # the encoder
        area = (side >> i) ** 2
        for k in range(blocks):
            total += _block_elements(unet, c if k == 0 else c_out, c_out, area, i in unet.attention)
        c = c_out
        skips += [c] * (blocks + (i < len(chans) - 1))
        total += c * area // 4 if i < len(chans) - 1 else 0
    total += 2 * _block_elements(unet, c, c, (side >> (len(chans) - 1)) ** 2, True)  # the middle
    for i, c_out in reversed(list(enumerate(chans))):  # the decoder, each block eating a skip
        area = (side >> i) ** 2
        for _ in range(blocks + 1):
            skip = skips.pop()
            total += (c + skip) * area + _block_elements(unet, c + skip, c_out, area, i in unet.attention)
            c = c_out
        total += 2 * c * area * 4 if i > 0 else 0
    return total + 3 * c * side * side


def _block_elements(unet: UNetConfig, c_in: int, c_out: int, area: int, attends: bool) -> int:
    """A residual block (its input normalised and activated, two convolutions, the modulated map),
    its attention (the normalised input, q, k, v, the output, the weights of every head), and a text
    network's cross-attention to the prompt's tokens (the same, with keys and values per token)."""
    elements = (3 * c_in + 6 * c_out) * area
    if attends:
        heads = max(1, c_out // unet.head_channels)
        elements += 6 * c_out * area + 2 * heads * area * area
        if unet.text_dim:
            elements += 5 * c_out * area + 2 * c_out * CONTEXT_TOKENS + 2 * heads * area * CONTEXT_TOKENS
    return elements
