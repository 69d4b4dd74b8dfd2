"""The pictures a run draws as it trains: grids from its EMA weights (one image per class, the first
training captions of a text run, an upscale run's first training images upscaled, or 8
unconditional), and its loss curve."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from ..conditions.lowres import DEFAULT_AUG, LowRes, condition, downsample
from ..generate import DEFAULT_GUIDANCE, sample_images
from ..precision import FP32, Precision
from ..viz import save_grid, save_loss_curve
from .card import write_card
from .log import QUARTER_COLUMNS, read_log_columns
from .setup import Setup

LOSS_CURVE = "loss.png"


class GridSchedule:
    """Which grids a run draws: `grids` evenly through it by its done share, the last at its end, and
    at most one a step (a run of fewer steps than grids draws fewer: the rest would repeat them)."""

    def __init__(self, grids: int, done: float):
        self.grids, self.drawn = grids, math.floor(done * grids + 1e-9)  # a resumed run drew those before

    def due(self, done: float, finished: bool) -> bool:
        """Whether a grid is due now, counting it as drawn."""
        if self.drawn >= self.grids or not (finished or done >= (self.drawn + 1) / self.grids):
            return False
        self.drawn = self.grids if finished else self.drawn + 1
        return True


def write_grid(setup: Setup, ema: torch.nn.Module, run: Path, step: int, precision: Precision = FP32) -> Path:
    """RUN/samples/stepN.png, sampled in the run's training precision."""
    labels = list(range(setup.context_dim)) if setup.context_dim else None
    n = len(labels) if labels else 8
    text, captions = None, setup.captions
    if captions is not None and len(captions) > 1:  # the first training captions, one image each
        rows = torch.arange(1, min(9, len(captions)))
        text, n = captions.batch(rows), len(rows)
    images = sample_images(ema, setup.schedule, setup.cfg.diffusion.prediction, n, labels=labels,
                           image_size=setup.data.image_size, seed=0, text=text, low=grid_low(setup, n),
                           guidance=_guidance(setup) if labels or text is not None else 1.0, precision=precision,
                           steps=_steps(setup))
    path = run / "samples" / f"step{step:07d}.png"
    path.parent.mkdir(exist_ok=True)
    save_grid(images, path, nrow=n)
    return path


def _guidance(setup: Setup) -> float:
    """The run's own guidance (recipe.GUIDANCE), DEFAULT_GUIDANCE for a run resumed from before it was recorded."""
    guidance = setup.cfg.diffusion.guidance
    return DEFAULT_GUIDANCE if guidance is None else guidance


def _steps(setup: Setup) -> int | None:
    steps = setup.cfg.runtime.sample_steps
    return None if steps is None else min(steps, setup.schedule.T)


def grid_low(setup: Setup, n: int) -> LowRes | None:
    """An upscale run's grid conditions: its first n training images, downsampled, at the sampling level."""
    if setup.cfg.source.task != "upscale":
        return None
    images, factor = setup.data.images[:n].float(), setup.cfg.source.factor
    generator = torch.Generator().manual_seed(0)
    low = condition(downsample(images, factor), factor, torch.full((len(images),), DEFAULT_AUG),
                    torch.randn(images.shape, generator=generator))
    return low.rows(0, n, setup.device)


def write_summary(run: Path, saved_step: int | None = None) -> None:
    """The run as it stands: its loss curve (RUN/loss.png) and model card (RUN/README.md)."""
    write_loss_curve(run, saved_step)
    write_card(run, saved_step=saved_step)


def write_loss_curve(run: Path, saved_step: int | None = None) -> Path:
    """RUN/loss.png from RUN/log.csv, written atomically; a failed write is a CheckpointError (one
    line) that says the checkpoint of `saved_step` is safe."""
    log = read_log_columns(run)
    path = run / LOSS_CURVE
    quarters = {name: log[name] for name in QUARTER_COLUMNS}
    try:
        ckpt.atomic_write(path, lambda p: save_loss_curve(log["step"], log["loss"], p,
                                                          title=f"training loss: {run.name}", quarters=quarters))
    except OSError as e:
        kept = f"; the checkpoint of step {saved_step} is saved" if saved_step is not None else ""
        raise ckpt.CheckpointError(f"cannot write the loss curve {path} ({ckpt.write_failure(e)}){kept}") from None
    return path
