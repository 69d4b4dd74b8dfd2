"""What every command-line test checks of bad input: exit status 2 and one clean line on stderr; and
the flags of the tiny run that conftest.py trains once for all the command-line tests."""
import os
import subprocess
import sys

from undiffuse.cli import main

TRAIN = ["--data", "digits", "--image-size", "16", "--steps", "8", "--batch-size", "16", "--model", "tiny",
         "--grids", "0", "--quiet"]


def refusal(code: int, err: str) -> str:
    """The one line of a refused command (exit status 2, one `undiffuse: error:` line, no traceback)."""
    lines = [line for line in err.strip().splitlines() if not line.startswith("undiffuse: note:")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("undiffuse: error:"), err
    assert "Traceback" not in err, err
    return lines[0]


def fails_cleanly(capsys, argv) -> str:
    """Run a command in this process and return its one line of refusal."""
    capsys.readouterr()  # what earlier commands of the test printed (a note on stderr) is not this one's
    code = main([str(a) for a in argv])
    return refusal(code, capsys.readouterr().err)


def fails_cleanly_in_a_process(argv, timeout: float = 120, **env) -> str:
    """Run a command as a user does, in its own process, and return its one line of refusal."""
    done = subprocess.run([sys.executable, "-m", "undiffuse", *map(str, argv)], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1", **env), timeout=timeout)
    return refusal(done.returncode, done.stderr)
