"""The run folder under attack from its own users: two trainers at once (the lock), outputs that would
destroy inputs (a fine-tuning over its base, a run inside a run), finished runs resumed, numbers that
are numbers but not sane, and weight files that are too large, wrong or not finite.

Every refusal: exit status 2, one line naming the value and what is allowed, no traceback, and the run
folder byte-identical (every file hashed) with nothing created beside it."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from undiffuse import checkpoint as ckpt
from undiffuse.cli import main
from undiffuse.limits import MAX_SEED
from undiffuse.training import read_log

from cli_helpers import fails_cleanly

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
TINY = ["--data", "digits", "--image-size", "16", "--batch-size", "16", "--model", "tiny", "--grids", "0", "--quiet"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run of 8 steps, trained to its end."""
    run = tmp_path_factory.mktemp("runs") / "r"
    assert main(["train", *TINY, "--steps", "8", "--out", str(run)]) == 0
    return run


@pytest.fixture
def run(finished, tmp_path):
    return shutil.copytree(finished, tmp_path / "r")


def digest(folder: Path) -> dict:
    """Every file under a folder (the lock file too), by content; a huge sparse test file by its size
    and modification time (hashing 8 GiB of zeros would take a minute)."""
    def content(p: Path):
        stat = p.stat()
        return (stat.st_size, stat.st_mtime_ns) if stat.st_size > 2**27 else hashlib.sha256(p.read_bytes()).hexdigest()

    return {p.relative_to(folder).as_posix(): content(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, argv, needle: str, folder: Path) -> str:
    """Refused in one short line naming `needle`, with `folder` byte-identical and nothing new beside it."""
    before, around = digest(folder), sorted(folder.parent.iterdir())
    err = fails_cleanly(capsys, argv)
    assert needle in err and len(err) < 300, err
    assert digest(folder) == before and sorted(folder.parent.iterdir()) == around
    return err


# --- one writer at a time ----------------------------------------------------------------------------

def test_a_second_resume_while_the_first_trains_is_refused_naming_its_pid(run, capsys):
    first = subprocess.Popen([sys.executable, "-m", "undiffuse", "train", "--out", str(run), "--resume",
                              "--steps", "4000", "--quiet"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.time() + 120
        while len((run / "log.csv").read_text().splitlines()) < 8 + 1 + 3:  # it took steps of its own
            assert time.time() < deadline and first.poll() is None, first.communicate()
            time.sleep(0.2)
        err = fails_cleanly(capsys, ["train", "--out", run, "--resume", "--steps", "4000", "--quiet"])
        assert f"is in use: process {first.pid} has been training since" in err, err
    finally:
        first.send_signal(signal.SIGTERM)
        _, first_err = first.communicate(timeout=60)
    assert first.returncode == 130, first_err
    steps = read_log(run)[0]
    assert steps == sorted(set(steps)) and len(steps) > 8  # each logged step once: the second wrote nothing
    assert ckpt.latest_checkpoint(run)[1] >= steps[-1]  # the first saved where it stopped


def test_a_trainer_holds_the_lock_until_it_has_trained(tmp_path, capsys):
    from undiffuse.training import TrainConfig, Trainer

    cfg = TrainConfig.flat(data="digits", image_size=16, steps=4, batch_size=8, model="tiny", grids=0)
    trainer = Trainer.create(cfg, tmp_path / "r")
    assert "is in use" in fails_cleanly(capsys, ["train", "--out", tmp_path / "r", "--resume", "--quiet"])
    trainer.train(until=2, progress=False)  # done with the folder for now: the lock is free again
    assert main(["train", "--out", str(tmp_path / "r"), "--resume", "--steps", "6", "--quiet"]) == 0
    with pytest.raises(ckpt.CheckpointError, match="was trained by another process since step 2"):
        trainer.train(progress=False)  # its state is behind the folder's now


@pytest.mark.parametrize("planted", ["link", "fifo", "folder"])
@pytest.mark.parametrize("name", [".lock", "log.csv"])
def test_a_planted_lock_or_log_never_writes_outside_the_run_or_hangs(tmp_path, capsys, planted, name):
    """RUN/.lock and RUN/log.csv are opened in place: a link put there would make training write into the
    file it points to (elsewhere), a FIFO would block, a folder would raise."""
    run = tmp_path / "r"
    assert main(["train", *TINY, "--steps", "2", "--out", str(run)]) == 0
    victim = tmp_path / "precious.txt"
    victim.write_text("mine")
    (run / name).unlink(missing_ok=True)
    {"link": lambda p: p.symlink_to(victim), "fifo": os.mkfifo, "folder": Path.mkdir}[planted](run / name)
    err = fails_cleanly(capsys, ["train", "--out", run, "--resume", "--steps", "3", "--quiet"])
    assert name in err and "remove it" in err
    assert victim.read_text() == "mine"


# --- outputs that would destroy inputs -------------------------------------------------------------

def test_finetune_over_its_own_base_is_refused(run, capsys):
    argv = ["finetune", run, "--data", "digits", "--steps", "2", "--batch-size", "8", "--grids", "0", "--quiet",
            "--out", run]
    refused(capsys, [*argv, "--overwrite"], "is the base run itself", run)
    refused(capsys, argv, "is the base run itself", run)


@pytest.mark.parametrize("inside", ["checkpoints/x", "sub", "samples/deeper/x"])
def test_a_new_run_inside_another_runs_folder_is_refused(run, capsys, inside):
    err = refused(capsys, ["train", *TINY, "--steps", "2", "--out", run / inside], "lies inside the run folder", run)
    assert str(run) in err


def test_a_fine_tuning_run_inside_its_base_is_refused(run, capsys):
    refused(capsys, ["finetune", run, "--data", "digits", "--steps", "2", "--quiet", "--out", run / "ft"],
            "lies inside the run folder", run)


def test_overwrite_of_a_folder_that_is_not_a_run_is_refused(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"not really")
    refused(capsys, ["train", *TINY, "--steps", "2", "--out", folder, "--overwrite"], "not an undiffuse run folder",
            folder)


# --- resuming a finished run -----------------------------------------------------------------------

def test_resuming_a_finished_run_says_so_writes_nothing_and_exits_0(run, capsys):
    before = digest(run)
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and f"{run} is finished at step 8" in out[0] and "--steps N (N larger than 8)" in out[0]
    assert "nan" not in out[0] and digest(run) == before


def test_resuming_a_finished_time_budget_says_how_to_extend_it(tmp_path, capsys):
    run = tmp_path / "t"
    assert main(["train", *TINY, "--minutes", "0.01", "--out", str(run)]) == 0
    capsys.readouterr()
    before = digest(run)
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "is finished at step" in out and "--minutes M (M larger than 0.01)" in out and digest(run) == before


# --- numbers that are numbers but not sane ---------------------------------------------------------

@pytest.mark.parametrize("flags,needle", [
    (["--seed", "-1"], f"seed must lie in [0, {MAX_SEED}], got -1"),
    (["--seed", str(MAX_SEED + 1)], f"seed must lie in [0, {MAX_SEED}]"),
    (["--seed", "1" + "0" * 30], f"seed must lie in [0, {MAX_SEED}]"),
    (["--grad-clip", "nan"], "grad_clip must be positive and finite, got nan"),
    (["--grad-clip", "inf"], "grad_clip must be positive and finite, got inf"),
    (["--grids", "1000000000"], "grids must lie in [0, 1000], got 1000000000"),
    (["--batch-size", "1000000000"], "a training step of 1000000000 images of 16x16 (tiny model) needs about"),
    (["--batch-size", "1" + "0" * 400], "batch_size must be at most 1000000000, got 1000000000000"),
    (["--steps", "1" + "0" * 400], "steps must be at most 1000000000, got 10000000000000000000... (401 characters)"),
    (["--minutes", "1e300"], "minutes must be at most 1000000, got 1e+300"),
    (["--lr", "100"], "lr must be at most 10, got 100.0"),
    (["--warmup", "10000000000"], "warmup must be at most 1000000000"),
])
def test_insane_training_numbers_are_refused_before_any_folder_exists(tmp_path, capsys, flags, needle):
    out = tmp_path / "r"
    argv = ["train", "--data", "digits", "--image-size", "16", "--steps", "2", "--model", "tiny", "--quiet", *flags]
    start = time.perf_counter()
    for extra in ([], ["--dry-run"]):
        err = fails_cleanly(capsys, [*argv, *extra, "--out", out])
        assert needle in err and len(err) < 300, err
    assert not out.exists() and time.perf_counter() - start < 30


def test_a_step_too_large_for_memory_names_the_figure_the_limit_and_the_way_out(tmp_path, capsys):
    err = fails_cleanly(capsys, ["train", *TINY[:-1], "--steps", "2", "--batch-size", "1000000000",
                                 "--out", tmp_path / "r"])
    assert " TB, more than the " in err and "this machine can spare" in err and "--grad-accum" in err, err


def test_more_grids_than_steps_draws_one_a_step(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", *TINY[:-3], "--grids", "5", "--steps", "2", "--quiet", "--out", str(run)]) == 0
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step0000001.png", "step0000002.png"]
    assert "grids: 2 of the 5 asked for" in capsys.readouterr().out


def test_seeds_of_the_sampling_commands_share_the_range(finished, tmp_path, capsys):
    for seed in ("-1", str(MAX_SEED + 1)):
        err = fails_cleanly(capsys, ["sample", finished, "--seed", seed, "--out", tmp_path / "s.png"])
        assert f"seed must lie in [0, {MAX_SEED}]" in err
    assert main(["sample", str(finished), "--n", "2", "--steps", "2", "--seed", str(MAX_SEED),
                 "--out", str(tmp_path / "s.npy")]) == 0


# --- weight files ------------------------------------------------------------------------------------

def test_non_finite_weights_are_refused_for_sampling(run, tmp_path, capsys):
    tensors, step = ckpt.load_tensors(run / ckpt.EMA)
    tensors = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in tensors.items()}
    (run / ckpt.EMA).unlink()  # a hard link to the checkpoint's copy: replace, do not write through
    save_file(tensors, str(run / ckpt.EMA), metadata={"step": str(step)})
    err = refused(capsys, ["sample", run, "--n", "2", "--steps", "2", "--out", tmp_path / "s.png"],
                  "ema.safetensors holds non-finite weights", run)
    assert "NaN or infinity in" in err and not (tmp_path / "s.png").exists()


def _huge_weights(path: Path, names_and_shapes: dict) -> None:
    """A consistent safetensors file of float32 tensors of these shapes, sparse on disk."""
    header, offset = {"__metadata__": {"step": "8"}}, 0
    for name, shape in names_and_shapes.items():
        size = 4 * int(torch.tensor(shape).prod()) if shape else 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    with path.open("wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        f.truncate(8 + len(text) + offset)


@pytest.mark.parametrize("change", ["shape", "extra"])
def test_an_8_gib_weights_file_is_refused_from_its_header_before_any_data_is_read(run, tmp_path, capsys,
                                                                                 monkeypatch, change):
    shapes = {k: tuple(v.shape) for k, v in ckpt.load_tensors(run / ckpt.EMA)[0].items()}
    first = next(iter(shapes))
    if change == "shape":
        shapes[first] = (2**31,)  # 8 GiB of float32 under a name the model has
    else:
        shapes["extra.weight"] = (2**31,)
    (run / ckpt.EMA).unlink()
    _huge_weights(run / ckpt.EMA, shapes)
    assert (run / ckpt.EMA).stat().st_size > 8 * 2**30

    def never(data):
        raise AssertionError("the data was read")

    monkeypatch.setattr(ckpt, "load_bytes", never)
    err = refused(capsys, ["sample", run, "--n", "2", "--steps", "2", "--out", tmp_path / "s.png"],
                  "does not fit the model described by config.json", run)
    assert (f"{first} has shape (2147483648,)" if change == "shape" else "tensors it should not have") in err


def test_a_header_that_lies_about_the_file_is_refused(run, tmp_path, capsys):
    data = bytearray((run / ckpt.EMA).read_bytes())
    (run / ckpt.EMA).unlink()
    (run / ckpt.EMA).write_bytes(bytes(data[:-4]))  # the last tensor's data cut short
    refused(capsys, ["sample", run, "--out", tmp_path / "s.png"], "not a readable safetensors file", run)
    (run / ckpt.EMA).write_bytes((2**40).to_bytes(8, "little") + bytes(data[8:]))  # a header length past the end
    refused(capsys, ["sample", run, "--out", tmp_path / "s.png"], "a header of 1099511627776 bytes", run)


def test_a_resume_falls_back_from_a_checkpoint_of_the_wrong_shapes(run, capsys):
    newest = ckpt.checkpoint_folders(run)[0]
    (newest / ckpt.MODEL).unlink()  # a hard link of the top-level file: replace it, do not write through
    _huge_weights(newest / ckpt.MODEL, {"conv_in.weight": (2**31,)})
    assert main(["train", "--out", str(run), "--resume", "--steps", "9", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "does not fit the model" in err and "using an older checkpoint" in err
    assert ckpt.latest_checkpoint(run)[1] == 9
