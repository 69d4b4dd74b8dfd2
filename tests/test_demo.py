"""`undiffuse demo` end to end: a few seconds of training in the default suite, the real 10 minutes
(with a digit classifier judging the grid) under -m slow."""
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from undiffuse.cli import main


def _check_outputs(run: Path):
    grid = Image.open(run / "samples.png")
    assert grid.size[0] == grid.size[1]  # 10 x 10: one row per digit
    gif = Image.open(run / "reverse.gif")
    assert gif.n_frames >= 20
    assert Image.open(run / "forward.png").size[0] > Image.open(run / "forward.png").size[1]
    assert (run / "loss.png").is_file()


def test_quick_demo_writes_every_picture_into_a_fresh_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--minutes", "0.05", "--quiet"]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "demo"
    _check_outputs(run)
    for name in ("samples.png", "reverse.gif", "forward.png", "loss.png"):
        assert str(Path("runs") / "demo" / name) in out  # says where each file is
    # a second demo never overwrites the first
    monkeypatch.setattr("undiffuse.cli.demo.draw_pictures", lambda trainer, run: None)
    assert main(["demo", "--minutes", "0.02", "--quiet"]) == 0
    assert (tmp_path / "runs" / "demo-2" / "config.json").is_file()


@pytest.mark.slow
def test_ten_minute_demo_draws_recognisable_digits(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from digit_judge import fidelity, judge

    from undiffuse.generation import generate, load_run

    run = tmp_path / "demo"
    assert main(["demo", "--out", str(run), "--quiet"]) == 0
    _check_outputs(run)
    net, accuracy = judge(verbose=False)
    labels = [k for k in range(10) for _ in range(20)]
    images = generate(load_run(run), len(labels), labels=labels, sampler="ddim", steps=50, guidance=2.0)
    assert fidelity(net, images, torch.tensor(labels)) >= 0.9
