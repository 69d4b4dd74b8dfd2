"""Reading a file a user names: a regular file only, never a FIFO (whose read waits for a writer that may
never come) or a device such as /dev/zero (whose read never ends), and never more than a limit, so
that a wrong path costs one line instead of a hang or all the memory. No torch here: the command
line reads its TOML file before it loads anything heavy."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import UsageError


def check_regular(path: str | Path, what: str, error: type[Exception] = UsageError) -> os.stat_result:
    """The file's status, if `path` is a regular file (links followed); else `error` naming it."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} '{path}' does not exist") from None
    except OSError as e:
        raise error(f"{what} '{path}' cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(status.st_mode):
        kind = ("a folder" if stat.S_ISDIR(status.st_mode) else "a FIFO" if stat.S_ISFIFO(status.st_mode)
                else "a device" if stat.S_ISCHR(status.st_mode) or stat.S_ISBLK(status.st_mode) else "not a file")
        raise error(f"{what} '{path}' is {kind}, not a regular file")
    return status


def read_limited(path: str | Path, limit: int, what: str, error: type[Exception] = UsageError) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; anything else is `error` naming it. It is
    opened without blocking, so a FIFO put in place after the check still cannot hang the read."""
    check_regular(path, what, error)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise error(f"{what} '{path}' is not a regular file")
            data = f.read(limit + 1)
    except OSError as e:
        raise error(f"{what} '{path}' cannot be read ({e.strerror or e})") from None
    if len(data) > limit:
        raise error(f"{what} '{path}' is larger than {_size(limit)}, the most a {what} may be")
    return data


def _size(n: int) -> str:
    return f"{n / 2**20:g} MB" if n >= 2**20 else f"{n / 2**10:g} kB"
