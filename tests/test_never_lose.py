"""Never lose a run: kill -9 at random moments, SIGTERM (twice), non-finite losses, a full disk or a
file-size limit, damaged checkpoints.

The subprocess tests run the real `python -m undiffuse train` on the 8x8 digits at 16x16 with a tiny
model, one thread each (bit-exact comparisons need the same thread count on both sides).
"""
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from undiffuse import checkpoint as ckpt
from undiffuse.cli import main
from undiffuse.training import TrainConfig, Trainer, TrainingDiverged, learner, read_log
from undiffuse.training.log import LOG

from cli_helpers import refusal

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
TRAIN = ["train", "--data", "digits", "--image-size", "16", "--batch-size", "16", "--model", "tiny",
         "--grids", "0", "--quiet", "--seed", "1"]


def undiffuse(*args) -> list[str]:
    return [sys.executable, "-m", "undiffuse", *map(str, args)]


def errors(err: str) -> list[str]:
    """stderr's lines but the notes (a run on the 1,797 digits says once that it may copy them)."""
    return [line for line in err.strip().splitlines() if not line.startswith("undiffuse: note:")]


def wait_for_rows(process, run: Path, rows: int) -> None:
    """Until the training process has logged `rows` rows (the header counts)."""
    deadline = time.time() + 120
    while not (run / LOG).is_file() or len((run / LOG).read_text().splitlines()) < rows:
        if time.time() > deadline or process.poll() is not None:
            process.kill()
            pytest.fail(f"training did not start: {process.communicate()}")
        time.sleep(0.2)


def _cfg(**kw):
    base = dict(data="digits", image_size=16, steps=8, batch_size=16, model="tiny", grids=0, seed=2)
    return TrainConfig.flat(**{**base, **kw})


def _state(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint but the wall clock."""
    tensors, _ = ckpt.load_checkpoint(folder)
    return {f"{name}/{k}": v for name, part in tensors.items() for k, v in part.items() if k != "elapsed"}


def _assert_same_state(a: Path, b: Path) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("kills,steps", [(3, 40), pytest.param(10, 150, marks=pytest.mark.slow)])
def test_kill_9_at_random_moments_and_resume_equals_an_uninterrupted_run(tmp_path, kills, steps):
    args = [*TRAIN, "--steps", steps, "--checkpoint-minutes", "0.0001"]  # a checkpoint after every step
    start = time.perf_counter()
    subprocess.run(undiffuse(*args, "--out", tmp_path / "whole"), env=ENV, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    run, rng = tmp_path / "killed", random.Random(kills)
    for _ in range(kills):
        resume = (run / ckpt.CONFIG).is_file()
        command = undiffuse("train", "--out", run, "--resume", "--quiet") if resume else undiffuse(*args, "--out", run)
        process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, seconds))
        process.kill()  # SIGKILL: no handler runs, whatever the process was writing stays half-written
        process.wait()
    done = subprocess.run(undiffuse("train", "--out", run, "--resume", "--quiet"), env=ENV, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    _assert_same_state(tmp_path / "whole", run)
    _assert_same_state(tmp_path / "whole" / ckpt.CHECKPOINTS / f"step{steps:08d}", run)
    assert read_log(run) == read_log(tmp_path / "whole")  # every step logged once, with the same loss


def test_sigterm_saves_and_says_how_to_resume(tmp_path):
    run = tmp_path / "r un"  # the printed command quotes the space
    process = subprocess.Popen(undiffuse(*TRAIN, "--steps", "1000", "--out", run), env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_rows(process, run, 3)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    lines = errors(err)
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].endswith(f"Continue with: undiffuse train --out '{run}' --resume")
    _, step, problems = ckpt.latest_checkpoint(run)
    assert step > 0 and not problems and f"step {step} is saved" in lines[0]


# A second SIGTERM during the last save: every write of a checkpoint file takes half a second here (a
# slow disk), so that the signal, sent 0.3 s after the first, lands inside the final save.
SLOW_DISK = """
import sys, time
from undiffuse import checkpoint
real = checkpoint.save_bytes
def slow(*args, **kwargs):
    time.sleep(0.5)
    return real(*args, **kwargs)
checkpoint.save_bytes = slow
from undiffuse.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_second_sigterm_during_the_final_save_says_what_is_saved_and_the_run_resumes(tmp_path):
    run = tmp_path / "r"
    command = [sys.executable, "-c", SLOW_DISK, *map(str, TRAIN), "--steps", "1000", "--out", str(run)]
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_rows(process, run, 3)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)  # while the final save writes its first file
    _, err = process.communicate(timeout=60)
    lines = errors(err)
    assert process.returncode == 130 and len(lines) == 1 and "Traceback" not in err, err
    _, step, problems = ckpt.latest_checkpoint(run)
    assert "was saved (a second signal stops at once)" in lines[0] and f"step {step} is saved" in lines[0], lines[0]
    assert lines[0].endswith(f"Continue with: undiffuse train --out {run} --resume")
    assert not problems and not list((run / ckpt.CHECKPOINTS).glob(".tmp-*"))  # no half checkpoint left
    resumed = Trainer.resume(run)
    assert resumed.step == step and resumed.train(until=step + 2, progress=False).steps == step + 2
    assert ckpt.latest_checkpoint(run)[1] == step + 2


