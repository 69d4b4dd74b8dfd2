"""What a run trains on and where: its options completed, its data, its classes, its device.

A new run, a resumed run and a dry run resolve the same way, and only then is a network built:
`new_setup` from the options (and a fine-tuning run's base), `resumed_setup` from a run's record.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..conditions.text import CONTEXT_TOKENS, CaptionTable, TextEncoder, canonical, load_table
from ..data import ImageData, load_data, name_contexts
from ..data.captions import captions_for, own_captions, wants_captions
from ..device import pick_device
from ..errors import CheckpointError, UsageError
from ..run import CAPTIONS, BaseRun, RunRecord, read_run
from ..schedule import NoiseSchedule, make_schedule
from ..unet import UNetConfig
from . import distributed as dist
from .config import TrainConfig
from .distill import stand_in_data, student_unet
from .finetune import base_run, fit_to, inherit, only_class
from .recipe import (MODEL_SIZES, block_style_for, default_batch_size, default_guidance, default_sample_steps,
                     default_sampler, flips, min_snr_for, patch_for, prediction_for, unet_config)

# torch.compile on a CPU trained 0.98-1.21x as fast as eager after 40-75 s of compiling
# convolutions, and a CPU budget of minutes does not win the compile time back. Refused there.
COMPILE_ON_CPU = False


@dataclass(frozen=True)
class Setup:
    cfg: TrainConfig  # complete: the batch size for the device, a fine-tuning run's inherited options
    data: ImageData  # fitted to the classes the model conditions on
    context_dim: int  # 0: unconditional
    class_names: tuple[str, ...]
    finetuned_from: BaseRun | None
    device: torch.device  # this process's device
    world: dist.World  # the torchrun processes (one when not under torchrun)
    schedule: NoiseSchedule
    captions: CaptionTable | None = None  # a text run's distinct captions, encoded once, on `device`; row 0 is ""
    caption_index: Tensor | None = None  # (N,) int64: each image's row of `captions`
    # The record whose network this run trains, whatever size made it (an imported one too): a
    # fine-tuning run's base, or a resumed run itself. None: a new run, the recipe's for its size.
    network: RunRecord | None = None

    @property
    def text_dim(self) -> int:
        return 0 if self.captions is None else self.captions.pooled.shape[1]

    def sizes(self) -> list[str]:
        """The model sizes this run may take: its network's, the one asked, or all of them (auto)."""
        if self.network is not None:
            return [self.network.model_size]
        model = self.cfg.diffusion.model
        return list(MODEL_SIZES) if model == "auto" else [model]

    def unet_config(self, size: str) -> UNetConfig:
        """The network this run trains at `size`: the one place its shape is read off the setup."""
        if self.network is not None:
            return self.network.unet
        d, data = self.cfg.diffusion, self.data
        return unet_config(size, data.image_size, data.channels, self.context_dim, d.context_mode, d.block_style,
                           self.text_dim, data.channels if self.cfg.source.task == "upscale" else 0, d.patch)


def new_setup(cfg: TrainConfig, data: ImageData | None = None) -> Setup:
    """A new run's setup. A fine-tuning run (cfg base) takes its base's model, shape and classes."""
    device, world = hardware(cfg)
    if cfg.optim.batch_size is None:
        cfg = cfg.updated(batch_size=default_batch_size(device.type))
    base = read_run(cfg.source.base) if cfg.source.base else None
    if base is not None:
        cfg = inherit(cfg, base)
    data = data if data is not None else load(cfg)
    if base is not None:
        data, context_dim, names = fit_to(data, base), base.unet.context_dim, base.class_names
    else:
        context_dim = data.num_classes if cfg.source.conditional and data.labels is not None else 0
        names = data.class_names if context_dim else ()
    cfg = data_choices(cfg, data, device.type)
    finetuned_from = base_run(cfg.source.base) if base is not None else None
    if cfg.source.task == "upscale":  # super-resolution: unconditional in class, whatever labels the data has
        context_dim, names = 0, ()
        cfg = upscale_factor(cfg, data.image_size)
    text = {}
    if wants_captions(cfg.source.captions) or (base is not None and base.text is not None):
        context_dim, names = 0, ()  # text, not classes: the labels served only to caption the images
        text = encode_captions(cfg, data, device)
    if base is not None and cfg.optim.distill_calls:  # the teacher's network, taking the guidance scale
        base = dataclasses.replace(base, unet=student_unet(base))
    return Setup(cfg, data, context_dim, names, finetuned_from, device, world, _schedule(cfg), **text, network=base)


