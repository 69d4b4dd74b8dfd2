"""Hostile input through the command line: one line on stderr, exit status 2, nothing written or
overwritten, nothing loaded that could run code. Plus a fuzz test of the loaders and config parsers.
(Missing, empty and all-corrupt data, broken .npy files and bad TOML keys are in test_cli/test_data.)"""
import json
import pickle
import shutil
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from undiffuse import checkpoint as ckpt
from undiffuse.cli import main
from undiffuse.cli.flags import read_toml
from undiffuse.errors import UsageError
from undiffuse.data import DataError, load_data
from undiffuse.training import TrainConfig
from undiffuse.training.config import GROUP_OF

from cli_helpers import fails_cleanly

TINY = ["--image-size", "16", "--steps", "2", "--batch-size", "8", "--model", "tiny", "--grids", "0", "--quiet"]



@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A conditional and an unconditional run (2 steps each), copied per test before damaging them."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", "--data", "digits", *TINY, "--out", str(root / "cond")]) == 0
    assert main(["train", "--data", "digits", "--no-conditional", *TINY, "--out", str(root / "uncond")]) == 0
    return root


def _copy(runs, tmp_path, name="cond"):
    return shutil.copytree(runs / name, tmp_path / name)


# --- data -----------------------------------------------------------------------------------------

def _npy(tmp_path, name, array):
    path = tmp_path / name
    np.save(path, array)
    return path


@pytest.mark.parametrize("make,needle", [
    (lambda d: _npy(d, "inf.npy", np.full((4, 8, 8), np.inf, np.float32)), "NaN or infinite"),
    (lambda d: _npy(d, "complex.npy", np.zeros((4, 8, 8), np.complex64)), "dtype complex64"),
    (lambda d: _npy(d, "text.npy", np.full((4, 8, 8), "x")), "dtype <U1"),
    (lambda d: _npy(d, "vector.npy", np.zeros(10, np.uint8)), "shape (10,)"),
    (lambda d: _npy(d, "five_d.npy", np.zeros((2, 1, 3, 8, 8), np.uint8)), "shape (2, 1, 3, 8, 8)"),
])
def test_bad_arrays_are_refused_by_train(tmp_path, capsys, make, needle):
    err = fails_cleanly(capsys, ["train", "--data", make(tmp_path), *TINY, "--out", tmp_path / "r"])
    assert needle in err and not (tmp_path / "r").exists()


@pytest.mark.parametrize("labels,needle", [
    (np.arange(3), "holds 3 labels but the data has 4"),
    (np.array([0, 1, -1, 2]), "ids from -1"),
    (np.array([0.5, 1, 2, 3]), "not whole numbers"),
    (np.zeros((4, 2, 2)), "expected non-negative integer class ids"),
])
def test_labels_that_do_not_match_the_images_are_refused(tmp_path, capsys, labels, needle):
    data = _npy(tmp_path, "x.npy", np.zeros((4, 8, 8), np.uint8))
    err = fails_cleanly(capsys, ["train", "--data", data, "--labels", _npy(tmp_path, "y.npy", labels), *TINY,
                                  "--out", tmp_path / "r"])
    assert needle in err and not (tmp_path / "r").exists()


