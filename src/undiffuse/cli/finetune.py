"""`undiffuse finetune`: start from a run's EMA weights and train on new data or one class."""
from __future__ import annotations

from .flags import add_training_flags, with_budget
from .output import say
from .progress import describe_trainer, spent, train_and_report

FLAGS = ("steps", "minutes", "batch_size", "lr", "warmup", "ema_decay", "cond_drop", "seed", "checkpoint_minutes",
         "grids", "device", "labels", "context_names", "keep_checkpoints", "max_bad_steps", "precision",
         "grad_accum", "compile", "channels_last", "grad_checkpointing", "captions")
DEFAULT_MINUTES = 2.0


def add(sub) -> None:
    p = sub.add_parser("finetune", help="continue training a run on new data or one class", description=(
        "Start from RUN's EMA weights and train on DATA (the same image shape), or on one class of it "
        "with --label; the new run keeps RUN's conditioning (classes, text prompts: --captions, or RUN's "
        "templates/attributes; an upscale run stays one) and records where it came from. Default budget: "
        f"{DEFAULT_MINUTES:g} minutes."))
    p.add_argument("base", metavar="RUN", help="the trained run to start from")
    p.add_argument("--data", required=True, help="data spec, as for train")
    p.add_argument("--label", default=None, help="train on this class only (name or id)")
    p.add_argument("--out", required=True, metavar="RUN2", help="the new run folder")
    p.add_argument("--overwrite", action="store_true", help="replace the existing run folder RUN2")
    add_training_flags(p, FLAGS)
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..training import TrainConfig, Trainer

    values = {k: v for k, v in vars(args).items() if k in FLAGS}
    values = with_budget(values, DEFAULT_MINUTES)
    cfg = TrainConfig.flat(data=args.data, base=args.base, only_label=args.label, **values)
    trainer = Trainer.create(cfg, args.out, overwrite=args.overwrite, spent=spent(args))
    if trainer.context_dim and trainer.data.labels is None:
        say("the data's labels do not match the base run's classes: fine-tuning on the null context")
    say(f"fine-tuning {args.base} on {len(trainer.data.images)} images"
        + (f" of class {args.label}" if args.label is not None else ""))
    describe_trainer(trainer)
    return 0 if train_and_report(trainer, progress=not args.quiet) else 130
