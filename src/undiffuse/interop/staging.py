"""Writing an export or an import as a whole folder: never over something undiffuse did not write, never
over the source or the current folder, and by renames only, so that a kill at any moment leaves the old
folder or the new one whole (and the staging folders a killed command left are removed next time)."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError

from ..errors import CheckpointError
from ..lock import run_lock
from ..run import read_run

NOTE = "undiffuse.json"  # what an export writes beside the model: where it came from, the class names
EXPORT_NAMES = {"unet", "scheduler", NOTE, "model_index.json"}  # what an export writes: a pipeline's index too


def check_out(out: Path, overwrite: bool, kind: str, source: Path) -> None:
    """Never replace something by accident. With overwrite, only a folder of `kind` that undiffuse wrote
    (an export: its undiffuse.json and nothing but what an export writes, so a Hub clone's .git/ is never
    deleted; an import: a readable undiffuse run, not any folder with a config.json); never the source,
    nor a folder the source lies in."""
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"'{out}' exists and is not a folder")
    resolved, src = out.resolve(), source.resolve()
    if resolved == src or resolved in src.parents:
        raise CheckpointError(f"'{out}' holds the source '{source}': writing there would delete what is read; "
                              "choose another folder")
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise CheckpointError(f"'{out}' holds the current folder, which replacing it would delete; write from "
                              "outside it, or to another folder")
    if not (out.is_dir() and any(out.iterdir())):
        return
    if not overwrite:
        raise CheckpointError(f"'{out}' already exists; pass --overwrite to replace it")
    problem = _foreign_export(out) if kind == "export" else _foreign_run(out)
    if problem:
        raise CheckpointError(f"refusing to overwrite '{out}': {problem}")


def _foreign_export(out: Path) -> str | None:
    names = {p.name for p in out.iterdir()}
    if NOTE not in names:
        return f"it is not a diffusers folder that undiffuse exported (no {NOTE})"
    foreign = sorted(names - EXPORT_NAMES)
    if foreign:
        return f"it holds what an export does not write ({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''})"
    return None


def _foreign_run(out: Path) -> str | None:
    try:
        read_run(out)
    except CheckpointError:
        return "it is not an undiffuse run folder"
    return None


@contextmanager
def staged(out: Path, overwrite: bool = False):
    """Yield a temporary folder beside `out`; move it into place at the end (`_replace`). Temporary
    folders that a killed export or import left behind (their process gone) are removed first."""
    try:
        out = out.resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(out)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-{os.getpid()}-"))
    except OSError as e:
        raise CheckpointError(f"cannot write '{out}' ({e.strerror or e})") from None
    try:
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes a private folder
        _replace(tmp, out, overwrite)
    except (OSError, SafetensorError) as e:  # a full disk, in diffusers' writer or safetensors' own
        raise CheckpointError(f"cannot write '{out}' ({getattr(e, 'strerror', None) or e}); nothing was replaced") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace(tmp: Path, out: Path, overwrite: bool = False) -> None:
    """Move tmp to out by renames only, so that a kill at any moment leaves the old folder or the new one
    whole (the old one, moved aside, is deleted last). A folder that appeared at `out` since the check
    (another command writing there at the same moment) is never replaced: the rename fails."""
    if not overwrite or not out.is_dir():  # without overwrite, only onto nothing: a rival's folder stays
        _move_onto_nothing(tmp, out)
        return
    aside = out.parent / f".{out.name}.old-{os.getpid()}-{tmp.name.rsplit('-', 1)[-1]}"
    with run_lock(out, "being replaced"):  # never under a run that is training
        os.rename(out, aside)
    os.rename(tmp, out)
    shutil.rmtree(aside, ignore_errors=True)


def _move_onto_nothing(tmp: Path, out: Path) -> None:
    """Rename tmp to out, where out is nothing or an empty folder; one that another command filled since
    the check makes the rename fail (the kernel's test, no window between a check and the rename)."""
    try:
        os.rename(tmp, out)
    except OSError as e:
        raise CheckpointError(f"'{out}' was written by another command meanwhile ({e.strerror}); "
                              "nothing was replaced") from None


def _remove_leftovers(out: Path) -> None:
    for path in out.parent.glob(f".{out.name}.*-*-*"):
        kind, _, rest = path.name[len(out.name) + 2:].partition("-")
        pid = rest.split("-", 1)[0]
        if kind in ("tmp", "old") and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