def test_mixed_pil_modes_train_together(tmp_path, capsys):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (12, 12), dtype=np.uint8)
    images = {
        "l.png": Image.fromarray(gray), "la.png": Image.fromarray(gray).convert("LA"),
        "p.png": Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).convert("P"),
        "rgb.png": Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)),
        "rgba.png": Image.fromarray(rng.integers(0, 256, (12, 12, 4), dtype=np.uint8)),
        "i16.png": Image.fromarray(gray.astype(np.uint16) * 257),
    }
    data = tmp_path / "data"
    data.mkdir()
    for name, image in images.items():
        image.save(data / name)
    assert {Image.open(data / n).mode for n in images} >= {"L", "LA", "P", "RGB", "RGBA"}
    assert main(["train", "--data", str(data), *TINY, "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "6 images 3x16x16" in out and "unreadable" not in out


def test_decompression_bombs_are_skipped_or_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a 64x64 image now counts as a bomb
    folder = tmp_path / "bombs"
    folder.mkdir()
    for k in range(2):
        Image.new("L", (64, 64), 255).save(folder / f"{k}.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no DecompressionBombWarning leaks onto the terminal
        assert "none of its 2 image files" in fails_cleanly(capsys, ["train", "--data", folder, *TINY,
                                                                      "--out", tmp_path / "r"])
        assert "too large" in fails_cleanly(capsys, ["noise", folder / "0.png", "--out", tmp_path / "s.png"])
    assert not (tmp_path / "r").exists() and not (tmp_path / "s.png").exists()


# --- run folders ------------------------------------------------------------------------------------

def _edit_config(run, edit):
    config = json.loads((run / ckpt.CONFIG).read_text())
    edit(config)
    (run / ckpt.CONFIG).write_text(json.dumps(config))


@pytest.mark.parametrize("damage,needle", [
    (lambda run: _edit_config(run, lambda c: c.update(format_version=99)), "incompatible version"),
    (lambda run: _edit_config(run, lambda c: c["unet"].update(base=32)), "does not fit the model"),
    (lambda run: _edit_config(run, lambda c: c["train"].update(learning_rate=1)), "unknown training option"),
    (lambda run: _edit_config(run, lambda c: c["train"].update(steps="many")), "steps must be"),
])
def test_run_folders_from_elsewhere_are_refused(runs, tmp_path, capsys, damage, needle):
    run = _copy(runs, tmp_path)
    damage(run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    sample = ["sample", run, "--n", "1", "--steps", "2", "--out", tmp_path / "s.png"]
    resume = ["train", "--out", run, "--resume", "--quiet"]
    errors = []
    for argv in (sample, resume):
        code = main([str(a) for a in argv])
        errors.append(capsys.readouterr().err.strip())
        assert code in (0, 2)
    assert any(needle in e for e in errors), errors
    assert all(len(e.splitlines()) <= 1 for e in errors), errors
    assert before == {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}  # nothing overwritten


def test_truncated_safetensors_are_refused(runs, tmp_path, capsys):
    run = _copy(runs, tmp_path)
    for path in [run / ckpt.EMA, *run.glob(f"{ckpt.CHECKPOINTS}/*/*.safetensors")]:
        path.write_bytes(path.read_bytes()[:200])
    assert "not a readable safetensors file" in fails_cleanly(capsys, ["sample", run, "--out", tmp_path / "s.png"])
    assert "no readable checkpoint" in fails_cleanly(capsys, ["train", "--out", run, "--resume"])


class _RunsCode:
    def __reduce__(self):  # unpickling this would create a file: proof that code ran
        return (open, ("/tmp/undiffuse-pickle-ran", "w"))


def test_pickle_files_are_refused_without_running_code(runs, tmp_path, capsys):
    marker = __import__("pathlib").Path("/tmp/undiffuse-pickle-ran")
    marker.unlink(missing_ok=True)
    run = _copy(runs, tmp_path)
    torch.save({"weights": _RunsCode()}, run / ckpt.EMA)  # a .pt file under the safetensors name
    assert "not a readable safetensors file" in fails_cleanly(capsys, ["sample", run, "--out", tmp_path / "s.png"])
    (run / ckpt.MODEL).write_bytes(pickle.dumps(_RunsCode()))
    fails_cleanly(capsys, ["sample", run, "--weights", "raw", "--out", tmp_path / "s.png"])
    assert not marker.exists()


# --- flags ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags,needle", [
    (["--image-size", "0"], "image_size must lie in [8, 1024], got 0"),
    (["--image-size", "-16"], "image_size must lie in [8, 1024]"),
    (["--channels", "2"], "invalid choice"),
    (["--cond-drop", "1"], "cond_drop must lie in [0, 1)"),
    (["--steps", "0"], "steps must be positive"),
    (["--steps", "-3"], "steps must be positive"),
    (["--batch-size", "-8"], "batch_size must be positive"),
    (["--minutes", "0"], "minutes must be positive"),
    (["--grad-accum", "0"], "grad_accum must be positive"),
    (["--grad-accum", "16", "--batch-size", "8"], "empty parts"),
    (["--keep-checkpoints", "0"], "keep_checkpoints must be positive"),
    (["--max-bad-steps", "-1"], "max_bad_steps must be positive"),
    (["--precision", "fp8"], "invalid choice"),
    (["--T", "1"], "T must lie in"),
    (["--lr", "nan"], "lr must be positive"),
])
def test_absurd_train_flags_are_refused_before_any_work(tmp_path, capsys, flags, needle):
    argv = ["train", "--data", "digits", "--image-size", "16", "--steps", "2", "--model", "tiny", *flags,
            "--out", tmp_path / "r"]
    assert needle in fails_cleanly(capsys, argv)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name,flags,needle", [
    ("cond", ["--n", "0"], "--n must lie in"),
    ("cond", ["--n", "-5"], "--n must lie in"),
    ("cond", ["--sampler", "magic"], "invalid choice"),
    ("cond", ["--steps", "-2"], "--steps must lie in"),
    ("cond", ["--label", "-1"], "out of range"),
    ("cond", ["--label", "10"], "out of range"),
    ("uncond", ["--guidance", "3"], "unconditional model"),
    ("uncond", ["--label", "2"], "unconditional model"),
])
def test_absurd_sample_flags_are_refused(runs, tmp_path, capsys, name, flags, needle):
    assert needle in fails_cleanly(capsys, ["sample", runs / name, *flags, "--out", tmp_path / "s.png"])
    assert not (tmp_path / "s.png").exists()


