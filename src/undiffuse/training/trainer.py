"""The training loop: AdamW steps on `diffusion_loss` with a warm-up and a cosine decay, gradient
clipping and an EMA of the weights (what sampling uses), by a recipe whose every knob follows from the
budget (recipe.py), until the planned step or the deadline (budget.py).

A Trainer is built one way, from resolved parts handed to `__init__`: `Trainer.create(cfg, run)`
resolves a new run's setup (setup.py), picks its model and plan (sizing.py) and writes the folder;
`Trainer.resume(run)` rebuilds the parts from the run's config.json (run.py, record.py, resume.py)
and loads its newest checkpoint.

Never losing a run: checkpoints are atomic and kept K deep (checkpoint.py); SIGINT/SIGTERM save at
the next step boundary, and a second signal (during that save too) stops at once, the checkpoints
before it whole; a step whose loss or gradient is not finite is skipped (learner.py) and counted,
and `max_bad_steps` of them in a row stop the run with the last good checkpoint kept. Under torchrun
the same loop runs data-parallel (see distributed.py).

One writer at a time: rank 0 holds the run folder's lock (lock.py) from the moment it replaces or
resumes the folder until the last save of `train`; everything checked before that only reads, so a
refused command leaves the folder as it was. A finished run is resumed without writing anything.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .. import checkpoint as ckpt
from ..data import ImageData
from ..errors import CheckpointError, TrainingDiverged, UsageError
from ..conditions.text import save_table
from ..run import CAPTIONS, Plan, RunRecord, read_run, write_run
from . import distributed as dist
from .budget import REFIT_EVERY, Deadline, Stopwatch
from .config import TrainConfig
from .folder import (FolderLock, abandon_run_folder, check_outside_data, check_run_folder, clear_run_folder,
                     remove_stale_temporaries)
from .learner import QUARTERS, Learner
from .log import LOG, LogWriter, logged_losses, open_log, truncate_log
from .preview import GridSchedule, write_summary
from .record import options_of, record_of
from .recipe import ema_decay_at, lr_at, plan
from .resume import resumed_config, resumed_plan
from .setup import Setup, new_setup, resumed_setup
from .signals import StopOnSignal
from .sizing import check_step_memory, choose
from .threads import ThreadChooser, tunable


@dataclass
class Result:
    run: Path
    steps: int  # steps taken in total
    seconds: float  # training wall-clock time in total
    final_loss: float  # mean loss over the last few percent of steps
    skipped: int = 0  # steps of this session skipped for a non-finite loss or gradient


@dataclass
class _Session:
    """What one call of `train` has seen: for the log, the progress bar and the Result."""
    start: float  # the clock when it began
    start_step: int
    losses: list[float] = field(default_factory=list)  # the finite losses
    recent: list[float] = field(default_factory=list)  # those since the last log row
    skipped: int = 0
    quarters: torch.Tensor = field(default_factory=lambda: torch.zeros(2 * QUARTERS, dtype=torch.float64))


class Trainer:
    """Trains one run folder. `Trainer.create(cfg, run).train()`; `Trainer.resume(run).train()` continues it.

    Under torchrun every process builds its own Trainer on the same data; rank 0 alone writes to the
    run folder, and rank 0's decisions (model size, step count) are broadcast to the others.
    """

    def __init__(self, run: Path, setup: Setup, learner: Learner, size: str, plan: Plan, watch: Stopwatch):
        """The one place a Trainer's parts come together, resolved by `create` or `resume`."""
        cfg = setup.cfg
        if setup.world.size * cfg.runtime.grad_accum > cfg.optim.batch_size:
            raise UsageError(f"a batch of {cfg.optim.batch_size} cannot be split into {cfg.runtime.grad_accum} "
                             f"micro-batches on each of {setup.world.size} processes")
        self.run, self.setup, self.learner, self.size, self.plan, self.watch = run, setup, learner, size, plan, watch
        self.cfg, self.data, self.schedule = cfg, setup.data, setup.schedule
        self.world, self.device, self.context_dim = setup.world, setup.device, setup.context_dim
        self.deadline = Deadline(cfg.optim.budget_seconds) if cfg.optim.budget_seconds else None
        self.threads = ThreadChooser(tunable(setup.device, setup.world.active, self.deadline is not None))
        self.step, self.bad_steps, self.saved_step, self.lr = 0, 0, -1, 0.0
        self.saved_plan = plan
        self.skipped_checkpoints: list[str] = []
        self.extended = False  # a resumed time budget that grew: its recorded plan ended, the new budget has not
        self._lock = FolderLock(run, setup.world.is_main)  # rank 0's hold on the run folder's lock
        learner.wrap()

    @classmethod
    def create(cls, cfg: TrainConfig, run: str | Path, *, overwrite: bool = False, data: ImageData | None = None,
               clock: Callable[[], float] = time.perf_counter, spent: float = 0.0) -> "Trainer":
        """A new run folder trained from `cfg`; `data` instead of reading cfg's data spec. Nothing is
        written until the options, the data and the model are settled. spent: seconds the command ran
        before (its start-up: budget.process_age), which a time budget counts too."""
        watch = Stopwatch(clock, spent)  # a time budget counts from here: reading the data, timing the sizes
        run = Path(run)
        check_run_folder(run, overwrite, cfg.source.base)  # read only; again under the lock in _publish
        check_outside_data(run, cfg.source.data)
        setup = new_setup(cfg, data)
        size, plan, precision = dist.broadcast(choose(setup, watch) if setup.world.is_main else None, setup.world)
        learner = Learner(setup, size, precision)
        if setup.cfg.source.base:
            learner.start_from(Path(setup.cfg.source.base) / ckpt.EMA)
        trainer = cls(run, setup, learner, size, plan, watch)
        trainer._publish(overwrite)
        return trainer

    @classmethod
    def resume(cls, run: str | Path, *, changes: dict | None = None, data: ImageData | None = None,
               clock: Callable[[], float] = time.perf_counter, spent: float = 0.0) -> "Trainer":
        """Continue a run from its newest readable checkpoint: weights, EMA, optimizer, step, clock.

        `changes`: flat options as a re-run of the training command gives them (resume.py says what
        may change). A run killed before its first checkpoint starts again from step 0 (the seed
        fixes it); `skipped_checkpoints` lists the newer checkpoints that were damaged. spent: as for
        `create`, this session's start-up.
        """
        watch, run = Stopwatch(clock, spent), Path(run)
        record = read_run(run)
        stored = options_of(record, run)
        cfg = resumed_config(stored, record, changes or {}, run)
        check_outside_data(run, cfg.source.data)
        setup = resumed_setup(cfg, record, data, run)
        check_step_memory(setup, record.model_size)
        learner = Learner(setup, record.model_size, record.precision)  # a checkpoint that does not fit is refused
        trainer = cls(run, setup, learner, record.model_size, resumed_plan(cfg, record), watch)
        trainer.extended = cfg.optim.budget_seconds != stored.optim.budget_seconds
        newest = ckpt.newest_step(run)
        trainer._load_newest()
        if not trainer.finished:  # a finished run is left as it is: nothing to train, nothing to write
            trainer._claim(record, newest)
        return trainer

    def _publish(self, overwrite: bool) -> None:
        """A new run's folder: its config.json and the checkpoint of step 0, under the folder's lock."""
        dist.barrier(self.world)  # every rank has checked the folder before rank 0 replaces it
        if self.world.is_main:
            created = not self.run.exists()
            try:
                self.run.mkdir(parents=True, exist_ok=True)
            except OSError as e:  # a read-only or immutable parent, a full disk, a name too long
                raise ckpt.CheckpointError(f"cannot create the run folder '{self.run}' ({e.strerror or e})") from None
            self._lock.take()
            try:
                check_run_folder(self.run, overwrite, self.cfg.source.base)  # nobody else writes it now
                clear_run_folder(self.run)  # only now: bad data or flags leave no folder behind
                write_run(self.run, self.record())
                if self.setup.captions is not None:  # so sampling the training captions needs no encoder
                    ckpt.atomic_write(self.run / CAPTIONS, lambda p: save_table(p, self.setup.captions))
                self.save()
            except BaseException:
                if created:
                    abandon_run_folder(self.run)
                self.close()
                raise

    def _load_newest(self) -> None:
        """The newest readable checkpoint (read only: the lock is taken after, by `_claim`)."""
        found = ckpt.latest_checkpoint(self.run, self.learner.expected_shapes())
        if found is not None:
            tensors, self.step, self.skipped_checkpoints = found
            # the sessions before, and this one's start-up and reading since
            self.watch.restart(self.learner.load(tensors, self.run) + self.watch.elapsed)
            self.saved_step = self.step

    def _claim(self, record: RunRecord, newest: int | None) -> None:
        """Take the run's lock for this session, make sure nobody wrote the run since it was read,
        drop the log rows after the checkpoint and record a changed plan or option."""
        if not self.world.is_main:
            return
        try:
            self._lock.take()
            if read_run(self.run) != record or ckpt.newest_step(self.run) != newest:
                raise CheckpointError(f"'{self.run}' changed while it was being resumed (another process "
                                      "trained it); run the command again")
            truncate_log(self.run / LOG, self.step)
            remove_stale_temporaries(self.run)  # what a killed session's atomic writes left: nobody writes now
            if self.record() != record:  # resumed with a longer budget or other runtime options
                write_run(self.run, self.record())
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Let go of the run folder's lock (train() does at its end; dropping the Trainer does too), and
        leave torch's thread count as the run found it."""
        self._lock.release()
        self.threads.close()

    # --- state --------------------------------------------------------------------------------
    @property
    def model(self):
        return self.learner.model

    @property
    def ema(self):
        return self.learner.ema

    @property
    def elapsed(self) -> float:
        """Seconds this run has trained, over all its sessions: steps, grids, checkpoints, set-up."""
        return self.watch.elapsed

    def done(self) -> float:
        """The share of the run behind us: of the time budget, or of the steps."""
        return self.deadline.done(self.elapsed) if self.deadline else min(1.0, self.step / self.plan.steps)

    @property
    def finished(self) -> bool:
        """The run took the steps of its plan (a time budget's deadline sets them when it ends it), and
        no larger budget extends it."""
        return self.step >= self.plan.steps and not self.extended

    def record(self) -> RunRecord:
        """What config.json holds: everything `sample` and `resume` need."""
        return record_of(self.setup, self.size, self.plan, self.model.cfg, self.learner.precision)

    # --- the loop -----------------------------------------------------------------------------
    def train_step(self, done: float | None = None) -> float:
        """One optimizer step; returns the batch's mean loss. A non-finite loss or gradient skips the
        update and counts in `bad_steps`. done: the share of the run behind us, which drives the
        learning rate (default: this process's `done()`)."""
        self.lr = lr_at(self.step, self.plan, self.done() if done is None else done)
        loss, bad = self.learner.update(self.step, self.lr, ema_decay_at(self.step, self.plan))
        self.bad_steps = self.bad_steps + 1 if bad else 0
        self.step += 1
        return loss

    def train(self, *, until: int | None = None, progress: bool = True,
              on_grid: Callable[[Path], None] | None = None) -> Result:
        """Run to the planned step or the deadline (or `until`), with a progress bar, log, grids,
        checkpoints, loss curve and model card. Under torchrun rank 0's clock decides for all: its
        elapsed time sets every rank's learning rate, and its deadline stops them all at the same step.
        A finished run returns at once and writes nothing."""
        if self.finished:
            return self._result([])
        main = self.world.is_main
        session = _Session(self.watch.clock(), self.step)
        try:
            self._lock.take(expect_step=self.saved_step)  # again, when an earlier train() let go of it
            self.grid_schedule = GridSchedule(self.cfg.runtime.grids, self.done())
            bar = tqdm(total=self.plan.steps, initial=self.step, disable=not (progress and main), unit="step",
                       dynamic_ncols=True, desc=self.run.name)
            with StopOnSignal() as stop:  # a second signal, in the last save too, stops at once
                with open_log(self.run / LOG, main) as log_file:
                    log = LogWriter(log_file, bar, self.cfg.optim.batch_size) if log_file else None
                    self._loop(session, stop, log, bar, until, on_grid)
                    if self.deadline and not stop.requested and until is None and self.step > session.start_step:
                        self._end_at_deadline(session, log, on_grid)
                bar.close()
                self._save_if_new()
            if dist.any_rank(stop.requested, self.world, self.device):  # after the save: no step is lost
                raise KeyboardInterrupt(f"stopped by signal at step {self.step}")
            self.extended = False
        finally:
            self.close()
        return self._result(session.losses, session.skipped)

    def _result(self, losses: list[float], skipped: int = 0) -> Result:
        """The Result; the final loss is the mean of the last few percent of this session's steps, or
        the last logged one when this session took none."""
        tail = losses[-max(1, len(losses) // 20):] or logged_losses(self.run)[-1:] or [float("nan")]
        return Result(self.run, self.step, self.elapsed, sum(tail) / len(tail), skipped)

    def _loop(self, session: _Session, stop: StopOnSignal, log, bar, until, on_grid) -> None:
        """Each step timed (threads, deadline), its loss kept or its skip counted; then what is due."""
        last_save = self.watch.clock()
        while self._more_steps(until):
            out_of_time = self.world.is_main and self.deadline is not None and self.step > 0 \
                and not self.deadline.room_for_step(self.elapsed)  # a run takes one step at least
            stopping, done = dist.agree(stop.requested or out_of_time, self.done(), self.world, self.device)
            if stopping:
                break
            self.threads.start(self.step)
            start = self.watch.clock()
            loss = self.train_step(done)
            seconds = self.watch.clock() - start
            self.threads.took(seconds)
            if self.bad_steps:
                session.skipped += 1
                self._check_diverged(loss, bar)
            else:
                session.losses.append(loss)
                session.recent.append(loss)
                session.quarters += self.learner.quarters
            if self.deadline:
                self.deadline.record_step(seconds)
                if self.step % REFIT_EVERY == 0:
                    self._refit()
                    bar.total = self.plan.steps
            if log is not None and (self.step % max(1, self.plan.steps // 500) == 0 or self.step == self.plan.steps):
                self._log(log, session)
            bar.update(1)
            self._draw_due_grids(on_grid)
            every = 60 * self.cfg.runtime.checkpoint_minutes
            soon = self.deadline is not None and self.deadline.ends_within(self.elapsed, every)  # it saves then
            if self.watch.clock() - last_save > every and not soon:
                self.save()
                last_save = self.watch.clock()

    def _end_at_deadline(self, session: _Session, log, on_grid) -> None:
        """The deadline ended the run: the step count it really took, its last log row and grid."""
        self.plan = replace(self.plan, steps=self.step)
        if log is not None and session.recent:  # the last steps, when they did not end on a logged one
            self._log(log, session)
        self._draw_due_grids(on_grid, finished=True)

    def _log(self, log: LogWriter, session: _Session) -> None:
        seconds = self.watch.clock() - session.start
        log.row(self.step, session.recent, self.lr, self.step - session.start_step, seconds, self.elapsed,
                session.skipped, session.quarters)
        session.recent = []
        session.quarters = torch.zeros_like(session.quarters)

    def _more_steps(self, until: int | None) -> bool:
        """A step budget ends at its step; a time budget at its deadline (checked in the loop)."""
        if until is not None and self.step >= until:
            return False
        return self.deadline is not None or self.step < self.plan.steps

    def _draw_due_grids(self, on_grid, finished: bool = False) -> None:
        """The grids due by the run's `done` share (preview.GridSchedule), but one that would cut into a deadline's end."""
        if not self.grid_schedule.due(self.done(), finished):
            return
        if not finished and self.deadline and not self.deadline.room_for(self.elapsed, "grid"):
            return  # the last grid comes soon
        if self.world.is_main:
            with self._end_cost("grid"):
                path = self.write_grid()
            if not finished:  # the loss curve follows the grids (and a time budget learns what it costs)
                self.write_summary()
            if on_grid is not None:
                on_grid(path)

    def _check_diverged(self, loss: float, bar) -> None:
        """Tell about a skipped step; stop when too many came in a row, without saving this state."""
        if self.bad_steps < self.cfg.runtime.max_bad_steps:
            if self.world.is_main and not bar.disable:
                bar.write(f"step {self.step}: loss {loss}, update skipped ({self.bad_steps} in a row)")
            return
        bar.close()
        kept = f"the last good checkpoint (step {self.saved_step}) is kept" if self.saved_step >= 0 else \
            "no checkpoint was written"
        raise TrainingDiverged(f"the loss was not finite for {self.bad_steps} steps in a row (up to step "
                               f"{self.step}); stopped and {kept}; check the data or lower --lr")

    def _refit(self) -> None:
        """Re-estimate a time budget's step count from the recent step times (rank 0's, sent to all).
        The warm-up stays as first planned; the EMA horizon follows the estimate."""
        o = self.cfg.optim
        steps = dist.broadcast(self.deadline.steps_at(self.step, self.elapsed) if self.world.is_main else None, self.world)
        self.plan = plan(steps, o.batch_size, o.lr, self.plan.warmup, o.ema_decay)

    # --- outputs ------------------------------------------------------------------------------
    def save(self) -> None:
        """A checkpoint of the current step, then the run's summary (rank 0 only: the others hold the same)."""
        if not self.world.is_main:
            return
        with self._end_cost("checkpoint"):
            ckpt.save_checkpoint(self.run, self.step, self.learner.tensors(self.elapsed), self.cfg.runtime.keep_checkpoints)
            if self.deadline:  # the plan (a time budget's step estimate) goes with the checkpoint
                write_run(self.run, self.record())
        self.saved_step, self.saved_plan = self.step, self.plan
        self.write_summary()

    def _save_if_new(self) -> None:
        """The last save of a session: a checkpoint when a step was taken since the last one, else
        config.json alone when the plan changed (a deadline right after a save); the summary either way."""
        if self.step != self.saved_step:
            self.save()
            return
        if self.plan != self.saved_plan and self.world.is_main:
            write_run(self.run, self.record())
            self.saved_plan = self.plan
        self.write_summary()

    def write_summary(self) -> None:
        """RUN/loss.png and RUN/README.md as the run stands (preview.py), rank 0 only; a time budget
        counts their cost among the end's."""
        if self.world.is_main and self.step:
            with self._end_cost("summary"):
                write_summary(self.run, saved_step=self.saved_step)

    def _end_cost(self, what: str):  # a grid, checkpoint or summary, timed for a time budget's end
        return self.deadline.timed(what, self.watch.clock) if self.deadline else contextlib.nullcontext()

    def write_grid(self) -> Path:
        """A small grid from the EMA weights (preview.py)."""
        from .preview import write_grid

        return write_grid(self.setup, self.ema, self.run, self.step, self.learner.precision)
