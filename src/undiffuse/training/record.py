"""A run's config.json from the training side: the RunRecord of a run being trained, and the
TrainConfig a record was trained with (its "train" options plus the facts the record holds)."""
from __future__ import annotations

from pathlib import Path

from .. import checkpoint as ckpt
from ..errors import CheckpointError, UsageError
from ..conditions.text import CONTEXT_TOKENS, ENCODER_NAME
from ..precision import Precision
from ..run import IN_RECORD, Plan, RunRecord, ScheduleSpec, TextSpec
from ..unet import UNetConfig
from .config import TrainConfig
from .recipe import MODEL_SIZES
from .setup import Setup


def record_of(setup: Setup, size: str, plan: Plan, unet: UNetConfig, precision: Precision) -> RunRecord:
    cfg, data, d = setup.cfg, setup.data, setup.cfg.diffusion
    return RunRecord(unet=unet, model_size=size, schedule=ScheduleSpec(d.schedule, d.T, d.zero_snr),
                     prediction=d.prediction, image_size=data.image_size, channels=data.channels,
                     class_names=tuple(setup.class_names), data_source=data.source, num_images=len(data.images),
                     plan=plan, train={k: v for k, v in cfg.options().items() if k not in IN_RECORD},
                     finetuned_from=setup.finetuned_from, precision=precision,
                     text=TextSpec(ENCODER_NAME, setup.text_dim, CONTEXT_TOKENS) if setup.text_dim else None)


def options_of(record: RunRecord, run: Path) -> TrainConfig:
    """The options `record` was trained with; a CheckpointError naming the option when one is bad."""
    where = Path(run) / ckpt.CONFIG
    if "imported_from" in record.train:
        raise CheckpointError(f"{Path(run)} was imported ({record.train['imported_from']}), not trained here: it "
                              f"has nothing to resume; `undiffuse finetune {Path(run)} --data SPEC --out RUN2` "
                              "trains it on")
    if record.model_size not in MODEL_SIZES and record.finetuned_from is None:  # fine-tuned: its base's network
        raise CheckpointError(f"{where}: model_size must be one of {', '.join(MODEL_SIZES)}; "
                              f"got {record.model_size!r}")
    s = record.schedule
    facts = dict(data=record.data_source, base=record.finetuned_from.run if record.finetuned_from else None,
                 image_size=record.image_size, channels=record.channels, schedule=s.name, T=s.T, zero_snr=s.zero_snr,
                 prediction=record.prediction, context_mode=record.unet.context_mode,
                 block_style=record.unet.block_style, patch=record.unet.patch)
    try:
        return TrainConfig.flat(**record.train, **facts)
    except UsageError as e:
        raise CheckpointError(f"{where}: its 'train' section: {e}") from None