# --- fuzz ---------------------------------------------------------------------------------------------

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(content=st.binary(max_size=300), suffix=st.sampled_from([".png", ".jpg", ".gif", ".bmp", ".tif"]))
def test_fuzz_image_files_load_or_fail_cleanly(tmp_path_factory, content, suffix):
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / f"a{suffix}").write_bytes(content)
    (folder / f"b{suffix}").write_bytes(content[::-1])
    try:
        data = load_data(str(folder), image_size=8)
    except DataError:
        return
    assert torch.isfinite(data.images).all()


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@FUZZ
@given(head=st.sampled_from([b"", _npy_bytes(np.zeros((2, 8, 8), np.uint8)), _npy_bytes(np.zeros(3))]),
       cut=st.integers(0, 400), tail=st.binary(max_size=200))
def test_fuzz_npy_files_load_or_fail_cleanly(tmp_path_factory, head, cut, tail):
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / "x.npy"
    path.write_bytes(head[:cut] + tail)
    labels = folder / "y.npy"
    labels.write_bytes(tail + head[:cut])
    for kwargs in ({}, {"labels": str(labels)}):
        try:
            load_data(str(path), image_size=8, **kwargs)
        except DataError:
            pass


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=8), st.lists(st.integers(), max_size=2))


@FUZZ
@given(values=st.dictionaries(st.sampled_from(list(TrainConfig().options()) + ["bogus"]), _VALUES, max_size=6))
def test_fuzz_config_dicts_are_accepted_or_refused_cleanly(values):
    try:
        TrainConfig.flat(**values)
    except UsageError as e:
        assert len(str(e).splitlines()) == 1


@FUZZ
@given(text=st.text(max_size=120) | st.builds(lambda k, v: f"{k} = {v}\n",
                                                st.sampled_from(list(TrainConfig().options())),
                                                st.sampled_from(["1", "-1", "0.5", "nan", "inf", '"x"', "true",
                                                                 "[1]", "{a=1}", "1979-05-27"])))
def test_fuzz_toml_files_are_accepted_or_refused_cleanly(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "c.toml"
    path.write_text(text)
    try:
        TrainConfig.flat(**read_toml(str(path), GROUP_OF))
    except UsageError:
        pass
