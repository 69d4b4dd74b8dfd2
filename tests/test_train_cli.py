"""`undiffuse train --dry-run`, and `--resume` with the flags of the command that started the run:
agreeing flags pass, a longer budget extends the run, runtime options change, anything else is refused."""
import csv
import json
import shutil

import pytest

from undiffuse import checkpoint as ckpt
from undiffuse.cli import main
from undiffuse.run import read_run
from undiffuse.training.config import TrainConfig
from undiffuse.training.recipe import lr_at

from cli_helpers import fails_cleanly

COMMAND = ["train", "--data", "digits", "--image-size", "16", "--steps", "8", "--batch-size", "16", "--model", "tiny",
           "--grids", "0", "--quiet"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run of COMMAND, trained to its end (8 steps)."""
    run = tmp_path_factory.mktemp("runs") / "r"
    assert main([*COMMAND, "--out", str(run)]) == 0
    return run


@pytest.fixture
def run(finished, tmp_path):
    return shutil.copytree(finished, tmp_path / "r")


def _files(folder) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --- --dry-run ---------------------------------------------------------------------------------------

def test_dry_run_prints_the_resolved_options_data_device_model_and_plan_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "new"
    argv = ["train", "--data", "digits", "--image-size", "16", "--steps", "20", "--model", "tiny", "--dry-run"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert not out.exists()
    options = dict(line.strip().split(" = ", 1) for line in printed.splitlines() if line.startswith("  "))
    assert set(options) == set(TrainConfig().options())  # every option, with its value
    assert options["image_size"] == "16" and options["steps"] == "20" and options["model"] == "'tiny'"
    assert options["batch_size"] == "32 *" and options["channels"] == "1 *"  # the device's batch, the data's channels
    assert options["lr"] == "0.002 *" and options["warmup"] == "10 *" and options["ema_decay"].endswith(" *")
    assert "data: digits: 1797 images 1x16x16, 10 classes" in printed and "device: cpu" in printed
    assert "model: tiny, 0.20M parameters" in printed
    assert "plan: 20 steps of 32 images, peak lr 0.002 with 10 warm-up steps" in printed


def test_dry_run_of_a_time_budget_says_the_model_and_steps_are_chosen_at_the_start(tmp_path, capsys):
    assert main(["train", "--data", "digits", "--dry-run", "--out", str(tmp_path / "new")]) == 0
    printed = capsys.readouterr().out
    assert "  minutes = 10.0 *" in printed and "  model = 'auto'\n" in printed
    assert "model: auto, chosen when training starts by timing a step of each size" in printed
    assert "as many steps of 32 images as 10 minutes allow" in printed
    assert not (tmp_path / "new").exists()


def test_dry_run_refuses_what_the_real_command_would_refuse(finished, tmp_path, capsys):
    before = _files(finished)
    assert "already exists" in fails_cleanly(capsys, [*COMMAND, "--out", finished, "--dry-run"])
    assert "lr must be positive" in fails_cleanly(capsys, [*COMMAND, "--lr", "-1", "--out", tmp_path / "x", "--dry-run"])
    assert "--dry-run previews a new run" in fails_cleanly(capsys, [*COMMAND, "--out", finished, "--resume", "--dry-run"])
    assert _files(finished) == before and not (tmp_path / "x").exists()


# --- --resume with flags -----------------------------------------------------------------------------

def test_the_exact_command_with_resume_appended_is_accepted(run, capsys):
    before = _files(run)
    assert main([*COMMAND, "--out", str(run), "--resume"]) == 0  # finished: accepted, and nothing to do
    assert f"{run} is finished at step 8" in capsys.readouterr().out and _files(run) == before
    filled = ["--lr", "0.002", "--channels", "1", "--warmup", "8"]  # what the recipe and the data chose
    assert main([*COMMAND, *filled, "--steps", "9", "--out", str(run), "--resume"]) == 0
    assert "resuming" in capsys.readouterr().out and read_run(run).plan.steps == 9


@pytest.mark.parametrize("flags,needle", [
    (["--batch-size", "64"], "was trained with batch_size 16, not 64: drop --batch-size"),
    (["--data", "mnist"], "was trained with data 'digits', not 'mnist': drop --data"),
    (["--image-size", "28"], "image_size 16, not 28"),
    (["--seed", "3"], "seed 0, not 3"),
    (["--lr", "0.01"], "lr 0.002 (the recipe's), not 0.01"),
    (["--prediction", "v"], "prediction 'eps', not 'v'"),
    (["--model", "small"], "model 'tiny', not 'small'"),
    (["--precision", "bf16"], "precision 'fp32' (auto), not 'bf16'"),
    (["--steps", "4"], "was planned for steps 8, not 4: --resume extends a run, it cannot shorten one"),
    (["--minutes", "3"], "has a budget of 8 steps, not of minutes"),
    (["--steps", "-4"], "steps must be positive"),
])
def test_a_conflicting_flag_is_refused_naming_both_values_and_the_folder_stays_as_it_was(run, capsys, flags,
                                                                                          needle):
    before = _files(run)
    assert needle in fails_cleanly(capsys, [*COMMAND, *flags, "--out", run, "--resume"])
    assert _files(run) == before


def test_a_larger_steps_extends_the_run_and_the_cosine_stretches_over_it(run, capsys):
    assert main([*COMMAND, "--steps", "12", "--out", str(run), "--resume"]) == 0
    assert "resuming" in (out := capsys.readouterr().out) and "step 8 of 12" in out
    record = read_run(run)
    assert record.plan.steps == 12 and record.train["steps"] == 12 and record.plan.warmup == 8  # warm-up kept
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    for r in rows[8:]:  # the lr of step s is the cosine of a 12-step run at s - 1
        assert float(r["lr"]) == pytest.approx(lr_at(int(r["step"]) - 1, record.plan), rel=1e-3)


def test_runtime_options_may_change_on_resume_and_are_recorded(run):
    assert main([*COMMAND, "--steps", "10", "--grad-accum", "2", "--device", "cpu", "--keep-checkpoints", "3",
                 "--out", str(run), "--resume"]) == 0
    train = json.loads((run / ckpt.CONFIG).read_text())["train"]
    assert (train["grad_accum"], train["device"], train["keep_checkpoints"], train["steps"]) == (2, "cpu", 3, 10)


def test_a_time_budgeted_run_is_extended_by_minutes_not_steps(tmp_path, capsys):
    run = tmp_path / "t"
    budget = ["train", "--data", "digits", "--image-size", "16", "--batch-size", "8", "--model", "tiny", "--grids", "0",
              "--quiet", "--out", str(run)]
    assert main([*budget, "--minutes", "0.01"]) == 0
    capsys.readouterr()
    steps = read_run(run).plan.steps
    assert "extend it with --minutes, not --steps" in fails_cleanly(capsys, [*budget, "--steps", "99", "--resume"])
    assert main([*budget, "--minutes", "0.03", "--resume"]) == 0
    record = read_run(run)
    assert record.train["minutes"] == 0.03 and record.plan.steps > steps


def test_resume_of_a_folder_that_does_not_exist_says_so(tmp_path, capsys):
    err = fails_cleanly(capsys, ["train", "--data", "mnist", "--out", tmp_path / "RUN", "--resume"])
    assert "cannot resume" in err and "does not exist; drop --resume to start it" in err
    assert not (tmp_path / "RUN").exists()


def test_the_command_line_counts_its_own_start_up_against_a_time_budget(tmp_path, monkeypatch):
    """A process started for the command (argv from the command line) has spent its start-up against
    the budget; a call from Python counts from the call (every other test here: the test process is
    minutes old). Here the process 'started' 30 s before main: of a 33 s budget, 3 s are left."""
    import sys

    import undiffuse.cli as cli

    assert 0 < cli.process_age() < 7 * 24 * 3600
    monkeypatch.setattr(cli, "process_age", lambda: 30.0)
    monkeypatch.setattr(sys, "argv", ["undiffuse", "train", "--data", "digits", "--image-size", "16", "--batch-size",
                                      "8", "--model", "tiny", "--grids", "0", "--quiet", "--minutes", "0.55",
                                      "--out", str(tmp_path / "r")])
    assert cli.main() == 0
    with (tmp_path / "r" / "log.csv").open() as f:
        seconds = float(list(csv.DictReader(f))[-1]["seconds"])
    assert 30 <= seconds <= 33  # its clock began at 30 s, and the deadline still held
