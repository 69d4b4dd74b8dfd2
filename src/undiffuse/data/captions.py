"""Captions for training images: one text per image, aligned with the images `load_data` returns.

Where they come from (`captions=`, the `--captions` of the command line):
- "metadata", a folder's own captions (what a folder that has them trains on by default, so that it
  trains a text run; "none" opts out): the Hugging Face imagefolder convention, a `metadata.jsonl`
  (one {"file_name": ..., "text": ...} a line) or a `metadata.csv` (columns file_name and text) at the
  folder's root, file_name relative to it; naming the folder or its metadata file does the same;
  images the loader skipped as unreadable drop out with their captions;
- a file beside the images (a .npy, or a folder that skipped nothing): a .jsonl of {"text": ...}, one
  line per image, or any other text file with one caption a line;
- "templates": the bundled digits (`mnist`, `digits`, or any data labelled 0-9) captioned from their
  labels by templates ("a handwritten 7", "the digit seven", ...), one per image from a seed, with
  some templates held out of training (`digit_templates`);
- "attributes": named context vectors (the sprites' hero, non-hero, food, spell, side-facing) or named
  classes, captioned from the attributes that are on ("a hero, side-facing");
- "names": a set that names its own images, the bundled `emoji` ("red apple", "dog face").

So `--data mnist --captions templates` is the captioned digits. The keywords win over a same-named
file. Empty text is refused unless `allow_empty` (then "" is the empty prompt: the null context).
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from ..conditions.text import check_text
from ..errors import DataError, UsageError
from ..files import read_limited
from . import ImageData, load_data, name_contexts
from .decode import IMAGE_EXTENSIONS

METADATA = ("metadata.jsonl", "metadata.csv")
MAX_CAPTION_BYTES = 512 * 2**20  # a million captions of 500 characters
KEYWORDS = ("templates", "attributes", "names", "metadata", "none")
CAPTIONS_HELP = ("captions are 'metadata' (a folder's metadata.jsonl/csv: the default where there is one), 'templates' "
                 "(digits 0-9), 'attributes' (named labels), 'names' (emoji), 'none', a .jsonl of "
                 '{"text": ...} or a text file of one caption a line')
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TRAIN_TEMPLATES = ("a handwritten {d}", "the digit {w}", "number {w}", "a {d}", "{w}, handwritten",
                   "the number {d}", "a handwritten digit {w}", "digit {d}")
HELD_OUT_TEMPLATES = ("a drawing of the number {w}", "the numeral {d}, written by hand")
PARAPHRASES = ("a {w}", "{d}", "{w}")  # never seen in training: for checking what the model generalises to


class DigitTemplates(NamedTuple):
    train: tuple[str, ...]  # the templates training captions are drawn from
    held_out: tuple[str, ...]  # templates of the same style kept out of training
    paraphrases: tuple[str, ...]  # short forms never seen in training ("a seven", "7")


class CaptionedData(NamedTuple):
    data: ImageData
    captions: list[str]  # one per image of data.images, in order


def digit_templates() -> DigitTemplates:
    """The digit caption templates: {d} is the numeral, {w} the word."""
    return DigitTemplates(TRAIN_TEMPLATES, HELD_OUT_TEMPLATES, PARAPHRASES)


def digit_caption(template: str, digit: int) -> str:
    """One template filled in for one digit, with "an" before 8 and eight."""
    text = template.format(d=digit, w=DIGIT_WORDS[digit])
    return re.sub(r"\b([Aa]) (8|eight)\b", r"\1n \2", text)


def digit_captions(labels: Tensor | Sequence[int], seed: int = 0,
                   templates: Sequence[str] = TRAIN_TEMPLATES) -> list[str]:
    """A caption per digit label, its template drawn per image from `seed` (the same every time)."""
    digits = torch.as_tensor(labels).long().tolist()
    generator = torch.Generator().manual_seed(seed)
    choice = torch.randint(len(templates), (len(digits),), generator=generator).tolist()
    return [digit_caption(templates[c], d) for c, d in zip(choice, digits)]


def attribute_captions(labels: Tensor, names: Sequence[str], threshold: float = 0.5) -> list[str]:
    """A caption per image from named attributes: class ids (N,) or context vectors (N, K), the
    attributes above `threshold` in the order of `names` ("a hero, side-facing"); none gives ""."""
    if labels.ndim == 1:
        return [_with_article(names[i]) for i in labels.long().tolist()]
    return [", ".join([_with_article(on[0]), *on[1:]]) if on else ""
            for on in ([names[k] for k in range(len(names)) if row[k] > threshold] for row in labels.tolist())]


def load_captioned(spec: str, captions: str | None = None, *, seed: int = 0, allow_empty: bool = False,
                   labels: str | None = None, context_names: str | Sequence[str] | None = None,
                   image_size: int | None = None, channels: int | None = None) -> CaptionedData:
    """`load_data(spec, ...)` and its captions (see the module's docstring for `captions`)."""
    data = load_data(spec, labels=labels, image_size=image_size, channels=channels)
    if context_names is not None:
        data = name_contexts(data, context_names)
    return CaptionedData(data, captions_for(data, captions, seed=seed, allow_empty=allow_empty))


def wants_captions(captions: str | None) -> bool:
    """Whether a run's `captions` option makes it a text run."""
    return captions not in (None, "none")


def own_captions(data: ImageData) -> str | None:
    """"metadata" for a folder that captions its images (metadata.jsonl or .csv at its root), else None."""
    return "metadata" if data.files and _metadata_file(Path(data.source).expanduser()) is not None else None


def captions_for(data: ImageData, captions: str | None = None, *, seed: int = 0,
                 allow_empty: bool = False) -> list[str]:
    """The caption of each image of `data`, from `captions` or, for a folder, its metadata file."""
    if captions == "none":
        raise DataError("captions 'none': this run has no captions")
    if captions is not None and captions not in KEYWORDS:
        named = Path(captions).expanduser()
        if named.is_dir() or named.name in METADATA:  # the folder's own captions, by file name
            _check_metadata_of(data, named if named.is_dir() else named.parent, captions)
            captions = "metadata"
    if captions == "templates":
        return digit_captions(_digit_labels(data), seed)
    if captions == "attributes":
        return attribute_captions(_named_labels(data), data.class_names)
    if captions == "names":
        if not data.captions:
            raise DataError(f"captions 'names' need a set that names its images (emoji); data '{data.source}' has none")
        return list(data.captions)
    if captions not in (None, "metadata"):
        return _caption_file(data, Path(captions).expanduser(), allow_empty)
    root = Path(data.source).expanduser()
    if data.files and _metadata_file(root) is not None:
        return folder_captions(root, data.files, allow_empty)
    raise DataError(f"data '{data.source}' has no captions: {CAPTIONS_HELP}")


def read_caption_file(path: Path, n: int, allow_empty: bool = False) -> list[str]:
    """n captions from a .jsonl of {"text": ...} (blank lines skipped), a .csv with a "text" column, or one
    caption a line."""
    if path.suffix.lower() == ".csv":  # quoted commas and line breaks read as csv does: a "text" column
        found = [_text(path, number, row, allow_empty) for number, row in _csv_rows(path, ("text",))]
    elif path.suffix.lower() == ".jsonl":
        found = [_text(path, number, _object(path, number, line), allow_empty)
                 for number, line in _lines(path) if line.strip()]
    else:
        lines = _lines(path)
        found = [_checked_text(path, number, line, allow_empty) for number, line in lines]
    if len(found) != n:
        raise DataError(f"captions '{path}' holds {len(found)} captions but the data has {n} images")
    return found


def folder_captions(root: Path, files: Sequence[str], allow_empty: bool = False) -> list[str]:
    """The caption of each of `files` (posix paths relative to `root`) from root's metadata file."""
    path = _metadata_file(root)
    if path is None:
        raise DataError(f"folder '{root}' has no metadata.jsonl or metadata.csv with its captions")
    rows = _jsonl_rows(path) if path.suffix == ".jsonl" else _csv_rows(path)
    by_file: dict[str, tuple[int, str]] = {}
    for number, row in rows:
        name, text = _metadata_entry(root, path, number, row, allow_empty)
        if name in by_file:
            raise DataError(f"'{path}' line {number}: file_name '{name}' is already captioned on line {by_file[name][0]}")
        by_file[name] = (number, text)
    missing = [f for f in files if f not in by_file]
    if missing:
        raise DataError(f"'{path}': {len(missing)} image(s) of the folder have no caption, the first '{missing[0]}'")
    return [by_file[f][1] for f in files]


def _check_metadata_of(data: ImageData, folder: Path, named: str) -> None:
    root = Path(data.source).expanduser()
    if not data.files or not root.is_dir() or not folder.is_dir() or not os.path.samefile(folder, root):
        raise DataError(f"captions '{named}': a metadata.jsonl/csv captions the images of its own folder by file "
                        f"name; the data is '{data.source}'")


def _caption_file(data: ImageData, path: Path, allow_empty: bool) -> list[str]:
    if data.skipped:
        raise DataError(f"captions '{path}': {data.skipped} unreadable image(s) of '{data.source}' were skipped, "
                        "so lines cannot be matched to images; caption the folder in metadata.jsonl")
    return read_caption_file(path, len(data.images), allow_empty)


def _digit_labels(data: ImageData) -> Tensor:
    if data.labels is None or data.labels.ndim != 1 or data.class_names != tuple(str(d) for d in range(10)):
        raise DataError(f"captions 'templates' need digit labels 0-9 (mnist, digits or a folder of 0-9 "
                        f"sub-folders); data '{data.source}' has classes {list(data.class_names)[:10]}")
    return data.labels


def _named_labels(data: ImageData) -> Tensor:
    if data.labels is None or not data.class_names:
        raise DataError(f"captions 'attributes' need labels; data '{data.source}' has none")
    if all(name.isdigit() for name in data.class_names):
        raise DataError(f"captions 'attributes' need named labels; name them "
                        f"(--context-names hero,non-hero,...), data '{data.source}' has {len(data.class_names)} unnamed")
    return data.labels


def _with_article(name: str) -> str:
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _metadata_file(root: Path) -> Path | None:
    found = [root / name for name in METADATA if (root / name).is_file()]
    if len(found) > 1:
        raise DataError(f"folder '{root}' holds both metadata.jsonl and metadata.csv; keep one")
    return found[0] if found else None


def _decoded(path: Path) -> str:
    data = read_limited(path, MAX_CAPTION_BYTES, "caption file", DataError)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"'{path}' line {line}: not UTF-8 text (byte 0x{data[e.start]:02x})") from None