def _flaky_loss(monkeypatch, trainer, bad_steps):
    real = learner.per_image_loss

    def loss(*args, **kwargs):
        out = real(*args, **kwargs)
        return out * float("nan") if trainer.step in bad_steps else out

    monkeypatch.setattr(learner, "per_image_loss", loss)


def test_a_non_finite_loss_skips_the_update_and_is_counted(tmp_path, monkeypatch):
    trainer = Trainer.create(_cfg(), tmp_path / "r")
    _flaky_loss(monkeypatch, trainer, {3, 4})
    trainer.train(until=3, progress=False)
    before = [p.clone() for p in (*trainer.model.parameters(), *trainer.ema.parameters())]
    result = trainer.train(until=5, progress=False)
    after = list((*trainer.model.parameters(), *trainer.ema.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # steps 3 and 4 changed nothing
    assert result.skipped == 2 and trainer.bad_steps == 2
    result = trainer.train(progress=False)
    assert trainer.bad_steps == 0 and result.steps == 8
    assert int(trainer.learner.optimizer.state_dict()["state"][0]["step"]) == 6  # 8 steps, 2 of them skipped
    assert trainer.learner.optimizer.state_dict()["state"][0]["exp_avg"].isfinite().all()


def test_too_many_non_finite_losses_in_a_row_stop_with_exit_2_keeping_the_checkpoint(tmp_path, monkeypatch, capsys):
    real = learner.per_image_loss
    monkeypatch.setattr(learner, "per_image_loss", lambda *a, **k: real(*a, **k) * float("inf"))
    run = tmp_path / "r"
    code = main(["train", "--data", "digits", "--image-size", "16", "--steps", "20", "--batch-size", "8",
                 "--model", "tiny", "--grids", "0", "--quiet", "--max-bad-steps", "3", "--out", str(run)])
    err = refusal(code, capsys.readouterr().err)
    assert "not finite for 3 steps in a row" in err and "checkpoint (step 0) is kept" in err
    _, step, _ = ckpt.latest_checkpoint(run)
    assert step == 0
    with pytest.raises(TrainingDiverged):
        Trainer.resume(run).train(progress=False)


# The child ignores SIGXFSZ, so that a write past RLIMIT_FSIZE fails with EFBIG as a full disk fails
# with ENOSPC: a real failed write, inside the real safetensors checkpoint writer.
FILE_SIZE_LIMIT = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from undiffuse.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_write_that_fails_for_real_is_one_line_and_the_previous_checkpoint_loads_and_resumes(tmp_path):
    run = tmp_path / "r"
    assert main([*TRAIN, "--steps", "4", "--out", str(run)]) == 0
    before = _state(run)
    sizes = {name: (run / name).stat().st_size for name in ckpt.FILES}
    limit = (sizes[ckpt.MODEL] + sizes[ckpt.STATE]) // 2  # the weights fit, the optimizer state does not
    assert sizes[ckpt.MODEL] < limit < sizes[ckpt.STATE]
    child = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMIT, str(limit), "train", "--out", str(run),
                            "--resume", "--steps", "8", "--checkpoint-minutes", "1e-6", "--quiet"],
                           env=ENV, capture_output=True, text=True)
    lines = [refusal(child.returncode, child.stderr)]
    assert "cannot write the checkpoint of step 5" in lines[0] and "ulimit -f" in lines[0], lines[0]
    assert "the previous checkpoint is intact (step 4)" in lines[0] and len(lines[0]) < 400
    after = _state(run)
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not list((run / ckpt.CHECKPOINTS).glob(".tmp-*"))  # no half-written folder left behind
    assert main(["train", "--out", str(run), "--resume", "--steps", "8", "--quiet"]) == 0
    assert ckpt.latest_checkpoint(run)[1] == 8 and read_log(run)[0] == list(range(1, 9))


# Root writes through any mode bits: the child gives up the capability that lets it (CAP_DAC_OVERRIDE,
# and CAP_DAC_READ_SEARCH), so that a folder made read-only refuses its writes for real, with EACCES
# from the real mkdtemp of the checkpoint writer. Capabilities are per thread: this runs before any other.
WITHOUT_OVERRIDE = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
header, data = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()  # version 3, this thread
if libc.capget(header, data):
    raise OSError(ctypes.get_errno(), "capget")
data[0] &= ~0b110  # the effective set without bits 1 and 2: CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
if libc.capset(header, data):
    raise OSError(ctypes.get_errno(), "capset")
