"""The pictures a run draws as it trains: grids from its EMA weights (one image per class, the first
training captions of a text run, an upscale run's first training images upscaled, or 8
unconditional), and its loss curve."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from ..conditions import Classes, Condition
from ..conditions.lowres import DEFAULT_AUG, condition, downsample
from ..conditions.prompt import Prompt
from ..generation import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, sample_images
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
    cond, n = grid_condition(setup)
    images = sample_images(ema, setup.schedule, setup.cfg.diffusion.prediction, n, cond=cond,
                           image_size=setup.data.image_size, seed=0, guidance=_guidance(setup), precision=precision,
                           sampler=setup.cfg.runtime.sampler or DEFAULT_SAMPLER, steps=_steps(setup))
    path = run / "samples" / f"step{step:07d}.png"
    path.parent.mkdir(exist_ok=True)
    ckpt.atomic_write(path, lambda p: save_grid(images, p, nrow=n))  # replaces, never writes through, a link
    return path


def _guidance(setup: Setup) -> float:
    """The run's own guidance (recipe.GUIDANCE), DEFAULT_GUIDANCE for a run resumed from before it was recorded."""
    guidance = setup.cfg.diffusion.guidance
    return DEFAULT_GUIDANCE if guidance is None else guidance


def _steps(setup: Setup) -> int | None:
    steps = setup.cfg.runtime.sample_steps
    return None if steps is None else min(steps, setup.schedule.T)


def grid_condition(setup: Setup) -> tuple[Condition | None, int]:
    """What a training grid draws, and how many images: one of each class; the first training captions,
    one image each; an upscale run's first training images, downsampled; 8 unconditional images."""
    if setup.context_dim:
        return Condition(Classes.of(torch.eye(setup.context_dim, device=setup.device))), setup.context_dim
    captions = setup.captions
    if captions is not None and len(captions) > 1:
        rows = torch.arange(1, min(9, len(captions)))
        return Condition(prompt=Prompt(captions.batch(rows))), len(rows)
    if setup.cfg.source.task == "upscale":
        images, factor = setup.data.images[:8].float(), setup.cfg.source.factor
        generator = torch.Generator().manual_seed(0)
        low = condition(downsample(images, factor), factor, torch.full((len(images),), DEFAULT_AUG),
                        torch.randn(images.shape, generator=generator))
        return Condition(low=low.rows(slice(None), setup.device)), len(images)
    return None, 8


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
