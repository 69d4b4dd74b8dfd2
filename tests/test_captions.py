"""Captions (data/captions.py): from a folder's metadata.jsonl/csv, a file beside a .npy, digit templates
and named attributes, aligned with the images load_data keeps; every bad input is one line that names
the file, the line and the problem."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from undiffuse.data import ImageData, load_data
from undiffuse.data.captions import (attribute_captions, captions_for, digit_caption, digit_captions,
                                     digit_templates, folder_captions, load_captioned, read_caption_file)
from undiffuse.errors import DataError


def image_folder(root, names=("a.png", "b.png", "sub/c.png")):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), color=len(name) * 20).save(root / name)
    return root


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def fails(match, call, *args, **kwargs):
    with pytest.raises(DataError, match=match) as info:
        call(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


# --- digits ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mnist_captioned():
    return load_captioned("mnist", "templates", seed=3)


def test_captioned_digits_cover_every_digit_and_template(mnist_captioned):
    data, captions = mnist_captioned
    assert len(captions) == len(data.images) == 5000
    expected = {(d, t): digit_caption(t, d) for d in range(10) for t in digit_templates().train}
    pairs = set(zip(data.labels.tolist(), captions))
    assert {(d, c) for (d, _), c in expected.items()} <= pairs  # every digit with every template
    assert all(c in {expected[(d, t)] for t in digit_templates().train} for d, c in pairs)  # and nothing else


def test_held_out_templates_and_paraphrases_never_appear_in_training(mnist_captioned):
    templates = digit_templates()
    trained = {digit_caption(t, d) for t in templates.train for d in range(10)}
    unseen = {digit_caption(t, d) for t in templates.held_out + templates.paraphrases for d in range(10)}
    assert trained.isdisjoint(unseen) and set(mnist_captioned.captions) <= trained
    assert {"a seven", "7", "an eight"} <= unseen


def test_digit_captions_are_a_function_of_the_seed():
    labels = torch.arange(10).repeat(20)
    assert digit_captions(labels, seed=1) == digit_captions(labels, seed=1) != digit_captions(labels, seed=2)
    assert digit_caption("a {d}", 8) == "an 8" and digit_caption("the digit {w}", 8) == "the digit eight"


def test_templates_need_digit_labels(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 8, 8), np.uint8))
    fails("need digit labels 0-9", load_captioned, str(tmp_path / "x.npy"), "templates")


# --- attributes --------------------------------------------------------------------------------------

def test_attribute_captions_name_what_is_on():
    names = ("hero", "non-hero", "food", "spell", "side-facing")
    labels = torch.tensor([[1, 0, 0, 0, 1], [0, 1, 0, 0, 0], [0, 0, 0.9, 0.2, 0], [0, 0, 0, 0, 0]])
    assert attribute_captions(labels, names) == ["a hero, side-facing", "a non-hero", "a food", ""]
    assert attribute_captions(torch.tensor([1, 0]), ("apple", "ship")) == ["a ship", "an apple"]


def test_attributes_of_a_npy_with_named_contexts(tmp_path):
    np.save(tmp_path / "sprites.npy", np.zeros((2, 16, 16, 3), np.uint8))
    np.save(tmp_path / "labels.npy", np.array([[1, 0, 0, 0, 1], [0, 0, 0, 1, 0]], np.float32))
    data, captions = load_captioned(str(tmp_path / "sprites.npy"), "attributes", labels=str(tmp_path / "labels.npy"),
                                    context_names="hero,non-hero,food,spell,side-facing")
    assert captions == ["a hero, side-facing", "a spell"] and len(data.images) == 2
    fails("need named labels", load_captioned, str(tmp_path / "sprites.npy"), "attributes",
          labels=str(tmp_path / "labels.npy"))


# --- folders -----------------------------------------------------------------------------------------

def test_metadata_jsonl_captions_align_with_the_kept_images(tmp_path):
    root = image_folder(tmp_path / "imgs")
    (root / "broken.png").write_bytes(b"not an image")  # skipped by the loader, and its caption with it
    write_jsonl(root / "metadata.jsonl", [{"file_name": "sub/c.png", "text": "a cat"},
                                          {"file_name": "broken.png", "text": "lost"},
                                          {"file_name": "a.png", "text": "an apple", "other": 1},
                                          {"file_name": "./b.png", "text": "a ball"}])
    data, captions = load_captioned(str(root))
    assert data.skipped == 1 and data.files == ("a.png", "b.png", "sub/c.png")
    assert captions == ["an apple", "a ball", "a cat"] and len(data.images) == 3
    assert data.labels is None  # metadata.jsonl at the root: no class sub-folders come of it


def test_metadata_csv_with_quotes_commas_and_line_breaks(tmp_path):
    root = image_folder(tmp_path / "imgs")
    (root / "metadata.csv").write_text('file_name,text\na.png,"an apple, red"\nsub/c.png,"a cat\non a mat"\n'
                                       'b.png,a ball\n', encoding="utf-8-sig")
    assert load_captioned(str(root)).captions == ["an apple, red", "a ball", "a cat\non a mat"]


def test_npy_with_a_caption_file_of_lines_or_jsonl(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 8, 8), np.uint8))
    (tmp_path / "c.txt").write_bytes(b"a 1\r\nthe digit two\r\nthree, handwritten\r\n")
    write_jsonl(tmp_path / "c.jsonl", [{"text": "a 1"}, {"text": "b"}, {"text": "c"}])
    (tmp_path / "c.jsonl").write_text((tmp_path / "c.jsonl").read_text() + "\n")  # a trailing blank line
    assert load_captioned(str(tmp_path / "x.npy"), str(tmp_path / "c.txt")).captions == \
        ["a 1", "the digit two", "three, handwritten"]
    assert load_captioned(str(tmp_path / "x.npy"), str(tmp_path / "c.jsonl")).captions == ["a 1", "b", "c"]


def test_empty_text_only_where_allowed(tmp_path):
    root = image_folder(tmp_path / "imgs", ("a.png", "b.png"))
    write_jsonl(root / "metadata.jsonl", [{"file_name": "a.png", "text": "an apple"}, {"file_name": "b.png", "text": " "}])
    assert "metadata.jsonl' line 2" in fails("empty text", load_captioned, str(root))
    assert load_captioned(str(root), allow_empty=True).captions == ["an apple", " "]
    (tmp_path / "c.txt").write_text("a\n\nc\n")
    fails("c.txt' line 2: empty text", read_caption_file, tmp_path / "c.txt", 3)
    assert read_caption_file(tmp_path / "c.txt", 3, allow_empty=True) == ["a", "", "c"]


# --- bad input: one line naming the file, the line and the problem -----------------------------------

@pytest.mark.parametrize("rows, match", [
    ([{"file_name": "a.png", "text": "x"}, {"text": "y"}], "line 2: no file_name"),
    ([{"file_name": "a.png", "text": "x"}, {"file_name": "nope.png", "text": "y"}], "line 2: file_name 'nope.png' is not a file"),
    ([{"file_name": "../a.png", "text": "x"}], "line 1: file_name '../a.png' is not a file"),
    ([{"file_name": "a.png", "text": "x"}, {"file_name": "a.png", "text": "y"}], "line 2: .* already captioned on line 1"),
    ([{"file_name": "a.png"}], "line 1: no 'text'"),
    ([{"file_name": "a.png", "text": 7}], "line 1: 'text' must be a string"),
    ([{"file_name": "b.png", "text": "x"}], r"1 image\(s\) of the folder have no caption, the first 'a.png'"),
    ([{"file_name": "b.png", "text": "x"}, {"file_name": "notes.txt", "text": "y"}], "line 2: .*'notes.txt' is not an image"),
    ([{"file_name": "a.png", "text": "x"}, [1, 2]], "line 2: expected a JSON object"),
])
def test_bad_metadata_jsonl(tmp_path, rows, match):
    root = image_folder(tmp_path / "imgs", ("a.png", "b.png"))
    (root / "notes.txt").write_text("not an image")
    write_jsonl(root / "metadata.jsonl", rows)
    assert "metadata.jsonl" in fails(match, load_captioned, str(root))


def test_bad_json_non_utf8_and_bad_csv(tmp_path):
    root = image_folder(tmp_path / "imgs", ("a.png",))
    (root / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "x"}\n{"file_name": \n')
    fails("metadata.jsonl' line 2: not JSON", folder_captions, root, ["a.png"])
    (root / "metadata.jsonl").write_bytes(b'\n\n{"file_name": "a.png", "text": "caf\xe9"}\n')
    fails("metadata.jsonl' line 3: not UTF-8 text", folder_captions, root, ["a.png"])
    (root / "metadata.jsonl").unlink()
    (root / "metadata.csv").write_text("file_name,caption\na.png,x\n")
    fails("metadata.csv' line 1: no 'text' column", folder_captions, root, ["a.png"])
    (root / "metadata.csv").write_text("file_name,text\na.png,x\nb.png\n")
    fails("metadata.csv' line 3: file_name 'b.png' is not a file", folder_captions, root, ["a.png"])


def test_both_metadata_files_are_refused(tmp_path):
    root = image_folder(tmp_path / "imgs", ("a.png",))
    write_jsonl(root / "metadata.jsonl", [{"file_name": "a.png", "text": "x"}])
    (root / "metadata.csv").write_text("file_name,text\na.png,x\n")
    fails("both metadata.jsonl and metadata.csv", load_captioned, str(root))


def test_a_caption_file_of_the_wrong_length(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 8, 8), np.uint8))
    (tmp_path / "c.txt").write_text("a\nb\n")
    fails("c.txt' holds 2 captions but the data has 3 images", load_captioned, str(tmp_path / "x.npy"),
          str(tmp_path / "c.txt"))
    write_jsonl(tmp_path / "c.jsonl", [{"text": "a"}] * 4)
    fails("holds 4 captions but the data has 3", load_captioned, str(tmp_path / "x.npy"), str(tmp_path / "c.jsonl"))
    (tmp_path / "bad.txt").write_bytes(b"a\nb\xff\nc\n")
    fails("bad.txt' line 2: not UTF-8", load_captioned, str(tmp_path / "x.npy"), str(tmp_path / "bad.txt"))
    fails("does not exist", load_captioned, str(tmp_path / "x.npy"), str(tmp_path / "missing.txt"))


def test_lines_cannot_be_matched_when_images_were_skipped(tmp_path):
    root = image_folder(tmp_path / "imgs", ("a.png",))
    (root / "broken.png").write_bytes(b"no")
    (tmp_path / "c.txt").write_text("a\nb\n")
    fails("were skipped", load_captioned, str(root), str(tmp_path / "c.txt"))


def test_data_without_captions(tmp_path):
    root = image_folder(tmp_path / "imgs", ("a.png",))
    fails("has no captions", load_captioned, str(root))
    fails("has no captions", captions_for, ImageData(torch.zeros(1, 1, 8, 8), None, (), "test"))
    assert load_data(str(root)).files == ("a.png",)


# --- a folder that captions its images trains on them -----------------------------------------------------

@pytest.fixture
def captioned_folder(tmp_path):
    """Hugging Face's imagefolder layout: images and a metadata.jsonl whose lines are not in file order."""
    root = tmp_path / "pets"
    for i, (name, text) in enumerate([("cat.png", "a cat"), ("dog.png", "a dog"), ("sub/fox.png", "a fox")] * 6):
        stem, suffix = name.rsplit(".", 1)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), color=(i * 37) % 256).save(root / f"{stem}{i}.{suffix}")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    text_of = {"cat": "a cat", "dog": "a dog", "fox": "a fox"}
    rows = [{"file_name": f, "text": text_of[f.split("/")[-1][:3]]} for f in reversed(files)]
    write_jsonl(root / "metadata.jsonl", rows)
    return root


