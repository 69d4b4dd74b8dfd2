"""Fine-tuning: what a run inherits from its base run, and training on one class of the data."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .. import checkpoint as ckpt
from ..conditions import class_id
from ..data import ImageData
from ..errors import DataError
from .config import TrainConfig


def only_class(data: ImageData, label: str) -> ImageData:
    """The images of one class (by name or id), keeping their labels."""
    if data.labels is None or data.labels.ndim != 1:
        raise DataError(f"--label {label} picks a class, but {data.source} has no class labels")
    keep = data.labels == class_id(str(label), data.class_names)
    return ImageData(data.images[keep], data.labels[keep], data.class_names, data.source, data.skipped)


def _base_record(base: str | None) -> dict | None:
    if base is None:
        return None
    return {"run": str(Path(base).resolve()), "step": ckpt.saved_step(Path(base) / ckpt.EMA)}


def _finetune_config(cfg: TrainConfig, base: dict) -> TrainConfig:
    """The settings a fine-tuning run inherits from its base: model, shape, schedule, prediction; a
    quarter of the base's peak learning rate unless given, so the model adapts without forgetting."""
    b = base["train"]
    return replace(cfg, model=base["model_size"], image_size=base["image_size"], channels=base["channels"],
                   schedule=b["schedule"], T=b["T"], zero_snr=b.get("zero_snr", False),
                   prediction=b["prediction"], context_mode=base["unet"].get("context_mode", "scale"),
                   lr=cfg.lr if cfg.lr is not None else base["plan"]["lr"] / 4)


def _fit_to_base(data: ImageData, base: dict) -> ImageData:
    """Keep the labels when they name the base's classes; otherwise train on the null context."""
    names = tuple(base.get("class_names", []))
    if data.labels is not None and data.class_names == names:
        return data
    return ImageData(data.images, None, (), data.source, data.skipped)
