"""Which model a new run trains, and its plan.

With a step budget: the size asked for (auto: small) and the recipe for that many steps. With a time
budget: a step of each size is timed on real batches, smallest first, and the largest that still sees
MIN_IMAGES images in the budget is kept; its step count is a first estimate that the deadline
re-fits as training goes (budget.py).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..run import Plan
from .budget import Stopwatch
from .learner import Learner
from .recipe import MIN_IMAGES, MODEL_SIZES, plan
from .setup import Setup


def choose(setup: Setup, watch: Stopwatch) -> tuple[str, Plan]:
    """(size, plan); a time budget's clock (`watch`) already runs, and the timing counts against it."""
    o, model = setup.cfg.optim, setup.cfg.diffusion.model
    if o.budget_seconds is None:
        return step_budget(setup)
    chosen = None
    for size in list(MODEL_SIZES) if model == "auto" else [model]:
        room = 0.95 * (o.budget_seconds - watch.elapsed)  # a first estimate: the deadline decides
        steps = max(1, int(room / seconds_per_step(Learner(setup, size), watch.clock)))
        if chosen is not None and steps * o.batch_size < MIN_IMAGES:
            break  # larger sizes are slower still
        chosen = size, steps
    size, steps = chosen
    return size, plan(steps, o.batch_size, o.lr, o.warmup, o.ema_decay)


def step_budget(setup: Setup) -> tuple[str, Plan]:
    """A step budget's size and plan, known before anything is built."""
    o, model = setup.cfg.optim, setup.cfg.diffusion.model
    return "small" if model == "auto" else model, plan(o.steps, o.batch_size, o.lr, o.warmup, o.ema_decay)


def seconds_per_step(learner: Learner, clock: Callable[[], float], repeats: int = 3) -> float:
    """Time forward + backward on real batches without touching the weights."""
    times = []
    for i in range(repeats + 1):
        start = clock()
        learner.backward(i)
        learner.model.zero_grad(set_to_none=True)
        if learner.setup.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(clock() - start)
    return sorted(times[1:])[len(times[1:]) // 2] * 1.05  # the optimizer step and EMA cost ~5%
