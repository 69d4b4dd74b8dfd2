"""Creating a run folder: never overwrite a run by accident, never one inside another run or over the
run a fine-tuning starts from, and start a replaced one clean."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from .. import checkpoint as ckpt
from ..lock import LOCK, run_lock
from .card import CARD
from .log import LOG

# What only a run folder holds beside its config.json (a config.json alone is a common file name).
RUN_MARKS = (ckpt.EMA, ckpt.MODEL, ckpt.STATE, ckpt.CHECKPOINTS, LOG)
# What a replaced run leaves that describes it alone: its pictures, its scores, its card.
OLD_OUTPUTS = (ckpt.MODEL, ckpt.EMA, ckpt.STATE, LOG, "loss.png", "samples.png", CARD)


def is_run_folder(folder: Path) -> bool:
    return (folder / ckpt.CONFIG).is_file() and any((folder / mark).exists() for mark in RUN_MARKS)


def check_run_folder(run: Path, overwrite: bool, base: str | Path | None = None) -> None:
    """Never overwrite a run by accident; with overwrite, only replace something that is a run, and
    never the base run of a fine-tuning; never create a run inside another run's folder."""
    if run.exists() and not run.is_dir():
        raise ckpt.CheckpointError(f"'{run}' exists and is not a folder")
    if base is not None and _same_folder(run, Path(base)):
        raise ckpt.CheckpointError(f"--out '{run}' is the base run itself: replacing it would delete the weights "
                                   "fine-tuning starts from; choose another --out")
    _check_not_inside_a_run(run)
    if run.is_dir() and any(p.name != LOCK for p in run.iterdir()):
        if not overwrite:
            raise ckpt.CheckpointError(f"run folder '{run}' already exists; pass --resume to continue it "
                                       "or --overwrite to replace it")
        if not (run / ckpt.CONFIG).is_file():
            raise ckpt.CheckpointError(f"refusing to overwrite '{run}': it is not an undiffuse run folder")


def check_outside_data(run: Path, data: str | None) -> None:
    """A run inside its own data folder would train on its own grids and pictures (a folder's images
    are searched recursively), and a resume would read more of them each time: refused."""
    folder = Path(data).expanduser() if data else None
    if folder is None or not folder.is_dir():
        return
    inside = run.resolve()
    if inside == folder.resolve() or folder.resolve() in inside.parents:
        raise ckpt.CheckpointError(f"the run folder '{run}' lies inside the data folder '{data}': its sample "
                                   "grids would be read as training images; choose an --out outside the data")


def _check_not_inside_a_run(run: Path) -> None:
    """A run inside a run folder (RUN/checkpoints/x, RUN/sub) would be taken for part of it: its
    checkpoints by a later `RUN --resume`, its files by an overwrite of RUN."""
    for parent in run.resolve().parents:
        if is_run_folder(parent):
            raise ckpt.CheckpointError(f"'{run}' lies inside the run folder '{parent}', whose files it would mix "
                                       "with; choose an --out outside every run folder")


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def clear_run_folder(run: Path) -> None:
    """Create the run folder, or empty the files of the run it replaces (checked by check_run_folder):
    its weights, checkpoints, log, pictures, model card and scores."""
    run.mkdir(parents=True, exist_ok=True)
    for name in OLD_OUTPUTS:
        (run / name).unlink(missing_ok=True)
    for pattern in ("eval*.json", "eval*-closest.png"):
        for old in run.glob(pattern):
            old.unlink()
    shutil.rmtree(run / ckpt.CHECKPOINTS, ignore_errors=True)
    for old in (run / "samples").glob("step*.png") if (run / "samples").is_dir() else ():
        old.unlink()


def remove_stale_temporaries(run: Path) -> None:
    """The temporary files of atomic writes (checkpoint.atomic_write: `.NAME.xxxx.tmp`) that a killed
    process left in the run folder and its samples/; called under the run's lock, when none is in use."""
    for folder in (run, run / "samples"):
        for stale in folder.glob(".*.tmp") if folder.is_dir() else ():
            if stale.is_file() and not stale.is_symlink():
                stale.unlink(missing_ok=True)


def abandon_run_folder(run: Path) -> None:
    """Remove the folder this process created for a run that did not start (its first checkpoint not
    written: a full disk, a signal), so that no later command takes a half-made run for one."""
    if run.is_dir() and ckpt.newest_step(run) is None:
        shutil.rmtree(run, ignore_errors=True)


class FolderLock:
    """Rank 0's hold on a run folder's lock (lock.py) that outlives one call: a Trainer takes it when
    it replaces or resumes the folder and lets go after its last save. Other ranks never write."""

    def __init__(self, run: Path, writer: bool = True):
        self.run, self.writer, self._context = run, writer, None

    def take(self, expect_step: int | None = None) -> None:
        """Hold the lock (CheckpointError naming the holder when another process has it). Taken
        again with expect_step, a folder whose newest checkpoint is another step is refused: another
        process trained it in between."""
        if not self.writer or self._context is not None:
            return
        context = run_lock(self.run, "training")
        context.__enter__()
        self._context = context
        newest = ckpt.newest_step(self.run)
        if expect_step is not None and newest is not None and newest != expect_step:
            self.release()
            raise ckpt.CheckpointError(f"'{self.run}' was trained by another process since step {expect_step} "
                                       f"was saved here (its newest checkpoint is step {newest}); resume it again")

    def release(self) -> None:
        context, self._context = self._context, None
        if context is not None:
            context.__exit__(None, None, None)
