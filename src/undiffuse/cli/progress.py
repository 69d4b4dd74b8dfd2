"""What the training commands print: the data and the plan before, the outcome after, and how to resume."""
from __future__ import annotations

import shlex
import sys

from .output import say


def describe_trainer(trainer) -> None:
    from ..unet import count_parameters

    if not trainer.world.is_main:
        return
    data, plan = trainer.data, trainer.plan
    kind = f"{data.num_classes} classes" if trainer.context_dim else "unconditional"
    skipped = f", {data.skipped} unreadable files skipped" if data.skipped else ""
    say(f"data: {data.source}: {len(data.images)} images {data.channels}x{data.image_size}x{data.image_size}, "
        f"{kind}{skipped}")
    where = f"{trainer.world.size} processes on {trainer.device.type}" if trainer.world.active else trainer.device
    steps = f"about {plan.steps} steps (the deadline decides)" if trainer.deadline else f"{plan.steps} steps"
    say(f"model: {trainer.size}, {count_parameters(trainer.model) / 1e6:.2f}M parameters on {where}; "
        f"{steps} of {trainer.cfg.batch_size}, lr {plan.lr:.2g}, warm-up {plan.warmup}, EMA {plan.ema_decay:.4f}")


def train_and_report(trainer, progress: bool):
    """The training Result, or None when a signal stopped it (after saving)."""
    from ..training import distributed, read_log
    from ..viz import save_loss_curve

    try:
        result = trainer.train(progress=progress)
    except KeyboardInterrupt:  # the trainer saved at the last step boundary
        if trainer.world.is_main:
            print(f"undiffuse: interrupted; step {trainer.saved_step} is saved in {trainer.run}. "
                  f"Continue with: {resume_command(trainer)}", file=sys.stderr)
        return None
    finally:
        distributed.teardown(trainer.world)
    if not trainer.world.is_main:
        return result
    if result.skipped:
        say(f"{result.skipped} steps were skipped for a non-finite loss")
    steps, losses = read_log(trainer.run)
    curve = save_loss_curve(steps, losses, trainer.run / "loss.png", title=f"training loss: {trainer.run.name}")
    say(f"trained {result.steps} steps in {result.seconds / 60:.1f} min, final loss {result.final_loss:.4f}")
    say(f"run folder: {trainer.run}   loss curve: {curve}")
    return result


def resume_command(trainer) -> str:
    """The command that continues a run, as the user would type it."""
    command = f"undiffuse train --out {shlex.quote(str(trainer.run))} --resume"
    if trainer.world.active:
        command = f"torchrun --nproc-per-node {trainer.world.size} -m " + command
    return command