from undiffuse.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="capabilities are Linux's")
def test_an_unwritable_folder_is_one_line_and_keeps_the_checkpoint(tmp_path):
    run = tmp_path / "r"
    Trainer.create(_cfg(checkpoint_minutes=1e-6), run).train(until=4, progress=False)
    before = _state(run)
    (run / ckpt.CHECKPOINTS).chmod(0o555)
    try:
        child = subprocess.run([sys.executable, "-c", WITHOUT_OVERRIDE, "train", "--out", str(run), "--resume",
                                "--quiet"], env=ENV, capture_output=True, text=True)
    finally:
        (run / ckpt.CHECKPOINTS).chmod(0o755)
    lines = [refusal(child.returncode, child.stderr)]
    assert "cannot write the checkpoint of step 5" in lines[0] and "Permission denied" in lines[0]
    assert "previous checkpoint is intact (step 4)" in lines[0] and "disk is full" not in lines[0]
    after = _state(run)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not list((run / ckpt.CHECKPOINTS).glob(".tmp-*"))


def test_keeps_the_last_k_checkpoints_and_falls_back_when_the_newest_is_truncated(tmp_path, capsys):
    run = tmp_path / "r"
    Trainer.create(_cfg(checkpoint_minutes=1e-6, keep_checkpoints=2), run).train(until=5, progress=False)
    assert [p.name for p in ckpt.checkpoint_folders(run)] == ["step00000005", "step00000004"]
    newest = run / ckpt.CHECKPOINTS / "step00000005" / ckpt.EMA
    newest.write_bytes(newest.read_bytes()[:1000])  # as a dying disk or a careless copy leaves it
    resumed = Trainer.resume(run)
    assert resumed.step == 4 and "step00000005" in resumed.skipped_checkpoints[0]
    resumed.close()  # a resumed Trainer holds the run's lock until it trains or closes
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "using an older checkpoint" in captured.err and "resuming" in captured.out and "step 4 of 8" in captured.out
    whole = tmp_path / "whole"
    Trainer.create(_cfg(), whole).train(progress=False)
    _assert_same_state(whole, run)


def test_a_run_killed_before_its_first_checkpoint_starts_again(tmp_path):
    run = tmp_path / "r"
    Trainer.create(_cfg(), run)
    shutil.rmtree(run / ckpt.CHECKPOINTS)  # as if killed before the first rename
    for name in ckpt.FILES:
        (run / name).unlink()
    resumed = Trainer.resume(run)
    assert resumed.step == 0 and resumed.saved_step == -1
    assert resumed.train(progress=False).steps == 8


def test_two_signals_at_once_three_times_in_a_row_leave_a_run_that_resumes(tmp_path):
    """Each time the second signal lands somewhere else (in a step, in the save it asked for, in a
    checkpoint's rename): whatever it cut, the folder holds a whole checkpoint that resumes."""
    run = tmp_path / "r"
    first = [*TRAIN, "--steps", "2000", "--checkpoint-minutes", "0.002", "--out", run]  # a row every 4 steps
    for k, gap in enumerate((0.0, 0.05, 0.2)):
        process = subprocess.Popen(undiffuse(*(first if k == 0 else ["train", "--out", run, "--resume", "--quiet"])),
                                   env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for_rows(process, run, 3 + 2 * k)
        process.send_signal(signal.SIGTERM)
        time.sleep(gap)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
        # 130, or the second signal's own default action once the first one's save was done and said so
        assert process.returncode in (130, -signal.SIGTERM) and "Traceback" not in err, err
    resumed = Trainer.resume(run)
    step = resumed.step
    assert step > 0 and resumed.train(until=step + 2, progress=False).steps == step + 2


def test_a_caption_table_that_cannot_be_written_leaves_no_half_made_run(tmp_path):
    """A text run writes its caption table before its first checkpoint: a real failed write there (past
    ulimit -f, as a full disk) is one line, and the folder it had begun is gone, not left for a resume."""
    import importlib.util

    if not importlib.util.find_spec("tokenizers"):
        pytest.skip("the text extra is not installed")
    run = tmp_path / "words"
    child = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMIT, str(100_000), *TRAIN, "--steps", "2",
                            "--captions", "templates", "--out", run], env=ENV, capture_output=True, text=True)
    line = refusal(child.returncode, child.stderr)
    assert "largest this process may write" in line or "File too large" in line, line
    assert not run.exists()


def test_a_resume_removes_the_temporary_files_a_killed_session_left(tmp_path):
    run = tmp_path / "r"
    Trainer.create(_cfg(steps=2), run).train(progress=False)
    for leftover in (run / ".config.json.ab12cd.tmp", run / ".loss.png.x9.tmp"):
        leftover.write_bytes(b"half")  # what kill -9 leaves between an atomic write and its rename
    Trainer.resume(run, changes={"steps": 3}).train(progress=False)
    assert not list(run.glob(".*.tmp"))
