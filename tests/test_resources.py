"""Sizes that pass validation but cannot fit are refused before anything is allocated, with the
figure and the limit, and before any run folder is created; headers that lie about their size are
caught before the data is read."""
import gzip
import struct

import numpy as np
import pytest

from undiffuse import memory
from undiffuse.data import load_data
from undiffuse.errors import DataError, UsageError

from cli_helpers import fails_cleanly


def refused(capsys, argv, words):
    err = fails_cleanly(capsys, argv)
    assert words in err and len(err) < 300, err


def test_the_estimate_names_the_figure_and_the_limit(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 10 * 2**30)
    memory.require("a small thing", 2**30)
    with pytest.raises(UsageError, match=r"a big thing needs about 9.0 GB, more than the 8.0 GB this machine"):
        memory.require("a big thing", 9 * 2**30)


def test_the_digits_at_1024_pixels_are_refused_before_resizing(tmp_path, capsys):
    run = tmp_path / "r"
    refused(capsys, ["train", "--data", "mnist", "--image-size", "1024", "--steps", "1", "--out", run],
            "choose a smaller --image-size")
    assert not run.exists()


def test_a_tiny_npy_whose_header_claims_a_terabyte(tmp_path, capsys):
    path = tmp_path / "lie.npy"
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 3, 512, 512), }"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) + header.ljust(117).encode() + b"\n")
    assert path.stat().st_size < 200
    with pytest.raises(DataError, match="claims shape"):
        load_data(str(path))
    run = tmp_path / "r"
    refused(capsys, ["train", "--data", path, "--steps", "1", "--out", run], "claims shape")
    assert not run.exists()


def test_an_idx_gz_that_would_inflate_to_gigabytes_is_refused_from_its_header(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 2**30)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:  # claims 4 GiB of pixels; holds a few
        f.write(b"\0\0\x08\x03" + struct.pack(">III", 2**22, 32, 32) + bytes(100))
    with pytest.raises(UsageError, match="needs about"):
        load_data(str(path))


@pytest.mark.parametrize("shape", [(0, 28, 28), (5, 0, 28), (5, 28, 0)])
def test_an_idx_file_with_a_zero_dimension(tmp_path, shape):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\0\0\x08\x03" + struct.pack(">III", *shape))
    with pytest.raises(DataError, match="holds no images"):
        load_data(str(path))


def test_a_truncated_idx_file_says_how_much_is_there(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\0\0\x08\x03" + struct.pack(">III", 2, 4, 4) + bytes(20))
    with pytest.raises(DataError, match="holds 20 bytes of data for shape"):
        load_data(str(path))


def _cifar(folder, data, labels):
    import pickle

    folder.mkdir()
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": data, b"labels": labels}, f)


@pytest.mark.parametrize("data, labels, words", [
    (np.zeros((2, 3072), np.uint8), [1, 999], "class ids 0..9; found 999"),
    (np.zeros((2, 3072), np.uint8), [1, -1], "found -1"),
    (np.array([["x"] * 3072] * 2), [1, 2], "uint8 data"),
    (np.zeros((2, 3072), np.float64), [1, 2], "uint8 data"),
    (np.zeros((2, 3072), np.uint8), (1, 2), "N labels"),
])
def test_cifar_batches_with_bad_contents(tmp_path, capsys, data, labels, words):
    _cifar(tmp_path / "cifar-10-batches-py", data, labels)
    run = tmp_path / "r"
    refused(capsys, ["train", "--data", tmp_path / "cifar-10-batches-py", "--steps", "1", "--out", run], words)
    assert not run.exists()


def test_the_step_estimate_is_of_the_network_the_run_trains():
    """The estimate, the dry run's parameter count and the Learner read one config off the setup: an
    upscale run's extra input channels and a text run's cross-attention are counted, not left out."""
    import dataclasses

    from undiffuse.training import TrainConfig
    from undiffuse.training.learner import Learner
    from undiffuse.training.setup import new_setup
    from undiffuse.training.sizing import activation_elements, step_bytes
    from undiffuse.unet import count_parameters

    data = load_data("digits", image_size=16)
    plain = new_setup(TrainConfig.flat(data="digits", image_size=16, batch_size=8, model="tiny", conditional=False),
                      data)
    sr = new_setup(TrainConfig.flat(data="digits", image_size=16, batch_size=8, model="tiny", task="upscale",
                                    factor=2), data)
    assert sr.unet_config("tiny").cond_channels == 1 and step_bytes(sr, "tiny") > step_bytes(plain, "tiny")
    learner = Learner(sr, "tiny")
    assert learner.model.conv_in.in_channels == 2
    assert count_parameters(learner.model) == count_parameters(type(learner.model)(sr.unet_config("tiny")))
    unet = plain.unet_config("tiny")
    assert activation_elements(dataclasses.replace(unet, text_dim=384), 16) > activation_elements(unet, 16)


def test_a_config_edited_to_a_huge_network_is_refused_before_it_is_built(trained, tmp_path, capsys):
    """base 4096 passes the record's ranges; its weights would be tens of GB: the estimate comes first."""
    import json
    import shutil

    run = shutil.copytree(trained, tmp_path / "big")
    config = json.loads((run / "config.json").read_text())
    config["unet"]["base"], config["unet"]["head_channels"] = 4096, 4096
    (run / "config.json").write_text(json.dumps(config))
    refused(capsys, ["sample", run, "--n", "2", "--out", tmp_path / "s.png"], "the network of")
    assert not (tmp_path / "s.png").exists()


def test_the_room_left_under_ulimit_v_counts(monkeypatch):
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda which: (2**30, 2**30))
    assert memory.available_bytes() <= 2**30


def test_a_strip_of_two_million_pixels_loads_in_little_memory(tmp_path):
    """(1, 1, 1, 2,000,000) as --against or --data: cropped to its centre square before it is resized, so
    it needs kilobytes, not the 256 MB of a 16 x 32,000,000 intermediate (run under a 3 GB address limit)."""
    import subprocess
    import sys

    np.save(tmp_path / "strip.npy", np.zeros((1, 1, 1, 2_000_000), np.uint8))
    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30)); "
            f"from undiffuse.data import load_data; print(tuple(load_data({str(tmp_path / 'strip.npy')!r}, "
            "image_size=16).images.shape))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "(1, 1, 16, 16)", done.stderr[-500:]
