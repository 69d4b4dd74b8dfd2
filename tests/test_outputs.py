"""Outputs never destroy inputs: no command writes over a run folder's own files, and x.npy never
silently replaces a labels file that is not its own."""
import hashlib

import numpy as np
import pytest

from undiffuse.cli import main

from cli_helpers import fails_cleanly


def digest(folder):
    """Every file of a run, by content; other tests may add eval*.json beside them, and eval rewrites
    the model card."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith("eval")
            and p.name != "README.md"}


@pytest.mark.parametrize("argv", [
    ["eval", "{run}", "--out", "{run}/config.json", "--overwrite", "--n", "10"],
    ["sample", "{run}", "--out", "{run}/checkpoints/x.png", "--steps", "2"],
    ["noise", "mnist", "--out", "{run}/checkpoints/strip.png"],
    ["img2img", "{run}", "--image", "{img}", "--strength", "0.5", "--out", "{run}/log.csv"],
])
def test_no_output_replaces_a_file_of_a_run(argv, trained, tmp_path, capsys):
    from PIL import Image

    Image.new("L", (16, 16), 128).save(tmp_path / "img.png")
    before = digest(trained)
    fails_cleanly(capsys, [a.format(run=trained, img=tmp_path / "img.png") for a in argv])
    assert digest(trained) == before


def test_npy_output_refuses_someone_elses_labels_file(trained, tmp_path, capsys):
    labels = tmp_path / "x.labels.npy"
    np.save(labels, np.arange(3))
    before = labels.read_bytes()
    assert main(["sample", str(trained), "--n", "2", "--steps", "2", "--out", str(tmp_path / "x.npy")]) == 2
    assert "x.labels.npy' exists" in capsys.readouterr().err
    assert labels.read_bytes() == before and not (tmp_path / "x.npy").exists()


def test_npy_output_replaces_its_own_earlier_pair(trained, tmp_path):
    out = tmp_path / "x.npy"
    for n in (3, 2):
        assert main(["sample", str(trained), "--n", str(n), "--steps", "2", "--out", str(out)]) == 0
    assert len(np.load(out)) == len(np.load(tmp_path / "x.labels.npy")) == 2
    assert main(["sample", str(trained), "--n", "2", "--steps", "2", "--label", "none", "--out", str(out)]) == 0
    assert not (tmp_path / "x.labels.npy").exists()  # unconditional images: the old labels would lie
