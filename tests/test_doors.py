"""Every door tried through the real command line, in a subprocess, as a careless or hostile user
would: each case exits 2 with one line under 300 characters on stderr, no traceback, and leaves
the run folder byte-identical (the in-process tests of each class go further; this checks that
nothing between `python -m undiffuse` and the library turns a bad input into a traceback)."""
import hashlib
import os
import struct

import pytest
from PIL import Image

from cli_helpers import fails_cleanly_in_a_process

POSTSCRIPT = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"


def digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith("eval")
            and p.name not in ("README.md", ".lock")}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("doors")
    (d / "ps.png").write_bytes(POSTSCRIPT)
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 3, 512, 512), }"
    (d / "lie.npy").write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) + header.ljust(117).encode() + b"\n")
    (d / "idx").mkdir()
    (d / "idx" / "train-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03" + struct.pack(">III", 0, 28, 28))
    Image.new("L", (16, 16), 128).save(d / "img.png")
    Image.new("L", (16, 16), 0).save(d / "black.png")
    Image.new("L", (1_000_000, 1), 0).save(d / "strip.png")  # a kilobyte of PNG
    os.mkfifo(d / "fifo")  # no writer ever comes: a read that waits for one hangs
    (d / "nest.json").write_text("[" * 100_000 + "]" * 100_000)
    return d


CASES = {  # class: argv, with {run} the tiny trained run and {d} the files above
    "resources: a batch that cannot fit": ["train", "--data", "digits", "--batch-size", "1000000000", "--out", "{d}/r1"],
    "resources: the digits at 1024 pixels": ["train", "--data", "mnist", "--image-size", "1024", "--out", "{d}/r2"],
    "resources: a .npy header that lies": ["train", "--data", "{d}/lie.npy", "--out", "{d}/r3"],
    "resources: a million-image PNG grid": ["sample", "{run}", "--n", "100000", "--out", "{d}/big.png"],
    "run folder: a resume flag that conflicts": ["train", "--out", "{run}", "--resume", "--batch-size", "64"],
    "outputs: eval over config.json": ["eval", "{run}", "--out", "{run}/config.json", "--overwrite"],
    "outputs: a run inside a run": ["train", "--data", "digits", "--steps", "1", "--out", "{run}/checkpoints/x"],
    "outputs: finetune over its base": ["finetune", "{run}", "--data", "digits", "--out", "{run}", "--overwrite"],
    "values: a NaN context weight": ["sample", "{run}", "--context", "nan*3", "--out", "{d}/s.png"],
    "values: a seed beyond 64 bits": ["sample", "{run}", "--seed", str(2 ** 70), "--out", "{d}/s.png"],
    "values: a NaN gradient clip": ["train", "--data", "digits", "--grad-clip", "nan", "--out", "{d}/r4"],
    "values: --device meta": ["sample", "{run}", "--device", "meta", "--out", "{d}/s.png"],
    "values: --device foo": ["sample", "{run}", "--device", "foo", "--out", "{d}/s.png"],
    "formats: PostScript named .png": ["img2img", "{run}", "--image", "{d}/ps.png", "--strength", "0.5", "--out", "{d}/e.png"],
    "formats: an IDX file with a zero dimension": ["train", "--data", "{d}/idx", "--out", "{d}/r5"],
    "reading: a FIFO as the config": ["train", "--config", "{d}/fifo", "--out", "{d}/r1"],
    "reading: /dev/zero as the config": ["train", "--config", "/dev/zero", "--out", "{d}/r1"],
    "reading: a FIFO as the captions": ["train", "--data", "digits", "--captions", "{d}/fifo", "--out", "{d}/r1"],
    "reading: a FIFO as the labels": ["train", "--data", "digits", "--labels", "{d}/fifo", "--out", "{d}/r1"],
    "reading: a nesting bomb as a TOML config": ["train", "--config", "{d}/nest.json", "--out", "{d}/r1"],
    "values: interpolation seeds beyond 64 bits": ["interpolate", "{run}", "--seeds", f"0,{2 ** 64}", "--out", "{d}/s.png"],
    "values: guidance beyond its limit": ["sample", "{run}", "--guidance", "1e6", "--out", "{d}/s.png"],
    "formats: a 1 x 1,000,000 strip": ["img2img", "{run}", "--image", "{d}/strip.png", "--strength", "0.5", "--out", "{d}/e.png"],
    "paths: a data path of 5,000 characters": ["train", "--data", "{d}/" + "a" * 5000, "--out", "{d}/r1"],
    "paths: an --out of 5,000 characters": ["train", "--data", "digits", "--out", "{d}/" + "a" * 5000],
    "paths: a run folder of 5,000 characters": ["sample", "{d}/" + "a" * 5000, "--out", "{d}/s.png"],
    "formats: an all-black mask": ["inpaint", "{run}", "--image", "{d}/img.png", "--mask", "{d}/black.png", "--out", "{d}/e.png"],
    "server: a host name that is not an address": ["serve", "{run}", "--allow-host", "a/b"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_door_refuses_in_one_line(case, trained, files):
    before = digest(trained)
    argv = [a.format(run=trained, d=files) for a in CASES[case]]
    err = fails_cleanly_in_a_process(argv)
    assert len(err) < 300, (case, err)
    assert digest(trained) == before, case
    assert not any((files / name).exists() for name in ("r1", "r2", "r3", "r4", "r5", "s.png", "e.png", "big.png"))


def test_an_immutable_parent_folder_is_one_line(files, tmp_path):
    """chattr +i: even root cannot create a folder in it (root ignores chmod, so a read-only mode proves nothing)."""
    import shutil
    import subprocess

    locked = tmp_path / "locked"
    locked.mkdir()
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here")
    try:
        err = fails_cleanly_in_a_process(["train", "--data", "digits", "--steps", "1", "--model", "tiny",
                                          "--out", locked / "run"])
        assert "cannot create the run folder" in err and "not permitted" in err
    finally:
        subprocess.run(["chattr", "-i", str(locked)])
    assert not (locked / "run").exists()
