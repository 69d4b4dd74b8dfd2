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

Files are read and written through Python file objects (safetensors' own reader refuses a path that
is not UTF-8, and its writer's failures are not OSErrors). A file's header (its 8-byte length and
JSON) is checked against its size and, where the model is known, against the model's tensor names
and shapes before any of its data is read; weights that are not finite are refused.
"""
from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from .errors import CheckpointError
from .files import read_limited

CONFIG, MODEL, EMA, STATE = "config.json", "model.safetensors", "ema.safetensors", "train_state.safetensors"
CHECKPOINTS = "checkpoints"
FILES = (MODEL, EMA, STATE)
WEIGHTS = (MODEL, EMA)
HEADER_LIMIT = 100_000_000  # bytes of JSON header, safetensors' own limit
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
Shapes = Mapping[str, tuple[int, ...]]  # tensor name -> shape


MAX_JSON_BYTES = 16 * 2**20  # a run's or a model's config.json: a few kB; far more is not one


def read_json_object(path: Path) -> dict:
    """The JSON object of a config file (config.json, a diffusers config), any problem a CheckpointError
    naming the file: too large, unreadable, not JSON (a nesting bomb, an integer too long to read), not
    an object."""
    data = read_limited(path, MAX_JSON_BYTES, "config file", CheckpointError)
    try:
        values = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{path} is not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not {type(values).__name__}")
    return values


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
    with _open(path) as f:
        return _step(read_header(f, path)[1], path)


def _open(path: Path):
    """A safetensors file opened for reading through Python, which takes any name the file system
    does (safetensors' own reader refuses a path that is not valid UTF-8)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return path.open("rb")
    except OSError as e:
        raise CheckpointError(f"cannot read {path} ({e.strerror or e})") from None


def _bad(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a readable safetensors file ({why})")


def read_header(f, path: Path) -> tuple[dict[str, dict], dict]:
    """(the tensors' entries {name: {dtype, shape, data_offsets}}, the metadata) of an open
    safetensors file, from its 8-byte length and JSON header alone: nothing of the data is read.
    Every entry is checked against the dtype, the shape and the file's size."""
    size = os.fstat(f.fileno()).st_size
    head = f.read(8)
    length = int.from_bytes(head, "little") if len(head) == 8 else -1
    if not 0 < length <= min(HEADER_LIMIT, size - 8):
        raise _bad(path, f"a header of {length} bytes in a file of {size}")
    try:
        header = json.loads(f.read(length))
    except (ValueError, RecursionError) as e:
        raise _bad(path, f"its header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise _bad(path, "its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise _bad(path, "its metadata is not a JSON object")
    ends = [_entry_end(name, entry, path) for name, entry in header.items()]
    if max(ends, default=0) != size - 8 - length:
        raise _bad(path, f"its header describes {max(ends, default=0)} bytes of data, the file holds {size - 8 - length}")
    return header, metadata


def _entry_end(name: str, entry, path: Path) -> int:
    """Where an entry's data ends; a CheckpointError unless its dtype, shape and offsets agree."""
    try:
        shape, (start, end) = [int(n) for n in entry["shape"]], entry["data_offsets"]
        width = DTYPE_BYTES[entry["dtype"]]
        ok = min(shape, default=0) >= 0 and isinstance(start, int) and isinstance(end, int) and 0 <= start
        ok = ok and end - start == width * math.prod(shape)
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise _bad(path, f"a malformed header entry for {str(name)[:60]!r}")
    return end


def _step(metadata: dict, path: Path) -> int:
    try:
        return int(metadata.get("step", -1))
    except (TypeError, ValueError):
        raise _bad(path, f"its step {str(metadata.get('step'))[:40]!r} is not a number") from None


def load_tensors(path: Path, expect: Shapes | None = None, exact: bool = True) -> tuple[dict[str, torch.Tensor], int]:
    """Tensors and the step they were saved at. safetensors holds raw arrays only: no code runs.

    expect: the names and shapes the file must hold (exact) or may hold (not exact), checked in its
    header before any data is read, so that a file too large for the model is never read."""
    with _open(path) as f:
        header, metadata = read_header(f, path)
        if expect is not None:
            check_header(header, expect, exact, path)
        f.seek(0)
        data = f.read()
    try:
        return load_bytes(data), _step(metadata, path)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise _bad(path, str(e)[:200]) from None


def check_header(header: dict[str, dict], expect: Shapes, exact: bool, path: Path) -> None:
    """The names and shapes of a header against what the model needs."""
    names = set(header)
    missing, extra = sorted(set(expect) - names) if exact else [], sorted(names - set(expect))
    wrong = [n for n in sorted(names & set(expect)) if tuple(header[n]["shape"]) != tuple(expect[n])]
    if missing or extra or wrong:
        what = (f"{len(missing)} tensors missing (e.g. {missing[0]})" if missing else
                f"tensors it should not have (e.g. {str(extra[0])[:60]})" if extra else
                f"{wrong[0]} has shape {tuple(header[wrong[0]]['shape'])}, not {tuple(expect[wrong[0]])}")
        raise CheckpointError(f"{path} does not fit the model described by config.json: {what}")


def shapes_of(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_weights(model: torch.nn.Module, path: Path) -> int:
    """Load a weight file into `model`, which must have exactly its shapes and finite values; returns
    the step."""
    tensors, step = load_tensors(path, shapes_of(model))
    check_fits(model, tensors, path)
    check_finite(tensors, path)
    model.load_state_dict(tensors)
    return step


def check_fits(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict()
    if set(tensors) != set(own) or any(tensors[k].shape != own[k].shape for k in own):
        raise CheckpointError(f"{path} does not fit the model described by config.json")


def check_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Weights with a NaN or an infinity draw black or noise images: refuse them, naming the first."""
    for name, value in tensors.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"{Path(path).name} holds non-finite weights (NaN or infinity in {name}) in "
                                  f"'{Path(path).parent}': the run diverged or the file is damaged; resume or "
                                  "retrain it from a good checkpoint")


# --- a checkpoint: the three files of one step, kept K deep -----------------------------------------

def save_checkpoint(run: Path, step: int, tensors: dict[str, dict[str, torch.Tensor]], keep: int) -> Path:
    """Write {MODEL: ..., EMA: ..., STATE: ...} as RUN/checkpoints/stepN, link the top-level files to
    it, and delete all but the newest `keep` checkpoints. Raises CheckpointError (one line) when the
    disk is full, a file too large or the folder unwritable; the checkpoints written before stay as
    they were."""
    run = Path(run)
    folder = run / CHECKPOINTS / f"step{step:08d}"
    before = newest_step(run)
    try:
        folder.parent.mkdir(exist_ok=True)
        _publish(_write_files(folder.parent, step, tensors), folder)
        for name in tensors:
            _link(folder / name, run / name)
    except (OSError, SafetensorError) as e:
        kept = f"the previous checkpoint is intact (step {before})" if before is not None else \
            "no checkpoint was written"
        raise CheckpointError(f"cannot write the checkpoint of step {step} into '{run}' ({write_failure(e)}); "
                              f"{kept}") from None
    _prune(run / CHECKPOINTS, keep)
    return folder


def write_failure(e: Exception) -> str:
    """Why a write failed, in words: a full disk, a file-size limit, or the system's own reason."""
    code = getattr(e, "errno", None)
    if code == errno.ENOSPC:
        return "the disk is full"
    if code == errno.EFBIG:
        return "a file would exceed the largest this process may write: the file system's limit or ulimit -f"
    return getattr(e, "strerror", None) or str(e)[:200]


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], step: int) -> None:
    """One safetensors file, synced to the disk, written through a Python file object: any name the
    file system takes (safetensors' own writer wants UTF-8), and a full disk is an OSError."""
    values = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    data = save_bytes(values, metadata={"step": str(step)})
    with Path(path).open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_files(parent: Path, step: int, tensors: dict[str, dict[str, torch.Tensor]]) -> Path:
    """The files of a checkpoint in a new temporary folder under `parent`."""
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=".tmp-"))
    try:
        for name, values in tensors.items():
            write_tensors(tmp / name, values, step)
        os.chmod(tmp, 0o777 & ~_umask())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _publish(tmp: Path, folder: Path) -> None:
    """Rename a written checkpoint into place. The same step saved twice (a stop right after a save)
    moves the old one aside first, so that a step name never holds a half-deleted checkpoint."""
    try:
        if folder.exists():
            os.replace(folder, Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-old-")) / folder.name)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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


def load_checkpoint(folder: Path, expect: Mapping[str, Shapes] | None = None
                    ) -> tuple[dict[str, dict[str, torch.Tensor]], int]:
    """The three files of one checkpoint (a folder, or the run folder's top level) and their step.
    expect: {file name: the shapes it must hold (the weights) or may hold (the training state)},
    checked in each header before its data is read; the weights must be finite."""
    loaded, steps = {}, set()
    for name in FILES:
        shapes = expect.get(name) if expect is not None else None
        loaded[name], step = load_tensors(Path(folder) / name, shapes, exact=name in WEIGHTS)
        if name in WEIGHTS:
            check_finite(loaded[name], Path(folder) / name)
        steps.add(step)
    if len(steps) != 1:
        raise CheckpointError(f"{folder}: the checkpoint files belong to different steps")
    return loaded, steps.pop()


def latest_checkpoint(run: Path, expect: Mapping[str, Shapes] | None = None
                      ) -> tuple[dict[str, dict[str, torch.Tensor]], int, list[str]] | None:
    """The newest readable checkpoint of a run: (tensors, step, problems with newer ones), or None
    when the run has none at all. Raises CheckpointError when every checkpoint is damaged."""
    run = Path(run)
    candidates = checkpoint_folders(run)
    if (run / STATE).is_file() or (run / MODEL).is_file():  # runs from before checkpoints/ existed
        candidates.append(run)
    problems = []
    for folder in candidates:
        try:
            tensors, step = load_checkpoint(folder, expect)
            return tensors, step, problems
        except CheckpointError as e:
            problems.append(str(e))
    if problems:
        raise CheckpointError(f"no readable checkpoint in '{run}': {problems[0]}")
    return None


def newest_step(run: Path) -> int | None:
    """The step of a run's newest checkpoint folder, from its name alone (None: it has none)."""
    folders = checkpoint_folders(run)
    return int(folders[0].name[4:]) if folders else None


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
