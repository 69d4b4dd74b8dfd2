"""`undiffuse train`: train a run folder, preview one with --dry-run, or continue one with --resume."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ..errors import UsageError
from .flags import add_config_flags, config_values
from .output import say
from .progress import describe_dry_run, describe_trainer, spent, train_and_report


def add(sub) -> None:
    from ..training.config import GROUPS, TrainConfig

    p = sub.add_parser("train", help="train a model on a data set", description=(
        "Train a denoising diffusion model. DATA is mnist (5,000 bundled digits), digits (scikit-learn's "
        "8x8 digits, upscaled), a folder of images (class sub-folders become labels) or a .npy array. "
        "--resume continues RUN: the command that started it may be repeated with --resume appended; a "
        "larger --steps (or --minutes) extends the run, the device and memory options may change, and any "
        "other option that differs from the run's is refused."))
    p.add_argument("--out", required=True, metavar="RUN", help="run folder to create (or continue with --resume)")
    p.add_argument("--config", metavar="FILE.toml", help="training options from a TOML file; flags win")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue RUN from its last checkpoint")
    group.add_argument("--overwrite", action="store_true", help="replace the existing run folder RUN")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved options, the data, the device, the model and the plan; write nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    for options in GROUPS.values():  # a student's calls are distill's flag
        add_config_flags(p, options, TrainConfig.choices(), skip={"distill_calls"})
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..training import TrainConfig, Trainer
    from ..training.config import GROUP_OF

    values = config_values(args, GROUP_OF)
    if args.resume:
        trainer = resume(args.out, values, args.dry_run, spent(args))
        if trainer.finished:
            say(finished_line(trainer))
            return 0
    else:
        cfg = TrainConfig.flat(**values)  # checked before the data is read, so that a bad flag costs nothing
        if args.dry_run:
            return dry_run(cfg, args.out, args.overwrite)
        trainer = Trainer.create(cfg, args.out, overwrite=args.overwrite, spent=spent(args))
        describe_trainer(trainer)
    return 0 if train_and_report(trainer, progress=not args.quiet) else 130


def resume(out: str, values: dict, dry: bool, seconds: float = 0.0):
    """The Trainer that continues `out` (resume.py: which options may change); `seconds`: the command's
    start-up, which its time budget counts."""
    from ..training import Trainer

    if dry:
        raise UsageError("--dry-run previews a new run; drop --resume")
    if not Path(out).exists():  # not started: say so rather than start a run the user did not describe
        raise UsageError(f"cannot resume '{out}': it does not exist; drop --resume to start it")
    trainer = Trainer.resume(out, changes=values, spent=seconds)
    if trainer.world.is_main and not trainer.finished:
        for problem in trainer.skipped_checkpoints:
            print(f"undiffuse: warning: {problem}; using an older checkpoint", file=sys.stderr)
        say(f"resuming {out} at step {trainer.step} of {trainer.plan.steps}"
            + ("" if trainer.saved_step >= 0 else " (it had no checkpoint yet)"))
    return trainer


def finished_line(trainer) -> str:
    """A finished run, resumed: nothing to do, and how to make it longer."""
    o, run = trainer.cfg.optim, shlex.quote(str(trainer.run))
    if trainer.deadline:
        minutes = o.budget_seconds / 60
        more = f"its {minutes:g}-minute budget is spent; extend it with: undiffuse train --out {run} --resume " \
               f"--minutes M (M larger than {minutes:g})"
    else:
        more = f"extend it with: undiffuse train --out {run} --resume --steps N (N larger than {trainer.step})"
    return f"{trainer.run} is finished at step {trainer.step}, nothing to train; {more}"


def dry_run(cfg, out: str, overwrite: bool) -> int:
    """What `train` would do with `cfg`, every check included, reading the data but writing nothing.
    A time budget's model (auto), precision and step count are decided when training starts, by timing
    steps on the machine as it is then; the dry run says so instead of timing them. A step budget's
    precision is timed here as training would time it."""
    import time

    from ..training.folder import check_run_folder
    from ..training.learner import Learner
    from ..training.setup import new_setup
    from ..training.sizing import step_budget, step_precision

    check_run_folder(Path(out), overwrite)
    setup = new_setup(cfg)
    if setup.cfg.optim.budget_seconds is None:
        size, plan = step_budget(setup)
        precision = step_precision(Learner(setup, size), time.perf_counter)[0]
    else:
        sizes = setup.sizes()
        size, plan, precision = (None if len(sizes) > 1 else sizes[0]), None, None
    describe_dry_run(cfg, setup, size, plan, precision)
    return 0
