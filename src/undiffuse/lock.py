"""One writer per run folder: training (new, resumed or fine-tuned) and anything else that writes
into a run folder takes an exclusive lock on RUN/.lock for as long as it writes.

The lock is an advisory `flock` on an open file, so the operating system drops it when the process
ends, however it ends: a killed run never leaves a stale lock. The file records who holds it (pid,
command, start time), so a second writer is told whom it waits for. Where `fcntl` does not exist
(Windows) the lock is a no-op.
"""
from __future__ import annotations

import errno
import json
import os
import stat
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import CheckpointError

LOCK = ".lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


@contextmanager
def run_lock(run: Path, what: str = "writing"):
    """Hold RUN/.lock while the block runs; CheckpointError (one line) when another process holds it."""
    run = Path(run)
    if fcntl is None or not run.is_dir():
        yield
        return
    fd = _open_lock(run / LOCK)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CheckpointError(f"run folder '{run}' is in use: {_holder(fd)}; wait for it to finish "
                                  "or stop it first") from None
        _record(fd, what)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _open_lock(path: Path) -> int:
    """RUN/.lock opened for writing as a regular file of the run's own: never through a link planted in
    its place (which would make the lock write into a file elsewhere), never a FIFO (opened without
    blocking) or a folder."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:  # ELOOP for a link, EISDIR for a folder, ENXIO for a FIFO; EACCES, EROFS: read-only
        planted = e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO)
        hint = "; it is not a file of the run's own: remove it and try again" if planted else ""
        raise CheckpointError(f"cannot open '{path}' as the run's lock ({e.strerror}){hint}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CheckpointError(f"'{path}' is not a regular file: remove it and try again")
    return fd


def _record(fd: int, what: str) -> None:
    os.ftruncate(fd, 0)
    holder = {"pid": os.getpid(), "what": what, "command": _short(" ".join(sys.argv)), "since": time.time()}
    os.pwrite(fd, json.dumps(holder).encode(), 0)


def _short(command: str, limit: int = 80) -> str:
    """Enough of a command line to recognise it, and a refusal that stays one short line."""
    return command if len(command) <= limit else command[:limit - 3] + "..."


def _holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        since = time.strftime("%H:%M:%S", time.localtime(holder["since"]))
        return f"process {holder['pid']} has been {holder['what']} since {since} ({holder['command']})"
    except (ValueError, KeyError, TypeError, OSError):
        return "another process holds its lock"
