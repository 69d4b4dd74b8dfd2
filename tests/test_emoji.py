"""The bundled colour set (`--data emoji`), the script that builds it, and the judge that reads its
categories: loading, captions, the build from a stand-in of the npm package, the judge's fit to a run's
classes and its accuracy, `eval` on an emoji run, and the demo on it. No long training."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from undiffuse.cli import main
from undiffuse.data import load_data
from undiffuse.data.captions import captions_for
from undiffuse.errors import DataError
from undiffuse.eval.features import EMOJI_WEIGHTS, judge_accuracy
from undiffuse.eval.judges import JUDGES, fidelity, judge_for

ROOT = Path(__file__).resolve().parent.parent
CATEGORIES = ("Activities", "Animals & Nature", "Flags", "Food & Drink", "Objects", "People & Body",
              "Smileys & Emotion", "Symbols", "Travel & Places")


@pytest.fixture(scope="module")
def emoji():
    return load_data("emoji")


def test_the_bundled_set_loads_as_colour_images_of_nine_named_categories(emoji):
    assert emoji.images.shape == (1906, 3, 32, 32) and emoji.class_names == CATEGORIES
    assert emoji.labels.bincount().tolist() == [85, 159, 270, 131, 264, 386, 169, 224, 218]
    assert -1 <= emoji.images.min() and emoji.images.max() <= 1
    corners = emoji.images[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners > 0.9).float().mean() > 0.9  # composited on white
    spread = emoji.images.flatten(2).std(2).mean(0)  # colour: the channels differ within images
    assert (emoji.images[:, 0] - emoji.images[:, 2]).abs().mean() > 0.05 and spread.min() > 0.1
    assert emoji.captions[0] == "grinning face" and len(set(emoji.captions)) > 1800


def test_other_sizes_and_grey_and_the_names_as_captions(emoji):
    small = load_data("emoji", image_size=16, channels=1)
    assert small.images.shape == (1906, 1, 16, 16) and small.captions == emoji.captions
    assert captions_for(emoji, "names")[:2] == ["grinning face", "smiling face with open mouth"]
    with pytest.raises(DataError, match="captions 'names' need a set that names its images"):
        captions_for(load_data("digits"), "names")
    one = emoji.subset(emoji.labels == CATEGORIES.index("Food & Drink"))
    assert len(one.images) == 131 and len(one.captions) == 131 and "red apple" in one.captions


def _fake_package(root: Path) -> Path:
    """A stand-in for the npm package emoji-datasource-google: four emoji, one of them a Component
    and one without a Google image, which the build leaves out."""
    images = root / "img" / "google" / "64"
    images.mkdir(parents=True)
    rows = []
    for i, (name, category, has) in enumerate([("RED APPLE", "Food & Drink", True), ("DOG FACE", "Animals & Nature", True),
                                               ("SKIN TONE", "Component", True), ("NEW THING", "Symbols", False)]):
        rgba = np.zeros((64, 64, 4), np.uint8)
        rgba[16:48, 16:48] = (200, 30 * i, 40, 255)  # an opaque square on a transparent ground
        Image.fromarray(rgba, "RGBA").save(images / f"{i:04x}.png")
        rows.append({"name": name, "category": category, "subcategory": "x", "image": f"{i:04x}.png",
                     "has_img_google": has, "sort_order": 10 - i})
    (root / "emoji.json").write_text(json.dumps(rows))
    return root


def _build(*args):
    sys.path.insert(0, str(ROOT / "tools"))
    import build_emoji_set

    argv, sys.argv = sys.argv, ["build_emoji_set.py", *map(str, args)]
    try:
        build_emoji_set.main()
    finally:
        sys.argv = argv


def test_the_build_script_composites_on_white_and_keeps_names_and_categories(tmp_path):
    package = _fake_package(tmp_path / "package")
    _build(package, "--out", tmp_path / "set")
    index = json.loads((tmp_path / "set" / "emoji.json").read_text())
    assert [e["name"] for e in index["emoji"]] == ["dog face", "red apple"]  # sort order; no Component, no image
    sheet = np.asarray(Image.open(tmp_path / "set" / "emoji32.webp").convert("RGB"))
    assert sheet.shape == (32, 64 * 32, 3)
    apple = sheet[:, 32:64]
    assert (apple[0, 0] == 255).all() and tuple(apple[16, 16]) == (200, 0, 40)  # white ground, the square kept
    assert "Apache License, Version 2.0" in (tmp_path / "set" / "LICENSE-NOTO.txt").read_text()
    _build(package, "--folder", tmp_path / "folder", "--sizes", "64")
    folder = load_data(str(tmp_path / "folder"))
    assert folder.images.shape == (2, 3, 64, 64) and folder.class_names == ("animals-and-nature", "food-and-drink")
    assert captions_for(folder) == ["dog face", "red apple"]


def test_the_judges_fit_the_runs_on_their_classes_and_read_real_images(emoji):
    assert judge_for(CATEGORIES).name == "emoji" and judge_for(tuple("0123456789")).name == "digits"
    assert judge_for(("cat", "dog")) is None and judge_for(()) is None
    accuracy = judge_accuracy(EMOJI_WEIGHTS)
    assert 0.5 < accuracy < 1  # recorded by its training script on the fifth it never saw
    # on the whole set (four fifths of which it trained on) it reads at least as many right
    read = fidelity(JUDGES[1], emoji.images, emoji.labels.tolist())
    assert read >= accuracy
    shuffled = fidelity(JUDGES[1], emoji.images, emoji.labels[torch.randperm(1906)].tolist())
    assert shuffled < 0.3  # labels that do not belong: near chance


def test_eval_of_an_emoji_run_reports_the_categories_read_in_the_emoji_features(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "emoji", "--image-size", "16", "--steps", "3", "--batch-size", "9", "--model",
                 "tiny", "--grids", "0", "--quiet", "--out", str(run)]) == 0
    assert main(["eval", str(run), "--n", "18", "--steps", "2", "--quiet"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["features"] == "emoji" and result["judge"] == "emoji" and 0 <= result["fidelity"] <= 1
    assert result["judge_accuracy"] == judge_accuracy(EMOJI_WEIGHTS)
    assert "read as the class asked by the emoji judge" in capsys.readouterr().out


def test_the_demo_on_the_emoji_draws_a_row_per_category(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("undiffuse.cli.demo.GIF_STEPS", 5)  # the animation's length is not what is tested
    assert main(["demo", "--data", "emoji", "--minutes", "0.05", "--quiet"]) == 0
    run = tmp_path / "runs" / "demo-emoji"
    width, height = Image.open(run / "samples.png").size
    cell = (width - 2) // 10  # 10 a row, 2 pixels apart
    assert height == 9 * cell + 2  # 9 rows: one per category
    assert "one row per class (Activities, Animals & Nature" in capsys.readouterr().out
