"""Fine-tuning: what a run inherits from its base run, and training on one class of the data.

A run keeps its base's conditioning: classes, text (new images need captions, by the rules of
training: a caption file, a folder's metadata, or the base's templates/attributes, inherited), or
none; an upscale run stays one, with its factor."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from .. import checkpoint as ckpt
from ..conditions import class_id
from ..data import ImageData
from ..data.captions import wants_captions
from ..errors import DataError, UsageError
from ..run import BaseRun, RunRecord
from . import distill
from .config import TrainConfig
from .recipe import MODEL_SIZES


def only_class(data: ImageData, label: str) -> ImageData:
    """The images of one class (by name or id), keeping their labels."""
    if data.labels is None or data.labels.ndim != 1:
        raise DataError(f"--label {label} picks a class, but {data.source} has no class labels")
    return data.subset(data.labels == class_id(str(label), data.class_names))


def base_run(folder: str) -> BaseRun:
    """Where a fine-tuning run came from: the base folder, resolved, and the step of its EMA weights."""
    return BaseRun(str(Path(folder).resolve()), ckpt.saved_step(Path(folder) / ckpt.EMA))


NAMED_CAPTIONS = ("templates", "attributes", "names")  # caption rules, not a file of this data's own


def inherit(cfg: TrainConfig, base: RunRecord) -> TrainConfig:
    """The settings a fine-tuning run inherits from its base: model, shape, schedule, prediction, task
    and factor, a text run's caption rule unless given; a quarter of the base's peak learning rate
    unless given, so the model adapts without forgetting. A distilled student (distill_calls) changes
    what it predicts, and more (distill.student_options)."""
    captions = cfg.source.captions
    if wants_captions(captions) and base.text is None:
        raise UsageError(f"captions need a text run to fine-tune; '{cfg.source.base}' is not one (train a new "
                         "run with --captions)")
    if captions is None and base.text is not None and base.train.get("captions") in NAMED_CAPTIONS:
        captions = base.train["captions"]
    model = base.model_size if base.model_size in MODEL_SIZES else cfg.diffusion.model  # an imported network has none
    calls = cfg.optim.distill_calls
    student = {} if calls is None else distill.student_options(base, calls, cfg.source.base)
    lr = base.plan.lr / 4 if calls is None else base.plan.lr  # a student's output changes meaning: eps to v
    return cfg.updated(**{
        "model": model, "image_size": base.image_size, "channels": base.channels, "schedule": base.schedule.name,
        "T": base.schedule.T, "zero_snr": base.schedule.zero_snr, "prediction": base.prediction,
        "context_mode": base.unet.context_mode, "block_style": base.unet.block_style, "patch": base.unet.patch,
        "task": base.task, "factor": base.factor, "captions": captions,
        "lr": cfg.optim.lr if cfg.optim.lr is not None else lr, **student})


def fit_to(data: ImageData, base: RunRecord) -> ImageData:
    """Keep the labels when they name the base's classes, or caption the images of a text run;
    otherwise train on the null context."""
    if base.text is not None or (data.labels is not None and data.class_names == base.class_names):
        return data
    return dataclasses.replace(data, labels=None, class_names=())
