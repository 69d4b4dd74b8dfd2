"""Creating a run folder: never overwrite a run by accident, and start a replaced one clean."""
from __future__ import annotations

import shutil
from pathlib import Path

from .. import checkpoint as ckpt
from .log import LOG


def check_run_folder(run: Path, overwrite: bool) -> None:
    """Never overwrite a run by accident; with overwrite, only replace something that is a run."""
    if run.exists() and not run.is_dir():
        raise ckpt.CheckpointError(f"'{run}' exists and is not a folder")
    if run.is_dir() and any(run.iterdir()):
        if not overwrite:
            raise ckpt.CheckpointError(f"run folder '{run}' already exists; pass --resume to continue it "
                                       "or --overwrite to replace it")
        if not (run / ckpt.CONFIG).is_file():
            raise ckpt.CheckpointError(f"refusing to overwrite '{run}': it is not an undiffuse run folder")


def clear_run_folder(run: Path) -> None:
    """Create the run folder, or empty the files of the run it replaces (checked by check_run_folder)."""
    for name in (ckpt.MODEL, ckpt.EMA, ckpt.STATE, LOG, "loss.png", "samples.png"):
        (run / name).unlink(missing_ok=True)
    shutil.rmtree(run / ckpt.CHECKPOINTS, ignore_errors=True)
    for old in (run / "samples").glob("step*.png") if (run / "samples").is_dir() else ():
        old.unlink()
    run.mkdir(parents=True, exist_ok=True)
