"""A run folder on disk, and nothing that loading it could execute.

    RUN/config.json              what the run is: model, schedule, data, recipe, class names (run.py)
    RUN/model.safetensors        the raw weights
    RUN/ema.safetensors          the EMA weights (what sampling uses)
    RUN/train_state.safetensors  optimizer moments, step and RNG state, for --resume
    RUN/checkpoints/step00001234/  the last K checkpoints, each the three files above

A checkpoint is written into a temporary folder and renamed into place, one atomic rename, so a
kill -9 at any moment leaves every finished checkpoint whole; the files at the top of RUN are hard
links to the newest (what `sample` reads). Each file records its step, so a set of files from two
steps is detected, and `--resume` falls back to the previous checkpoint when the newest is damaged.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import CheckpointError

CONFIG, MODEL, EMA, STATE = "config.json", "model.safetensors", "ema.safetensors", "train_state.safetensors"
CHECKPOINTS = "checkpoints"
FILES = (MODEL, EMA, STATE)


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then rename tmp_path to path."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give them the usual permissions
    try:
        write(Path(tmp))
        _fsync(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    """Push a file's bytes to the disk before the rename that publishes it (survives a power cut)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def saved_step(path: Path) -> int:
    """The step a weight file was saved at, read from its header alone (-1 when absent)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            return int((f.metadata() or {}).get("step", -1))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], int]:
    """Tensors and the step they were saved at. safetensors holds raw arrays only: no code runs."""
    step = saved_step(path)
    try:
        return load_file(str(path)), step
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None


def load_weights(model: torch.nn.Module, path: Path) -> int:
    """Load a weight file into `model`, which must have exactly its shapes; returns the step."""
    tensors, step = load_tensors(path)
    check_fits(model, tensors, path)
    model.load_state_dict(tensors)
    return step


def check_fits(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict()
    if set(tensors) != set(own) or any(tensors[k].shape != own[k].shape for k in own):
        raise CheckpointError(f"{path} does not fit the model described by config.json")


# --- a checkpoint: the three files of one step, kept K deep -----------------------------------------

def save_checkpoint(run: Path, step: int, tensors: dict[str, dict[str, torch.Tensor]], keep: int) -> Path:
    """Write {MODEL: ..., EMA: ..., STATE: ...} as RUN/checkpoints/stepN, link the top-level files to
    it, and delete all but the newest `keep` checkpoints. Raises CheckpointError (one line) when the
    disk is full or the folder unwritable; the checkpoints written before stay as they were."""
    run = Path(run)
    folder = run / CHECKPOINTS / f"step{step:08d}"
    try:
        folder.parent.mkdir(exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
        try:
            for name, values in tensors.items():
                values = {k: v.detach().contiguous().cpu() for k, v in values.items()}
                save_file(values, str(tmp / name), metadata={"step": str(step)})
                _fsync(tmp / name)
            os.chmod(tmp, 0o777 & ~_umask())
            if folder.exists():  # the same step saved twice (e.g. a stop right after a save)
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for name in tensors:
            _link(folder / name, run / name)
    except OSError as e:
        reason = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise CheckpointError(f"cannot write the checkpoint of step {step} into '{run}' ({reason}); "
                              "the previous checkpoint is intact") from None
    _prune(run / CHECKPOINTS, keep)
    return folder


def _link(source: Path, target: Path) -> None:
    """Atomically make `target` the same file as `source` (a hard link; a copy where links fail)."""
    def write(tmp: Path) -> None:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)

    atomic_write(target, write)


def _prune(folder: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints, and temporary folders a crash left behind."""
    for old in checkpoint_folders(folder.parent)[keep:]:
        # renamed first, so that a kill while deleting never leaves a half checkpoint under a step name
        os.replace(old, folder / f".tmp-old-{old.name}")
    for old in folder.glob(".tmp-*"):
        shutil.rmtree(old, ignore_errors=True)


def checkpoint_folders(run: Path) -> list[Path]:
    """The checkpoint folders of a run, newest first."""
    folder = Path(run) / CHECKPOINTS
    found = folder.glob("step*") if folder.is_dir() else ()
    return sorted((p for p in found if p.name[4:].isdigit()), key=lambda p: int(p.name[4:]), reverse=True)


def load_checkpoint(folder: Path) -> tuple[dict[str, dict[str, torch.Tensor]], int]:
    """The three files of one checkpoint (a folder, or the run folder's top level) and their step."""
    loaded, steps = {}, set()
    for name in FILES:
        loaded[name], step = load_tensors(Path(folder) / name)
        steps.add(step)
    if len(steps) != 1:
        raise CheckpointError(f"{folder}: the checkpoint files belong to different steps")
    return loaded, steps.pop()


def latest_checkpoint(run: Path) -> tuple[dict[str, dict[str, torch.Tensor]], int, list[str]] | None:
    """The newest readable checkpoint of a run: (tensors, step, problems with newer ones), or None
    when the run has none at all. Raises CheckpointError when every checkpoint is damaged."""
    run = Path(run)
    candidates = checkpoint_folders(run)
    if (run / STATE).is_file() or (run / MODEL).is_file():  # runs from before checkpoints/ existed
        candidates.append(run)
    problems = []
    for folder in candidates:
        try:
            tensors, step = load_checkpoint(folder)
            return tensors, step, problems
        except CheckpointError as e:
            problems.append(str(e))
    if problems:
        raise CheckpointError(f"no readable checkpoint in '{run}': {problems[0]}")
    return None


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Flatten an optimizer's per-parameter state (AdamW: step, exp_avg, exp_avg_sq) for safetensors."""
    out = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            out[f"opt.{index}.{key}"] = torch.as_tensor(value)
    return out


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state_dict = optimizer.state_dict()
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("opt."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    state_dict["state"] = state
    optimizer.load_state_dict(state_dict)