def _train(root, out, *flags):
    from undiffuse.cli import main

    return main(["train", "--data", str(root), "--image-size", "8", "--steps", "1", "--batch-size", "4",
                 "--model", "tiny", "--grids", "0", "--quiet", *flags, "--out", str(out)])


def test_a_captioned_folder_trains_a_text_run_by_default_and_says_so(captioned_folder, tmp_path, capsys):
    from undiffuse.run import read_run

    assert _train(captioned_folder, tmp_path / "run") == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "text prompts: 3 distinct captions (metadata; --captions none trains without them)" in first, first
    record = read_run(tmp_path / "run")
    assert record.text is not None and record.train["captions"] == "metadata" and not record.class_names
    assert _train(captioned_folder, tmp_path / "run", "--resume", "--steps", "2") == 0  # reads them again
    assert _train(captioned_folder, tmp_path / "plain", "--captions", "none") == 0
    assert read_run(tmp_path / "plain").text is None
    assert _train(captioned_folder, tmp_path / "dry", "--dry-run") == 0
    assert "captions = 'metadata' *" in capsys.readouterr().out
    assert not (tmp_path / "dry").exists()


@pytest.mark.parametrize("named", [".", "metadata.jsonl"])
def test_naming_the_folder_or_its_metadata_pairs_captions_by_file_name(captioned_folder, named):
    data = load_data(str(captioned_folder))
    by_name = captions_for(data, str(captioned_folder / named))
    assert by_name == captions_for(data, "metadata")
    assert all(text[2:] in name for text, name in zip(by_name, data.files))  # "a cat" for cat0.png, ...


