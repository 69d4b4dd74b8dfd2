"""Training: the config, the recipe that follows from the budget, the objective, the loop.

    config.py       TrainConfig, the options
    recipe.py       model sizes, learning rate, warm-up and EMA from the steps a budget affords
    budget.py       a time budget as a deadline
    objective.py    the loss
    trainer.py      the loop: Trainer, checkpoints, grids, resume
    log.py          log.csv
    folder.py       creating and replacing run folders
    finetune.py     what a fine-tuning run inherits
    distributed.py  torchrun data parallelism
    signals.py      stopping at a step boundary on SIGINT/SIGTERM
"""
from __future__ import annotations

from pathlib import Path

from ..errors import TrainingDiverged
from .config import TrainConfig
from .log import read_log
from .objective import diffusion_loss
from .trainer import Result, Trainer


def train(cfg: TrainConfig, run: str | Path, **options) -> Result:
    """Train a new run folder from `cfg`; options go to Trainer (overwrite) and train (progress)."""
    overwrite = options.pop("overwrite", False)
    return Trainer(cfg, run, overwrite=overwrite).train(**options)


__all__ = ["Result", "TrainConfig", "Trainer", "TrainingDiverged", "diffusion_loss", "read_log", "train"]
