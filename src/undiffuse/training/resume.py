"""Resuming with options: what re-running the training command with --resume may change.

Re-running the exact command with --resume appended is accepted. Each option given must agree with
the run, with three exceptions:

- An option the run left to the recipe, the data or the device agrees with what was filled in:
  --lr 2e-3 where the recipe chose 2e-3, --model small where auto chose small, --image-size 28 for
  an MNIST run, --minutes 10 for a run of the default budget.
- The budget may grow: a larger --steps extends a run of steps, a larger --minutes a time-budgeted
  run. The plan follows the new length: the warm-up stays as it was, the EMA horizon becomes a
  tenth of the new length, and the cosine is stretched over it, so that from the resume step on the
  learning rate is the one a run planned this long from the start would have had. That is a jump up
  from where the old cosine was (a finished run restarts from its floor lr / 10 to the stretched
  cosine's value at step / new length), then a decay to lr / 10 at the new end. A time-budgeted
  run's cosine follows the elapsed share of its budget, so it stretches the same way.
  A smaller budget is refused: --resume extends a run, it does not shorten one.
- The runtime options (RuntimeOptions: device, compile, channels_last, grad_checkpointing,
  grad_accum, checkpoint_minutes, keep_checkpoints, grids, max_bad_steps) compute the same steps or
  only change what is written on the way, so they take the new value.

Anything else that differs (--batch-size 64 for a run of 32, another --data) is refused, naming the
option and both values, before the data is read or anything is written. The run's config.json is
rewritten only when an option or the plan changed.
"""
from __future__ import annotations

import math
import os
from dataclasses import fields
from pathlib import Path

from ..errors import UsageError
from ..run import Plan, RunRecord
from .config import DEFAULT_MINUTES, RuntimeOptions, TrainConfig
from .recipe import plan

RUNTIME = tuple(f.name for f in fields(RuntimeOptions))
PATHS = ("data", "base", "labels")  # options that name a file or folder: the same one agrees


def resumed_config(stored: TrainConfig, record: RunRecord, given: dict, run: Path) -> TrainConfig:
    """The options a resumed run trains with: `stored` with the runtime options and the budget of
    `given` (flat options, as typed); a UsageError when `given` conflicts with the run."""
    stored.updated(**given)  # an unknown option or a bad value is refused as for a new run
    changes = {name: value for name, value in given.items() if name in RUNTIME}
    changes.update(_budget(stored, given, run))
    filled = {"model": record.model_size, "lr": record.plan.lr, "warmup": record.plan.warmup,
              "ema_decay": record.plan.ema_decay, "precision": record.precision.name}
    options = stored.options()
    for name, value in given.items():
        if name not in changes and not _agrees(name, value, options[name], filled.get(name)):
            raise UsageError(f"{run} was trained with {name} {_show(options[name], filled.get(name))}, not "
                             f"{value!r}: drop --{name.replace('_', '-')}, or train a new run with another --out")
    return stored.updated(**changes) if changes else stored


def resumed_plan(cfg: TrainConfig, record: RunRecord) -> Plan:
    """The plan of a run resumed with `cfg`: the recorded one, or a longer one when --steps grew."""
    o, old = cfg.optim, record.plan
    if o.steps is None or o.steps == old.steps:
        return old
    return plan(o.steps, o.batch_size, o.lr, old.warmup, o.ema_decay)


def _budget(stored: TrainConfig, given: dict, run: Path) -> dict:
    """{steps or minutes: the new value} when `given` extends the run's budget, else {}."""
    o = stored.optim
    name, now = ("steps", o.steps) if o.steps is not None else ("minutes", o.minutes or DEFAULT_MINUTES)
    if name == "minutes" and "steps" in given:
        raise UsageError(f"{run} is time-budgeted ({now:g} minutes): extend it with --minutes, not --steps")
    if name == "steps" and "minutes" in given and given["minutes"] != o.minutes:
        raise UsageError(f"{run} has a budget of {now} steps, not of minutes (minutes {o.minutes!r}, not "
                         f"{given['minutes']!r}): drop --minutes, or extend it with --steps")
    new = given.get(name)
    if new is None or new == now:
        return {}
    if new < now:
        raise UsageError(f"{run} was planned for {name} {now:g}, not {new:g}: --resume extends a run, "
                         "it cannot shorten one")
    return {name: new}


def _agrees(name: str, value, stored, filled) -> bool:
    if _same(value, stored):
        return True
    if name in PATHS:
        return stored is not None and _same_path(value, stored)
    return stored in (None, "auto") and filled is not None and _same(value, filled)


def _same(a, b) -> bool:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    return math.isclose(a, b, rel_tol=1e-9) if numbers else a == b


def _same_path(a: str, b: str) -> bool:
    """Two specs that name the same file or folder ("./imgs" and "imgs")."""
    try:
        return os.path.samefile(a, b)
    except (OSError, TypeError, ValueError):
        return False


def _show(stored, filled) -> str:
    """A stored value, with what the recipe chose for it when it was left open."""
    if stored is None and filled is not None:
        return f"{filled!r} (the recipe's)"
    return f"{filled!r} (auto)" if stored == "auto" else repr(stored)
