"""`undiffuse train`: train a run folder, or continue one with --resume."""
from __future__ import annotations

import sys

from ..errors import UsageError
from .flags import add_config_flags, config_values
from .output import say
from .progress import describe_trainer, train_and_report


def choices() -> dict:
    """The closed choices of the training flags, each from the module that owns the decision."""
    from ..parameterization import PREDICTIONS
    from ..schedule import SCHEDULES
    from ..training.config import PRECISIONS
    from ..training.recipe import MODEL_SIZES
    from ..unet import CONTEXT_MODES

    return {"schedule": SCHEDULES, "prediction": PREDICTIONS, "model": ("auto", *MODEL_SIZES),
            "precision": tuple(PRECISIONS), "context_mode": CONTEXT_MODES}


def add(sub) -> None:
    from ..training import TrainConfig

    p = sub.add_parser("train", help="train a model on a data set", description=(
        "Train a denoising diffusion model. DATA is mnist (5,000 bundled digits), digits (scikit-learn's "
        "8x8 digits, upscaled), a folder of images (class sub-folders become labels) or a .npy array."))
    p.add_argument("--out", required=True, metavar="RUN", help="run folder to create (or continue with --resume)")
    p.add_argument("--config", metavar="FILE.toml", help="training options from a TOML file; flags win")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue RUN from its last checkpoint")
    group.add_argument("--overwrite", action="store_true", help="replace the existing run folder RUN")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(p, TrainConfig, choices())
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..training import TrainConfig, Trainer

    values = config_values(args, TrainConfig)
    if args.resume:
        if values:
            raise UsageError(f"--resume continues {args.out} with its own settings; drop "
                             + ", ".join("--" + k.replace("_", "-") for k in values))
        trainer = Trainer.resume(args.out)
        if trainer.world.is_main:
            for problem in trainer.skipped_checkpoints:
                print(f"undiffuse: warning: {problem}; using an older checkpoint", file=sys.stderr)
            say(f"resuming {args.out} at step {trainer.step} of {trainer.plan.steps}"
                + ("" if trainer.saved_step >= 0 else " (it had no checkpoint yet)"))
    else:
        cfg = TrainConfig.from_dict(values)
        cfg.validate()  # before the data is read, so that a bad flag costs nothing
        trainer = Trainer(cfg, args.out, overwrite=args.overwrite)
        describe_trainer(trainer)
    return 0 if train_and_report(trainer, progress=not args.quiet) else 130
