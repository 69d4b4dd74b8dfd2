"""Names a file system allows but UTF-8 does not: a run folder whose name holds a non-UTF-8 byte
trains, draws its pictures, and serves every later command like any other."""
import os

import numpy as np
import pytest

from undiffuse.cli import main

from cli_helpers import TRAIN


@pytest.fixture
def odd_run(tmp_path):
    try:
        run = tmp_path / os.fsdecode(b"run-\xff\xfe")
        run.mkdir()
        run.rmdir()
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses non-UTF-8 names")
    return run


def test_a_run_folder_with_a_non_utf8_name_works_throughout(odd_run, tmp_path):
    grids = [a if a != "0" or TRAIN[i - 1] != "--grids" else "1" for i, a in enumerate(TRAIN)]
    assert main(["train", *grids, "--out", str(odd_run)]) == 0
    assert (odd_run / "loss.png").is_file() and any((odd_run / "samples").iterdir())
    assert main(["sample", str(odd_run), "--n", "2", "--steps", "2", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape[0] == 2
    assert main(["sample", str(odd_run), "--steps", "2"]) == 0  # the default output, inside the odd folder
    assert main(["eval", str(odd_run), "--n", "10", "--steps", "2", "--quiet"]) == 0
    assert main(["train", "--out", str(odd_run), "--resume", "--quiet"]) == 0
