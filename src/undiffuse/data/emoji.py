"""The bundled colour set: 1,906 of Google's Noto emoji on white at 32x32, in 9 categories, with names.

`--data emoji` loads it: the images, the category of each as its class (Activities, Animals &
Nature, Flags, Food & Drink, Objects, People & Body, Smileys & Emotion, Symbols, Travel & Places) and
its name as its caption ("red apple", "dog face"). It ships inside the package (assets/emoji/: one
lossless WebP sheet of 1.65 MB and emoji.json), built by tools/build_emoji_set.py from the npm
package emoji-datasource-google; the images are Apache-2.0 (assets/emoji/LICENSE-NOTO.txt).
"""
from __future__ import annotations

import json
from importlib import resources

import numpy as np
import torch
from PIL import Image

from .transforms import Loaded, fit_square

SIDE = 32  # the side of the shipped tiles


def emoji_index() -> dict:
    """assets/emoji/emoji.json: {"columns": tiles a row, "emoji": [{name, category, subcategory}, ...]}."""
    return json.loads(resources.files("undiffuse").joinpath("assets", "emoji", "emoji.json").read_text("utf-8"))


def load_emoji(size: int = SIDE) -> Loaded:
    """The set at size x size (resized from 32 if another size is asked), labelled by category."""
    index = emoji_index()
    entries, columns = index["emoji"], index["columns"]
    with resources.files("undiffuse").joinpath("assets", "emoji", f"emoji{SIDE}.webp").open("rb") as f:
        sheet = np.asarray(Image.open(f).convert("RGB"))
    rows = -(-len(entries) // columns)
    tiles = torch.from_numpy(sheet.copy()).reshape(rows, SIDE, columns, SIDE, 3).permute(0, 2, 4, 1, 3)
    images = tiles.reshape(rows * columns, 3, SIDE, SIDE)[:len(entries)].float() / 255
    names = tuple(sorted({e["category"] for e in entries}))
    labels = torch.tensor([names.index(e["category"]) for e in entries], dtype=torch.int64)
    return Loaded(fit_square(images, size), labels, names, captions=tuple(e["name"] for e in entries))
