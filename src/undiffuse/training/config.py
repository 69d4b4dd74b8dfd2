"""The training options: one frozen dataclass, checked when it is built from flags, TOML or config.json."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import get_type_hints

import torch

from ..errors import UsageError
from ..parameterization import PREDICTIONS
from ..schedule import SCHEDULES
from ..unet import CONTEXT_MODES
from .recipe import CONTEXT_MODE, MODEL_SIZES

DEFAULT_MINUTES = 10.0


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TrainConfig:
    data: str = "mnist"  # data spec: mnist, digits, an image folder or a .npy array
    labels: str | None = None  # optional .npy of class ids for the images
    image_size: int | None = None  # side in pixels; None: inferred from the data
    channels: int | None = None  # 1 or 3; None: inferred from the data
    conditional: bool = True  # condition on the class when the data has labels
    context_names: str | None = None  # comma-separated names of the classes or context attributes
    base: str | None = None  # fine-tune: the run folder whose EMA weights this run starts from
    only_label: str | None = None  # fine-tune: train on the images of this class only (name or id)
    steps: int | None = None  # optimizer steps; None: as many as `minutes` affords
    minutes: float | None = None  # wall-clock budget; used when steps is None (default 10)
    batch_size: int | None = None  # images per optimizer step; None: 32 on a CPU, 128 on CUDA (recipe.py)
    model: str = "auto"  # tiny, small, medium, large, or auto: the largest the budget trains well
    lr: float | None = None  # peak learning rate; None: from the recipe
    warmup: int | None = None  # warm-up steps; None: from the recipe
    ema_decay: float | None = None  # None: the EMA averages over about the last tenth of the run
    grad_clip: float = 1.0  # max global gradient norm
    schedule: str = "linear"  # noise schedule: linear, cosine or sigmoid
    zero_snr: bool = False  # rescale the schedule to zero terminal SNR (Lin et al. 2023); needs prediction v or x0
    T: int = 1000  # diffusion steps
    prediction: str = "eps"  # what the network predicts: eps, x0 or v
    min_snr: float | None = 5.0  # min-SNR-gamma loss weighting (Hang et al. 2023); 0 or None: plain MSE
    cond_drop: float = 0.1  # probability of training on the null context (for guidance)
    context_mode: str = CONTEXT_MODE  # how the class reaches the U-Net: scale (FiLM), add (to the time embedding), both
    seed: int = 0  # seeds the weights, the batches and the noise
    checkpoint_minutes: float = 2.0  # save at least this often
    grids: int = 4  # sample grids written to RUN/samples during training
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    keep_checkpoints: int = 2  # checkpoints kept in RUN/checkpoints; resume falls back to an older one
    max_bad_steps: int = 5  # non-finite losses in a row (each step skipped) before training stops
    precision: str = "fp32"  # fp32, bf16 or fp16: autocast (fp16 adds loss scaling; slow on a CPU)
    grad_accum: int = 1  # micro-batches per step: the same update with 1/K of the activation memory
    compile: bool = False  # torch.compile the network (CUDA only: see COMPILE_ON_CPU)
    channels_last: bool = False  # NHWC memory layout: faster convolutions on recent GPUs, 1.07-1.21x on a CPU
    grad_checkpointing: bool = False  # recompute activations in the backward pass: less memory, slower

    def validate(self) -> None:
        """Reject absurd values before any work starts (ValueError with one line)."""
        positive = {"T": self.T, "keep_checkpoints": self.keep_checkpoints,
                    "max_bad_steps": self.max_bad_steps, "grad_accum": self.grad_accum}
        if self.min_snr is not None and not self.min_snr >= 0:
            raise UsageError(f"min_snr must be >= 0, got {self.min_snr}")
        for name in ("batch_size", "steps", "minutes", "lr", "warmup", "image_size", "checkpoint_minutes"):
            if getattr(self, name) is not None:
                positive[name] = getattr(self, name)
        for name, value in positive.items():
            if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
                raise UsageError(f"{name} must be positive, got {value}")
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("prediction", self.prediction, PREDICTIONS)
        if self.zero_snr and self.prediction == "eps":
            raise UsageError("zero_snr needs prediction v or x0: with no signal left at the last step, "
                             "the noise says nothing about the image")
        _choice("model", self.model, ("auto", *MODEL_SIZES))
        _choice("precision", self.precision, PRECISIONS)
        _choice("context_mode", self.context_mode, CONTEXT_MODES)
        if self.batch_size is not None and self.grad_accum > self.batch_size:
            raise UsageError(f"grad_accum {self.grad_accum} splits a batch of {self.batch_size} into empty parts")
        if not 0 <= self.cond_drop < 1:
            raise UsageError(f"cond_drop must lie in [0, 1), got {self.cond_drop}")
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise UsageError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.grids < 0 or self.grad_clip <= 0:
            raise UsageError("grids must be >= 0 and grad_clip > 0")
        if self.T < 2 or self.T > 100_000:
            raise UsageError(f"T must lie in [2, 100000], got {self.T}")

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise UsageError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        hints = get_type_hints(cls)
        for name, value in values.items():  # a JSON or TOML value of the wrong type fails here, not mid-run
            if not _has_type(value, hints[name]):
                raise UsageError(f"training option {name} must be {hints[name]}, got {value!r}")
        return cls(**values)


def _has_type(value, hint) -> bool:
    kinds = getattr(hint, "__args__", (hint,))
    if value is None:
        return type(None) in kinds
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int) and float in kinds:
        return True
    return any(k is not type(None) and isinstance(value, k) for k in kinds)


def _choice(name: str, value: str, options) -> None:
    if value not in options:
        raise UsageError(f"unknown {name} {value!r}; choose one of {', '.join(options)}")