def data_choices(cfg: TrainConfig, data: ImageData, device_type: str) -> TrainConfig:
    """The options the user left to the recipe that follow from the data and the device, decided once
    and recorded with the run's options (config.json's train, and unet.patch), so a resume reads them back."""
    choices = {}
    s = cfg.source
    if s.captions is None and not s.base and s.task == "generate" and s.conditional and own_captions(data):
        choices["captions"] = own_captions(data)  # a folder that captions its images trains on the captions
    if cfg.source.flip is None:
        choices["flip"] = flips(data.channels)
    if cfg.diffusion.guidance is None:  # unconditional runs ignore it
        choices["guidance"] = default_guidance(data.channels)
    # the steps belong to the sampler: a sampler typed without steps keeps that sampler's own default;
    # upscaling keeps the upscale command's sampler: the measurements behind recipe.SAMPLER are of generation
    if cfg.runtime.sampler is None and default_sampler(data.channels) is not None and s.task == "generate":
        choices["sampler"] = default_sampler(data.channels)
        if cfg.runtime.sample_steps is None and default_sample_steps(data.channels) is not None:
            choices["sample_steps"] = default_sample_steps(data.channels)
    patch = cfg.diffusion.patch
    if patch is None:
        patch = choices["patch"] = patch_for(data.image_size, data.channels, device_type, cfg.diffusion.block_style,
                                             cfg.source.task)
    if cfg.diffusion.block_style is None:
        choices["block_style"] = block_style_for(patch)
    if cfg.diffusion.prediction is None:
        choices["prediction"] = prediction_for(patch)
    if cfg.diffusion.min_snr is None:
        choices["min_snr"] = min_snr_for(patch)
    return cfg.updated(**choices) if choices else cfg


def resumed_setup(cfg: TrainConfig, record: RunRecord, data: ImageData | None = None,
                  run: Path | None = None) -> Setup:
    """A resumed run's setup: its data read again, fitted to the classes its record names; a text
    run's captions read again and indexed into its stored caption table (RUN/captions.safetensors)."""
    device, world = hardware(cfg)
    data = data if data is not None else load(cfg)
    if record.finetuned_from is not None:
        data = fit_to(data, record)
    text = {}
    if record.text is not None:
        stored = run / CAPTIONS if run is not None else None
        text = encode_captions(cfg, data, device, load_table(stored) if stored and stored.is_file() else None)
    return Setup(cfg, data, record.unet.context_dim, record.class_names, record.finetuned_from, device, world,
                 record.schedule.build(), **text, network=record)


def upscale_factor(cfg: TrainConfig, image_size: int) -> TrainConfig:
    """An upscale run's options with its factor (default 4), which must divide the image size."""
    factor = cfg.source.factor or 4
    if image_size % factor:
        raise UsageError(f"--factor {factor} does not divide the image size {image_size}")
    return cfg.updated(factor=factor)


def encode_captions(cfg: TrainConfig, data: ImageData, device: torch.device,
                    table: CaptionTable | None = None) -> dict:
    """{captions, caption_index}: each distinct caption of the images encoded once (never per step),
    or looked up in `table`, a resumed run's stored one."""
    texts = captions_for(data, cfg.source.captions, seed=cfg.optim.seed, allow_empty=True)
    if table is None:
        index, table = TextEncoder.load(device).encode_unique(texts, max_tokens=CONTEXT_TOKENS)
    else:
        rows = {text: i for i, text in enumerate(table.texts)}
        missing = [t for t in texts if canonical(t) not in rows]
        if missing:
            raise CheckpointError(f"caption {missing[0][:60]!r} is not in the run's {CAPTIONS}: the captions "
                                  "changed since the run began")
        index = torch.tensor([rows[canonical(t)] for t in texts], dtype=torch.int64)
    return {"captions": table.to(device), "caption_index": index}


def hardware(cfg: TrainConfig) -> tuple[torch.device, dist.World]:
    """This process's device and the torchrun world it belongs to."""
    device = pick_device(cfg.runtime.device)
    if cfg.runtime.compile and device.type == "cpu" and not COMPILE_ON_CPU:
        raise UsageError("--compile is for CUDA: on a CPU it trained 0.98-1.21x as fast as eager after 40-75 s "
                         "of compiling (benchmarks/cpu_levers.py), too little for the runs a CPU affords")
    world = dist.setup(device)
    return dist.local_device(device, world), world


def load(cfg: TrainConfig) -> ImageData:
    s = cfg.source
    if cfg.optim.distill_calls:  # a student learns from its teacher alone
        return stand_in_data(read_run(s.base))
    data = load_data(s.data, labels=s.labels, image_size=s.image_size, channels=s.channels)
    if s.context_names:
        data = name_contexts(data, s.context_names)
    if s.only_label is not None:
        data = only_class(data, s.only_label)
    return data


def _schedule(cfg: TrainConfig) -> NoiseSchedule:
    d = cfg.diffusion
    return make_schedule(d.schedule, d.T, d.zero_snr)
