"""Training: the options, the recipe that follows from the budget, the objective, the loop.

    config.py       TrainConfig: four groups of options, each checked when built
    recipe.py       model sizes, learning rate, warm-up and EMA from the steps a budget affords
    budget.py       a time budget as a deadline, and the stopwatch of a run over its sessions
    objective.py    the loss, which the loop calls exactly as a user does
    setup.py        what a run trains on and where: options completed, data, classes, device
    sizing.py       which model a new run trains, and its plan
    learner.py      the network, its EMA, the optimizer, and one update
    trainer.py      the loop: Trainer.create / Trainer.resume, checkpoints, grids
    record.py       a run's config.json record <-> its TrainConfig
    resume.py       what --resume may change: a longer budget, the runtime options
    log.py          log.csv, the total loss and its four noise-level quarters
    folder.py       creating and replacing run folders, and holding their lock
    card.py         the model card, RUN/README.md
    finetune.py     what a fine-tuning run inherits
    distributed.py  torchrun data parallelism
    signals.py      stopping at a step boundary on SIGINT/SIGTERM
"""
from __future__ import annotations

from pathlib import Path

from ..errors import TrainingDiverged
from .config import TrainConfig
from .log import read_log
from .objective import diffusion_loss, draw_noise
from .trainer import Result, Trainer


def train(cfg: TrainConfig, run: str | Path, **options) -> Result:
    """Train a new run folder from `cfg`; options go to Trainer.create (overwrite) and train (progress)."""
    overwrite = options.pop("overwrite", False)
    return Trainer.create(cfg, run, overwrite=overwrite).train(**options)


__all__ = ["Result", "TrainConfig", "Trainer", "TrainingDiverged", "diffusion_loss", "draw_noise", "read_log",
           "train"]
