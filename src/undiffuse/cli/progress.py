"""What the training commands print: the data and the plan before (or instead, for a dry run), the
outcome after, and how to resume."""
from __future__ import annotations

import shlex
import sys
import time

from .output import say

# Below this many training images a model of these sizes can learn to reproduce them (Somepalli et
# al. 2023 and Carlini et al. 2023 found copies in models trained on small sets): a new run says so.
FEW_IMAGES = 2_000


def spent(args) -> float:
    """Seconds the command has run (cli.main set `started`), which a time budget counts."""
    return time.perf_counter() - args.started


def describe_trainer(trainer) -> None:
    from ..unet import count_parameters

    if not trainer.world.is_main:
        return
    plan, distiller = trainer.plan, trainer.learner.distiller
    say(data_line(trainer.setup) if distiller is None else distiller.describe())
    where = f"{trainer.world.size} processes on {trainer.device.type}" if trainer.world.active else trainer.device
    steps = f"about {plan.steps} steps (the deadline decides)" if trainer.deadline else f"{plan.steps} steps"
    say(f"model: {trainer.size}, {count_parameters(trainer.model) / 1e6:.2f}M parameters on {where}; "
        f"{steps} of {trainer.cfg.optim.batch_size}, lr {plan.lr:.2g}, warm-up {plan.warmup}, EMA {plan.ema_decay:.4f}")
    say(precision_line(trainer.learner.precision))
    grids = trainer.cfg.runtime.grids
    if not trainer.deadline and grids > plan.steps:
        say(f"grids: {plan.steps} of the {grids} asked for, as there is at most one a step")
    if distiller is None:
        warn_few_images(trainer)


def precision_line(precision) -> str:
    """The arithmetic and why (precision.py); a warning about it goes to stderr."""
    if precision.warning:
        print(f"undiffuse: warning: {precision.warning}", file=sys.stderr)
    return f"precision: {precision.name} ({precision.reason})"


def warn_few_images(trainer) -> None:
    """Once, at the start of a new run on few images: its samples may be copies of them."""
    n = len(trainer.data.images)
    if n < FEW_IMAGES:
        print(f"undiffuse: note: {n} training images are few (under {FEW_IMAGES:,}): samples may copy them; "
              f"`undiffuse eval {shlex.quote(str(trainer.run))}` reports near copies", file=sys.stderr)


def data_line(setup) -> str:
    """The data and what conditions the run: classes, text prompts (where their captions come from), nothing."""
    data, table = setup.data, setup.captions
    kind = f"{data.num_classes} classes" if setup.context_dim else "unconditional"
    if table is not None:
        origin = setup.cfg.source.captions or "the base run's rule"
        kind = (f"text prompts: {len(table) - 1:,} distinct captions ({origin}"
                f"{'; --captions none trains without them' if origin == 'metadata' else ''})")
    skipped = f", {data.skipped} unreadable files skipped" if data.skipped else ""
    return (f"data: {data.source}: {len(data.images)} images {data.channels}x{data.image_size}x{data.image_size}, "
            f"{kind}{skipped}")


def describe_dry_run(given, setup, size: str | None, plan, precision) -> None:
    """The resolved options (those the recipe, the data, the device or a base run filled in marked *),
    the data, the device, the model, its precision and the plan. size, plan and precision are None where
    a time budget decides them when training starts."""
    from ..training.recipe import peak_lr

    o = setup.cfg.optim
    filled = dict(image_size=setup.data.image_size, channels=setup.data.channels, **({"model": size} if size else {}))
    if plan is not None:
        filled.update(lr=plan.lr, warmup=plan.warmup, ema_decay=plan.ema_decay)
    else:  # a time budget: its step count, hence the warm-up and the EMA, are counted at the start
        filled.update(minutes=o.budget_seconds / 60, lr=o.lr if o.lr is not None else peak_lr(o.batch_size))
    resolved = setup.cfg.updated(**filled)
    say("dry run: nothing is written. Options (* filled in by the recipe, the data, the device or the base run):")
    for name, value in resolved.options().items():
        say(f"  {name} = {value!r}{' *' if value != given.options()[name] else ''}")
    say(data_line(setup))
    say(f"device: {setup.device}" + (f", {setup.world.size} processes" if setup.world.active else ""))
    say(_model_line(setup, size))
    say(precision_line(precision) if precision is not None else
        f"precision: {o.precision}, chosen when training starts by timing the model's steps in fp32 and bf16")
    say(_plan_line(resolved.optim, plan))


def _model_line(setup, size: str | None) -> str:
    from ..unet import UNet, count_parameters

    if size is None:
        return ("model: auto, chosen when training starts by timing a step of each size on this machine "
                "(the dry run does not time them)")
    return f"model: {size}, {count_parameters(UNet(setup.unet_config(size))) / 1e6:.2f}M parameters"


def _plan_line(o, plan) -> str:
    """o: the resolved optimisation options."""
    if plan is None:
        return (f"plan: as many steps of {o.batch_size} images as {o.minutes:g} minutes allow, counted when "
                f"training starts, peak lr {o.lr:.3g}; the warm-up, the EMA and the cosine follow that count")
    return (f"plan: {plan.steps} steps of {o.batch_size} images, peak lr {plan.lr:.3g} with {plan.warmup} warm-up "
            f"steps and a cosine to a tenth of it, EMA {plan.ema_decay:.4f}")


def train_and_report(trainer, progress: bool):
    """The training Result, or None when a signal stopped it (after saving). The trainer wrote the
    loss curve and the model card with its last checkpoint."""
    from ..training import distributed
    from ..training.preview import LOSS_CURVE

    try:
        result = trainer.train(progress=progress)
    except KeyboardInterrupt:  # the trainer saved at the last step boundary, unless a second signal came
        if trainer.world.is_main:
            print(f"undiffuse: {interrupted_line(trainer)}", file=sys.stderr)
        return None
    finally:
        distributed.teardown(trainer.world)
    if not trainer.world.is_main:
        return result
    if result.skipped:
        say(f"{result.skipped} steps were skipped for a non-finite loss")
    say(f"trained {result.steps} steps in {result.seconds / 60:.1f} min, final loss {result.final_loss:.4f}")
    say(f"run folder: {trainer.run}   loss curve: {trainer.run / LOSS_CURVE}")
    return result


def interrupted_line(trainer) -> str:
    """What a stop left: the newest checkpoint on disk (a second signal may have cut the last save
    short; the checkpoints before it are whole), and the command that continues."""
    from ..checkpoint import newest_step

    saved = newest_step(trainer.run)
    if saved is None:
        return (f"interrupted before the first checkpoint of {trainer.run} was written; start it again with "
                f"{resume_command(trainer)}")
    cut = "" if saved >= trainer.step else f" before step {trainer.step} was saved (a second signal stops at once)"
    return f"interrupted{cut}; step {saved} is saved in {trainer.run}. Continue with: {resume_command(trainer)}"


def resume_command(trainer) -> str:
    """The command that continues a run, as the user would type it."""
    command = f"undiffuse train --out {shlex.quote(str(trainer.run))} --resume"
    if trainer.world.active:
        command = f"torchrun --nproc-per-node {trainer.world.size} -m " + command
    return command
