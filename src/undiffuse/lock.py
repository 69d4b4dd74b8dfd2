"""One writer per run folder: training (new, resumed or fine-tuned) and anything else that writes
into a run folder takes an exclusive lock on RUN/.lock for as long as it writes.

The lock is an advisory `flock` on an open file, so the operating system drops it when the process
ends, however it ends: a killed run never leaves a stale lock. The file records who holds it (pid,
command, start time), so a second writer is told whom it waits for. Where `fcntl` does not exist
(Windows) the lock is a no-op.
"""
from __future__ import annotations

import json
import os
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
    fd = os.open(run / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
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
