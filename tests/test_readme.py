"""README.md runs as written: its Python blocks execute (on a tiny run instead of ten minutes) and every
command line it shows uses a command and flags that the parser knows."""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from undiffuse.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
# The one change made to the README's code before it runs: a few steps of the tiny model, not 10 minutes.
TINY_RUN = ('minutes=10)', 'steps=3, model="tiny", batch_size=8, grids=0)')


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.S)


def command_lines() -> list[str]:
    """Each `undiffuse ...` command of the README's plain code blocks, its continuation lines joined."""
    commands = []
    for block in blocks(""):
        for line in block.splitlines():
            code = line.split("  #", 1)[0].rstrip()
            if commands and (commands[-1].endswith("\\") or re.match(r"\s+[\[-]", code)):
                commands[-1] = commands[-1].rstrip("\\") + " " + code.strip()
            elif re.search(r"(^|-m )undiffuse \w", code.strip()):
                commands.append(code.strip())
    return [c for part in commands for c in re.split(r"&&|\|\|", part) if "undiffuse " in c]


def subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_the_python_blocks_run(tmp_path, monkeypatch):
    (code,) = blocks("python")
    assert TINY_RUN[0] in code, "the README's training call changed: update TINY_RUN"
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace(*TINY_RUN), "README.md", "exec"), {})
    assert (tmp_path / "sevens.png").is_file() and (tmp_path / "runs" / "digits" / "ema.safetensors").is_file()


def test_the_command_lines_use_known_commands_and_flags():
    parsers, problems = subparsers(), []
    lines = command_lines()
    assert len(lines) > 20, lines
    for line in lines:
        line = line.split("undiffuse ", 1)[1]  # what comes before (torchrun's flags) is not ours
        words = line.split()
        if words[0] not in parsers:
            problems.append(f"unknown command {words[0]!r} in: {line}")
            continue
        known = parsers[words[0]]._option_string_actions
        problems += [f"{words[0]} has no {flag}: {line}" for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line)
                     if flag not in known]
    assert not problems, "\n".join(problems)


# --- every command's flags, as a snapshot: a changed flag is a visible diff in review ------------------------

SNAPSHOT = Path(__file__).resolve().parent / "snapshots" / "help.txt"
UPDATE = "UNDIFFUSE_UPDATE_SNAPSHOTS"


def flag_table() -> str:
    """Each command's description and flags (names, value, choices, default, help), read from the parser
    rather than its rendered --help, whose layout changes between Python versions."""
    out = []
    for name, parser in subparsers().items():
        out += ["", f"## undiffuse {name}", " ".join((parser.description or "").split())]
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            names = ", ".join(action.option_strings) or action.dest.upper()
            value = f" {action.metavar or action.dest.upper()}" if action.nargs != 0 else ""
            choices = f" {{{','.join(map(str, action.choices))}}}" if action.choices else ""
            default = "" if action.default in (None, False, argparse.SUPPRESS) else f" [default: {action.default}]"
            out.append(f"{names}{value}{choices}{default}: {' '.join((action.help or '').split())}")
    return "\n".join(out).strip() + "\n"


def test_every_commands_flags_match_the_snapshot():
    table = flag_table()
    if os.environ.get(UPDATE):
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(table)
    assert SNAPSHOT.read_text() == table, f"the flags changed: review the diff, then rerun with {UPDATE}=1"
