"""What every command-line test checks of bad input: exit status 2 and one clean line on stderr."""
from undiffuse.cli import main


def fails_cleanly(capsys, argv) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("undiffuse: error:"), err
    assert "Traceback" not in err
    return err
