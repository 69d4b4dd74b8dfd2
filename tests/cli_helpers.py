"""What every command-line test checks of bad input: exit status 2 and one clean line on stderr; and
the flags of the tiny run that conftest.py trains once for all the command-line tests."""
from undiffuse.cli import main

TRAIN = ["--data", "digits", "--image-size", "16", "--steps", "8", "--batch-size", "16", "--model", "tiny",
         "--grids", "0", "--quiet"]


def fails_cleanly(capsys, argv) -> str:
    capsys.readouterr()  # what earlier commands of the test printed (a note on stderr) is not this one's
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("undiffuse: error:"), err
    assert "Traceback" not in err
    return err
