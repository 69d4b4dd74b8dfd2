"""What training leaves beside the weights: the loss by noise level in log.csv and loss.png, the note
that a small data set may be copied, and the model card RUN/README.md."""
import csv
import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from undiffuse.cli import main
from undiffuse.training import TrainConfig, Trainer
from undiffuse.training.card import CARD, write_card
from undiffuse.training.learner import QUARTERS, draw_batch
from undiffuse.training.log import LOG_COLUMNS, QUARTER_COLUMNS, read_log_columns
from undiffuse.viz import save_loss_curve

TRAIN = ["train", "--data", "digits", "--image-size", "16", "--batch-size", "16", "--model", "tiny", "--grids", "0",
         "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """40 steps, each logged."""
    run = tmp_path_factory.mktemp("runs") / "r"
    assert main([*TRAIN, "--steps", "40", "--out", str(run)]) == 0
    return run


def _rows(run):
    with (run / "log.csv").open(newline="") as f:
        return list(csv.DictReader(f))


# --- the loss by noise level -------------------------------------------------------------------------

def test_an_update_splits_its_per_image_losses_by_the_quarter_of_t(tmp_path):
    cfg = TrainConfig.flat(data="digits", image_size=16, steps=4, batch_size=16, model="tiny", grids=0, seed=5)
    trainer = Trainer.create(cfg, tmp_path / "r")
    _, _, t, _ = draw_batch(trainer.setup, 0)
    loss = trainer.train_step()
    sums, counts = trainer.learner.quarters[:QUARTERS], trainer.learner.quarters[QUARTERS:]
    assert counts.tolist() == torch.bincount(t * 4 // trainer.schedule.T, minlength=4).double().tolist()
    assert sums.sum().item() == pytest.approx(16 * loss, rel=1e-5)  # the batch mean is their mean
    trainer.close()


def test_the_log_has_the_four_quarters_beside_the_total(trained):
    rows = _rows(trained)
    assert list(rows[0]) == LOG_COLUMNS and len(rows) == 40
    for row in rows:
        quarters = [float(row[name]) for name in QUARTER_COLUMNS if math.isfinite(float(row[name]))]
        assert quarters and min(quarters) - 1e-6 <= float(row["loss"]) <= max(quarters) + 1e-6  # a weighted mean
    late = [float(r["loss_q0"]) for r in rows[-10:]], [float(r["loss_q3"]) for r in rows[-10:]]
    assert np.nanmean(late[0]) != pytest.approx(np.nanmean(late[1]), rel=0.05)  # the levels differ
    columns = read_log_columns(trained)
    assert all(columns[name] for name in QUARTER_COLUMNS) and len(columns["loss"]) == 40


def test_the_loss_curve_shows_the_quarters_and_an_old_log_still_plots(trained, tmp_path):
    columns = read_log_columns(trained)
    quarters = {name: columns[name] for name in QUARTER_COLUMNS}
    plain = save_loss_curve(columns["step"], columns["loss"], tmp_path / "plain.png")
    split = save_loss_curve(columns["step"], columns["loss"], tmp_path / "split.png", quarters=quarters)
    assert np.asarray(Image.open(plain)).tolist() != np.asarray(Image.open(split)).tolist()  # more lines drawn
    old = shutil.copytree(trained, tmp_path / "old")
    rows = _rows(trained)
    with (old / "log.csv").open("w", newline="") as f:  # the columns of a log written before the quarters
        writer = csv.DictWriter(f, ["step", "loss", "lr", "images_per_s", "seconds", "skipped"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    columns = read_log_columns(old)
    assert len(columns["loss"]) == 40 and not any(columns[name] for name in QUARTER_COLUMNS)
    save_loss_curve(columns["step"], columns["loss"], tmp_path / "old.png",
                    quarters={name: columns[name] for name in QUARTER_COLUMNS})
    assert main(["train", "--out", str(old), "--resume", "--steps", "44", "--quiet"]) == 0  # plots loss.png
    rows = _rows(old)
    assert list(rows[0]) == LOG_COLUMNS and [int(r["step"]) for r in rows] == list(range(1, 45))
    assert rows[0]["loss_q0"] == "" and math.isfinite(float(rows[-1]["loss"])) and rows[-1]["loss_q1"] != ""


# --- few images ----------------------------------------------------------------------------------------

def test_a_run_on_few_images_says_once_that_samples_may_copy_them(trained, capsys, tmp_path):
    assert main([*TRAIN, "--steps", "2", "--out", str(tmp_path / "few")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("undiffuse: note: 1797 training images are few"), err
    assert f"undiffuse eval {tmp_path / 'few'}" in err[0] and len(err[0]) < 300
    assert main(["train", "--out", str(tmp_path / "few"), "--resume", "--steps", "4", "--quiet"]) == 0
    assert capsys.readouterr().err == ""  # said once, when the run began
    np.save(tmp_path / "many.npy", np.random.default_rng(0).integers(0, 256, (2000, 8, 8), dtype=np.uint8))
    assert main(["train", "--data", str(tmp_path / "many.npy"), "--steps", "1", "--batch-size", "4", "--model", "tiny",
                 "--grids", "0", "--quiet", "--out", str(tmp_path / "many")]) == 0
    assert capsys.readouterr().err == ""


# --- the model card --------------------------------------------------------------------------------------

def test_training_writes_a_model_card_in_the_hub_layout(trained):
    card = (trained / CARD).read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert front.splitlines()[0] == "library_name: undiffuse"
    assert "- diffusion\n- ddpm\n- class-conditional-image-generation" in front
    for section in ("## Model", "## Training data", "## Training", "## How to sample it", "## Evaluation"):
        assert f"\n{section}\n" in body, section
    assert "size: tiny, 19" in body or "size: tiny, 20" in body  # about 0.20M parameters
    assert "- data: `digits`" in body and "1,797 images of 1x16x16" in body and "classes: 10 (0, 1, 2" in body
    assert "- steps: 40\n" in body and "batch: 16 images a step" in body and "prediction eps" in body
    assert f"undiffuse sample {trained} --per-class 8 --out samples.png" in body
    assert f"run = load_run('{trained}')" in body
    assert f"Not evaluated yet: `undiffuse eval {trained}`" in body


def test_the_card_of_an_unconditional_run_and_of_one_cut_short(tmp_path):
    run = tmp_path / "u"
    assert main([*TRAIN, "--no-conditional", "--steps", "2", "--out", str(run)]) == 0
    card = (run / CARD).read_text()
    assert "- unconditional-image-generation" in card and "classes: none (unconditional)" in card
    assert f"undiffuse sample {run} --n 16 --out samples.png" in card and "labels=" not in card
    cfg = TrainConfig.flat(data="digits", image_size=16, steps=10, batch_size=8, model="tiny", grids=0)
    Trainer.create(cfg, tmp_path / "part").train(until=3, progress=False)
    assert "- steps: 3 of 10 planned so far (`undiffuse train --out" in (tmp_path / "part" / CARD).read_text()


def test_eval_scores_appear_in_the_card(trained, tmp_path):
    run = shutil.copytree(trained, tmp_path / "r")
    assert main(["eval", str(run), "--n", "10", "--steps", "2", "--quiet"]) == 0
    write_card(run)  # what `eval` calls after writing eval.json
    scores = json.loads((run / "eval.json").read_text())
    card = (run / CARD).read_text()
    assert "| file | features | samples | FID |" in card and f"| eval.json | digits | 10 | {scores['fid']:.2f} |" in card
    assert "Not evaluated yet" not in card
    (run / "eval-2.json").write_text("{ not json")
    assert "| eval-2.json | unreadable |" in write_card(run).read_text()


def test_an_overwrite_drops_the_old_runs_card_and_scores(trained, tmp_path):
    run = shutil.copytree(trained, tmp_path / "r")
    (run / "eval.json").write_text(json.dumps({"fid": 1.0}))
    assert main([*TRAIN, "--steps", "2", "--out", str(run), "--overwrite"]) == 0
    assert not (run / "eval.json").exists() and "- steps: 2\n" in (run / CARD).read_text()
