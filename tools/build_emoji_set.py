"""Build the colour set that ships with undiffuse: Google's Noto emoji, on white, at 32x32 and 64x64.

    npm pack emoji-datasource-google@16.0.0 && tar xzf emoji-datasource-google-16.0.0.tgz
    python tools/build_emoji_set.py package/            # writes src/undiffuse/assets/emoji/

A second source, for checking that what works on the shipped set is no accident of it: Twitter's
Twemoji (CC-BY 4.0), the same emoji drawn by other hands, written as an image folder:

    npm pack emoji-datasource-twitter@16.0.0 && tar xzf emoji-datasource-twitter-16.0.0.tgz
    python tools/build_emoji_set.py package/ --vendor twitter --folder twemoji32/

The npm package emoji-datasource-google holds each emoji as a 64x64 RGBA PNG (img/google/64/) and
emoji.json, which names each one ("red apple") and files it under a category ("Food & Drink") and a
sub-category ("fruit"). Every emoji with a Google image is kept, but for the 'Component' category
(skin-tone swatches and hair pieces, not pictures) and the skin-tone variants (listed apart in
emoji.json: the base emoji is kept). Each is composited on white (alpha blended at 64x64), then
area-averaged to 32x32 (a box filter: what a camera would record at the lower resolution).

The package ships the 32x32 set as one lossless WebP sheet (emoji32.webp, 1.65 MB: tiles in
emoji.json's order, COLUMNS a row; a PNG would be 2.0 MB), and emoji.json keeps, per tile, its name,
category and sub-category. The 64x64 sheet would add 4.3 MB to the package; `--sizes 64` writes it,
and `--folder DIR` writes a set as an image folder (a sub-folder per category, metadata.jsonl with
the names) for `undiffuse train --data DIR`. The images are Apache-2.0 (Noto Emoji); LICENSE-NOTO.txt
says so beside them.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from PIL import Image

OUT = Path(__file__).resolve().parents[1] / "src" / "undiffuse" / "assets" / "emoji"
SIZES = (32,)  # the sheets the package ships
COLUMNS = 64  # tiles a row of a sheet
SKIPPED_CATEGORIES = ("Component",)
NOTICE = """The emoji images in this folder (emoji32.webp) are Google's Noto Emoji,
taken from the npm package emoji-datasource-google 16.0.0 (img/google/64/) and composited on white
and resized by tools/build_emoji_set.py. Their names and categories come from that package's
emoji.json (emoji-data, MIT License, Copyright (c) 2013 Cal Henderson).

Noto Emoji images: Copyright 2013 Google LLC, licensed under the Apache License, Version 2.0
(https://github.com/googlefonts/noto-emoji/blob/main/LICENSE). You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software distributed under the License is
distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or
implied. See the License for the specific language governing permissions and limitations under the
License. Changes made: alpha composited onto a white background and resized to 32x32.
"""
TWEMOJI_NOTICE = """The emoji images in this folder are Twitter's Twemoji (the jdecked/twemoji fork), taken from
the npm package emoji-datasource-twitter 16.0.0 (img/twitter/64/), composited on white and resized
by undiffuse's tools/build_emoji_set.py. Their names and categories come from that package's
emoji.json (emoji-data, MIT License, Copyright (c) 2013 Cal Henderson).

Twemoji graphics: Copyright 2019 Twitter, Inc and other contributors, licensed under CC-BY 4.0
(https://creativecommons.org/licenses/by/4.0/). Changes made: alpha composited onto a white
background and resized.
"""
NOTICES = {"google": ("LICENSE-NOTO.txt", NOTICE), "twitter": ("LICENSE-TWEMOJI.txt", TWEMOJI_NOTICE)}


def entries(package: Path, vendor: str = "google") -> list[dict]:
    """The emoji with an image of this vendor, in emoji.json's sort order, Component excluded."""
    data = json.loads((package / "emoji.json").read_text(encoding="utf-8"))
    kept = [e for e in data if e.get(f"has_img_{vendor}") and e["category"] not in SKIPPED_CATEGORIES
            and (images(package, vendor) / e["image"]).is_file()]
    return sorted(kept, key=lambda e: e["sort_order"])


def images(package: Path, vendor: str) -> Path:
    return package / "img" / vendor / "64"


def on_white(path: Path, size: int) -> Image.Image:
    rgba = Image.open(path).convert("RGBA")
    if rgba.size != (64, 64):
        raise ValueError(f"{path} is {rgba.size}, not 64x64")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    return rgb if size == 64 else rgb.resize((size, size), Image.Resampling.BOX)


def sheet(package: Path, kept: list[dict], size: int) -> Image.Image:
    rows = math.ceil(len(kept) / COLUMNS)
    out = Image.new("RGB", (COLUMNS * size, rows * size), (255, 255, 255))
    for i, e in enumerate(kept):
        tile = on_white(images(package, "google") / e["image"], size)
        out.paste(tile, ((i % COLUMNS) * size, (i // COLUMNS) * size))
    return out


def write_folder(package: Path, kept: list[dict], size: int, folder: Path, vendor: str = "google") -> None:
    """The set as an image folder: DIR/<category>/<index>.png and DIR/metadata.jsonl of the names."""
    rows = []
    for i, e in enumerate(kept):
        name = f"{e['category'].replace(' & ', '-and-').replace(' ', '-').lower()}/{i:04d}.png"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        on_white(images(package, vendor) / e["image"], size).save(folder / name)
        rows.append(json.dumps({"file_name": name, "text": e["name"].lower()}, ensure_ascii=False))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    licence, notice = NOTICES[vendor]
    (folder / licence).write_text(notice, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path, help="the unpacked npm package emoji-datasource-<vendor>")
    parser.add_argument("--vendor", default="google", choices=NOTICES, help="whose drawings (twitter: --folder only)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="sheet sizes, comma-separated")
    parser.add_argument("--folder", type=Path, default=None, help="write an image folder instead of sheets")
    args = parser.parse_args()
    kept = entries(args.package, args.vendor)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.folder is not None:
        write_folder(args.package, kept, sizes[0], args.folder, args.vendor)
        print(f"{args.folder}: {len(kept)} images of {sizes[0]}x{sizes[0]} in category folders, metadata.jsonl")
        return
    if args.vendor != "google":
        parser.error("only the Noto emoji ship in the package: write other vendors' with --folder")
    args.out.mkdir(parents=True, exist_ok=True)
    for size in sizes:
        path = args.out / f"emoji{size}.webp"
        sheet(args.package, kept, size).save(path, lossless=True, quality=100, method=6)
        print(f"{path}: {len(kept)} images of {size}x{size}, {path.stat().st_size / 1e6:.2f} MB")
    index = {"source": "emoji-datasource-google 16.0.0 (Noto Emoji, Apache-2.0)", "columns": COLUMNS,
             "emoji": [{"name": e["name"].lower(), "category": e["category"], "subcategory": e["subcategory"]}
                       for e in kept]}
    (args.out / "emoji.json").write_text(json.dumps(index, separators=(",", ":"), ensure_ascii=False) + "\n",
                                        encoding="utf-8")
    (args.out / "LICENSE-NOTO.txt").write_text(NOTICE, encoding="utf-8")
    categories = sorted({e["category"] for e in kept})
    print(f"{len(categories)} categories: " + ", ".join(
        f"{c} {sum(e['category'] == c for e in kept)}" for c in categories))


if __name__ == "__main__":
    main()
