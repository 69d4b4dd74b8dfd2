"""The `undiffuse` command. Flags mirror the library's config fields; no logic lives here that a
library user would need. Every user error becomes one line on stderr and exit status 2."""
from __future__ import annotations

import argparse
import inspect
import re
import sys
from dataclasses import MISSING, fields
from typing import get_type_hints

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the user; the message is printed as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage block
        raise UsageError(f"{message} (see {self.prog} --help)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return EXIT_USAGE
        return args.handler(args) or 0
    except KeyboardInterrupt:
        print("undiffuse: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one place that turns errors into an exit status
        from .checkpoint import CheckpointError
        from .data import DataError

        if isinstance(e, (UsageError, DataError, CheckpointError, ValueError, OSError)) or _diverged(e):
            print(f"undiffuse: error: {_one_line(e)}", file=sys.stderr)
            return EXIT_USAGE
        raise


def _diverged(e: Exception) -> bool:
    """A training run stopped by non-finite losses (its module is loaded if it ran)."""
    train = sys.modules.get("undiffuse.train")
    return train is not None and isinstance(e, train.TrainingDiverged)


def _one_line(e: Exception) -> str:
    text = str(e) if not isinstance(e, OSError) or not e.filename else f"{e.strerror}: {e.filename}"
    return " ".join(text.split()) or type(e).__name__


def build_parser() -> argparse.ArgumentParser:
    from . import commands, edit_commands, serve

    parser = _Parser(prog="undiffuse", description="Denoising diffusion models: train, sample, look.")
    parser.add_argument("--version", action="version", version=f"undiffuse {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in (commands.add_demo, commands.add_train, commands.add_finetune, commands.add_sample,
                commands.add_noise, commands.add_eval, edit_commands.add_inpaint, edit_commands.add_outpaint,
                edit_commands.add_img2img, edit_commands.add_interpolate, serve.add_serve):
        add(sub)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


# --- flags generated from a config dataclass -------------------------------------------------------

def add_config_flags(parser: argparse.ArgumentParser, cls, choices: dict[str, tuple], skip=()) -> None:
    """One --flag per dataclass field; help from the field's trailing comment, choices where given.

    Defaults are SUPPRESSed so that only the flags a user typed appear in the namespace, which lets
    a TOML file sit between the dataclass defaults and the flags.
    """
    hints, comments = get_type_hints(cls), _field_comments(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _scalar_type(hints[f.name])
        default = None if f.default is MISSING else f.default
        help_text = f"{comments.get(f.name, '')} (default: {default})"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=kind, choices=choices.get(f.name),
                                default=argparse.SUPPRESS, metavar=f.name.upper() if f.name not in choices else None,
                                help=help_text)


def _scalar_type(hint):
    for kind in (bool, int, float, str):
        if hint is kind or kind in getattr(hint, "__args__", ()):
            return kind
    raise TypeError(f"no flag type for {hint}")


def _field_comments(cls) -> dict[str, str]:
    """`name: type = default  # comment` -> {name: comment}"""
    out = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+): [^=]+=.*?#\s*(.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def config_values(args: argparse.Namespace, cls) -> dict:
    """The config fields a TOML file (--config) and the typed flags set; flags win."""
    values = {}
    if getattr(args, "config", None):
        values.update(read_toml(args.config, cls))
    names = {f.name for f in fields(cls)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return values


def read_toml(path: str, cls) -> dict:
    import tomllib

    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"config file '{path}' does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"config file '{path}' is not valid TOML ({e})") from None
    values = {k.replace("-", "_"): v for k, v in values.items()}
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UsageError(f"config file '{path}': unknown key(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(names))}")
    hints = get_type_hints(cls)
    for key, value in values.items():
        kind = _scalar_type(hints[key])
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            values[key], ok = float(value), True
        if not ok:
            raise UsageError(f"config file '{path}': {key} must be a {kind.__name__}, got {value!r}")
    return values


if __name__ == "__main__":
    sys.exit(main())
