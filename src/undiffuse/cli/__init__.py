"""The `undiffuse` command: one module per command, each with `add(sub)` (its flags) and `run(args)`.

This is the only place that turns an `UndiffuseError` (bad input), or an OSError by which the system
refuses a path or a write (REFUSED_BY_THE_SYSTEM), into one line on stderr and exit status 2. Anything
else is a bug and keeps its traceback. Modules are imported only for the command
that runs, so `undiffuse --help` starts without loading torch.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import time

from ..errors import UndiffuseError
from .flags import Parser

EXIT_USAGE = 2
# What the operating system says of a path the user gave or of the machine's state, never of the code:
# a name too long, no permission (an immutable or read-only folder), no space, a file-size limit, a
# file where a folder belongs. These end in one line too; any other OSError is a bug.
REFUSED_BY_THE_SYSTEM = {errno.ENAMETOOLONG, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                         errno.EFBIG, errno.ENOTDIR, errno.ELOOP}
COMMANDS = ("demo", "train", "finetune", "distill", "sample", "noise", "eval", "inpaint", "outpaint", "img2img",
            "interpolate", "upscale", "serve", "export", "import")
MODULES = {"import": "import_run"}  # command names that are not module names (import is a keyword)


def main(argv: list[str] | None = None) -> int:
    """Run one command: the process's own arguments (argv None: its start-up counts against a time
    budget, as the process began for this command) or `argv` (a call from Python: counted from here)."""
    started = time.perf_counter() - (process_age() if argv is None else 0.0)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.started = started
        if not getattr(args, "command", None):
            parser.print_help()
            return EXIT_USAGE
        return args.handler(args) or 0
    except KeyboardInterrupt:
        print("undiffuse: interrupted", file=sys.stderr)
        return 130
    except UndiffuseError as e:
        print(f"undiffuse: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        if e.errno not in REFUSED_BY_THE_SYSTEM:
            raise  # anything else is a bug, and keeps its traceback
        print(f"undiffuse: error: {system_refusal(e)}", file=sys.stderr)
        return EXIT_USAGE


def process_age() -> float:
    """Seconds since this process started (Linux's /proc): the interpreter's start-up and the imports
    before `main`; 0 where the start time cannot be read."""
    try:
        with open("/proc/self/stat") as f:
            after_name = f.read().rsplit(")", 1)[1].split()  # the name may hold spaces and parentheses
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - int(after_name[19]) / os.sysconf("SC_CLK_TCK"))  # field 22, starttime
    except (OSError, ValueError, IndexError):
        return 0.0


def system_refusal(e: OSError) -> str:
    """A path the operating system refused, in one line: its reason and the path, shortened."""
    name = str(e.filename or "")
    shown = name if len(name) <= 80 else f"{name[:40]}...{name[-30:]} ({len(name):,} characters)"
    return f"{e.strerror}: '{shown}'" if name else str(e.strerror or e)


def one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="undiffuse", description="Denoising diffusion models: train, sample, look.")
    parser.add_argument("--version", action="version", version=f"undiffuse {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{MODULES.get(name, name.replace('-', '_'))}").add(sub)
    return parser


def _version() -> str:
    from .. import __version__

    return __version__


if __name__ == "__main__":
    sys.exit(main())