def _lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) for each line, a final newline ending the last one, "\\r\\n" allowed."""
    text = _decoded(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [(i + 1, line.removesuffix("\r")) for i, line in enumerate(lines)]


def _object(path: Path, number: int, line: str) -> dict:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"'{path}' line {number}: not JSON ({e.msg})") from None
    if not isinstance(value, dict):
        raise DataError(f"'{path}' line {number}: expected a JSON object such as {{\"text\": \"a 7\"}}")
    return value


def _text(path: Path, number: int, row: dict, allow_empty: bool) -> str:
    if "text" not in row:
        raise DataError(f"'{path}' line {number}: no 'text'")
    if not isinstance(row["text"], str):
        raise DataError(f"'{path}' line {number}: 'text' must be a string, got {type(row['text']).__name__}")
    return _checked_text(path, number, row["text"], allow_empty)


def _checked_text(path: Path, number: int, text: str, allow_empty: bool) -> str:
    try:
        check_text(text, f"'{path}' line {number}")
    except UsageError as e:
        raise DataError(str(e)) from None
    if not text.strip() and not allow_empty:
        raise DataError(f"'{path}' line {number}: empty text; give every image a caption "
                        "(allow_empty=True takes it as the empty prompt)")
    return text


def _jsonl_rows(path: Path) -> list[tuple[int, dict]]:
    return [(number, _object(path, number, line)) for number, line in _lines(path) if line.strip()]


def _csv_rows(path: Path, needed=("file_name", "text")) -> list[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(_decoded(path), newline=""))
    try:
        columns = reader.fieldnames or []
        for column in needed:
            if column not in columns:
                raise DataError(f"'{path}' line 1: no '{column}' column (the header has {columns})")
        rows = []
        for row in reader:
            rows.append((reader.line_num, row))
    except csv.Error as e:
        raise DataError(f"'{path}' line {reader.line_num}: {e}") from None
    return rows


def _metadata_entry(root: Path, path: Path, number: int, row: dict, allow_empty: bool) -> tuple[str, str]:
    name = row.get("file_name")
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"'{path}' line {number}: no file_name")
    relative = PurePosixPath(name.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts or not (root / relative).is_file():
        raise DataError(f"'{path}' line {number}: file_name '{name}' is not a file in the folder")
    if relative.suffix.lower() not in IMAGE_EXTENSIONS:
        raise DataError(f"'{path}' line {number}: file_name '{name}' is not an image ({', '.join(IMAGE_EXTENSIONS)})")
    return relative.as_posix(), _text(path, number, row, allow_empty)
