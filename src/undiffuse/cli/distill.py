"""`undiffuse distill`: a student run that draws in 1, 2 or 4 network calls, taught by a trained run."""
from __future__ import annotations

from .flags import add_training_flags, with_budget
from .output import say
from .progress import describe_trainer, spent, train_and_report

FLAGS = ("steps", "minutes", "batch_size", "lr", "warmup", "ema_decay", "seed", "checkpoint_minutes", "grids",
         "device", "keep_checkpoints", "max_bad_steps", "precision", "grad_accum", "channels_last")
DEFAULT_MINUTES = 10.0
DEFAULT_CALLS = 2


def add(sub) -> None:
    p = sub.add_parser("distill", help="distil a run into a student that draws in 1, 2 or 4 network calls",
                       description=(
        "Start from RUN's EMA weights and teach a student to draw in --calls network calls (1, 2 or 4; "
        f"default {DEFAULT_CALLS}) with guidance built in: one call a step at any guidance scale from 1 to "
        "twice RUN's default. The student learns RUN's own guided trajectories, solved by DPM-Solver++(2M) "
        "(training/distill.py), "
        "so it needs no data. It is a run folder like any: sample, eval, interpolate and serve use it, "
        f"and --resume continues it. Default budget: {DEFAULT_MINUTES:g} minutes."))
    p.add_argument("base", metavar="RUN", help="the trained run to distil (class-conditional or unconditional)")
    p.add_argument("--out", required=True, metavar="STUDENT", help="the student's run folder")
    p.add_argument("--calls", type=int, choices=(1, 2, 4), default=DEFAULT_CALLS,
                   help=f"network calls the student draws in (default {DEFAULT_CALLS})")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue STUDENT from its last checkpoint")
    group.add_argument("--overwrite", action="store_true", help="replace the existing run folder STUDENT")
    add_training_flags(p, FLAGS)
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..training import TrainConfig, Trainer
    from .train import finished_line, resume

    values = {k: v for k, v in vars(args).items() if k in FLAGS}
    if args.resume:
        trainer = resume(args.out, {**values, "distill_calls": args.calls}, False, spent(args))
        if trainer.finished:
            say(finished_line(trainer))
            return 0
    else:
        cfg = TrainConfig.flat(base=args.base, distill_calls=args.calls, **with_budget(values, DEFAULT_MINUTES))
        trainer = Trainer.create(cfg, args.out, overwrite=args.overwrite, spent=spent(args))
        say(f"distilling {args.base} into a student of {args.calls} network call{'s' * (args.calls > 1)}")
        describe_trainer(trainer)
    return 0 if train_and_report(trainer, progress=not args.quiet) else 130