def test_another_folders_metadata_is_refused(captioned_folder, tmp_path):
    other = image_folder(tmp_path / "other", ("a.png",))
    write_jsonl(other / "metadata.jsonl", [{"file_name": "a.png", "text": "an apple"}])
    fails("captions the images of its own folder", captions_for, load_data(str(captioned_folder)),
          str(other / "metadata.jsonl"))


def test_a_run_inside_its_data_folder_is_refused_before_anything_is_written(captioned_folder, capsys):
    from cli_helpers import fails_cleanly

    before = sorted(p.relative_to(captioned_folder) for p in captioned_folder.rglob("*"))
    err = fails_cleanly(capsys, ["train", "--data", captioned_folder, "--steps", "1", "--model", "tiny",
                                 "--out", captioned_folder / "run"])
    assert "inside the data folder" in err
    assert sorted(p.relative_to(captioned_folder) for p in captioned_folder.rglob("*")) == before


def test_a_caption_that_is_not_text_is_refused_naming_its_line(tmp_path):
    root = image_folder(tmp_path / "imgs", ("a.png", "b.png"))
    write_jsonl(root / "metadata.jsonl", [{"file_name": "a.png", "text": "an apple"}, {"file_name": "b.png", "text": "\ud800"}])
    fails("metadata.jsonl' line 2 is not valid text", load_captioned, str(root))


def test_a_csv_caption_file_is_read_as_csv(tmp_path):
    """A caption with a comma or a line break inside quotes is one caption, as in a folder's metadata.csv."""
    (tmp_path / "c.csv").write_text('text\n"an apple, red"\n"a cat\non a mat"\n')
    assert read_caption_file(tmp_path / "c.csv", 2) == ["an apple, red", "a cat\non a mat"]
    (tmp_path / "d.csv").write_text("caption\nx\n")
    fails("no 'text' column", read_caption_file, tmp_path / "d.csv", 1)
