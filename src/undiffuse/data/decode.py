"""The one image decoder: every path that reads a picture (a data folder, `load_image` for the edit
commands and `noise`, a mask, an upload to the web page) goes through `decode_picture`.

Only raster formats on an allow-list are decoded, chosen by the file's content, never by its name:
Pillow's other plugins include EPS, which runs Ghostscript. Pictures over MAX_PIXELS are refused
before they are decoded (a decompression bomb), and every picture is center-cropped to a square
before it is resized, so an extreme aspect ratio never blows up to a huge intermediate image.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from ..errors import DataError
from .transforms import check_options, fit_square, set_channels, to_model_range

FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")  # Pillow's names; decoded by content
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_PIXELS = 64 * 2**20  # 8192 x 8192: a 64 MP photo decodes, a bomb does not
MAX_ASPECT = 16  # longest side over shortest: a panorama is 4:1; a 1 x 1,000,000 strip has no picture in it
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_WIDE_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}  # 16/32-bit integer pixels: scaled by 65535
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


def decode_picture(source: str | Path | bytes, what: str = "image", max_side: int | None = None) -> Image.Image:
    """A file (or its bytes) decoded into a PIL image, upright (EXIF orientation applied); DataError
    with one line for anything that is not a readable picture of an allowed format and size. The size
    (and `max_side`, where given) is checked from the header, before the pixels are decoded."""
    name = f"{what} '{source}'" if not isinstance(source, bytes) else f"the {what}"
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise DataError(f"{name}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)  # "Corrupt EXIF data" and the like: not the user's problem
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=FORMATS) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise DataError(f"{name} is {img.width}x{img.height} pixels; at most {MAX_PIXELS // 2**20} "
                                    "million are decoded (a decompression bomb?)")
                if max_side is not None and max(img.size) > max_side:
                    raise DataError(f"{name} is {img.width}x{img.height} pixels; at most {max_side} a side")
                if max(img.size) > MAX_ASPECT * min(img.size):
                    raise DataError(f"{name} is {img.width}x{img.height} pixels: a strip, not a picture (its center "
                                    f"square would be {min(img.size)} pixels); at most {MAX_ASPECT}:1")
                img.load()  # decode now, so that a truncated file fails here
                return ImageOps.exif_transpose(img)
    except DataError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise DataError(f"{name} is too large to decode safely (a decompression bomb?)") from None
    except Image.UnidentifiedImageError:
        raise DataError(f"{name} is not an image of an allowed format ({', '.join(FORMATS)})") from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, struct.error, ... on damaged files
        raise DataError(f"{name} cannot be read ({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None


def picture_to_unit(img: Image.Image, size: int) -> Tensor:
    """A decoded picture as float (C, size, size) in [0, 1], C = 1 for grayscale pictures else 3:
    its center square, resized."""
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    square = img.crop((left, top, left + side, top + side)) if img.width != img.height else img
    return fit_square(torch.from_numpy(_pil_to_unit(square))[None], size)[0]


def read_image(path: Path, size: int) -> Tensor:
    """One file as float (C, size, size) in [0, 1] (the folder loader's unit)."""
    return picture_to_unit(decode_picture(path), size)


def image_tensor(img: Image.Image, image_size: int | None = None, channels: int | None = None) -> Tensor:
    """A decoded picture as the model sees it: float32 (C, S, S) in [-1, 1]; S defaults to the shorter
    side (8 to 1024), C to the picture's own (1 or 3)."""
    check_options(image_size, channels)
    unit = picture_to_unit(img, image_size or min(1024, max(8, min(img.size))))
    return to_model_range(set_channels(unit[None], channels or unit.shape[0]))[0]


def load_image(path: str | Path, image_size: int | None = None, channels: int | None = None) -> Tensor:
    """One image file as float32 (C, S, S) in [-1, 1] (see image_tensor)."""
    check_options(image_size, channels)
    return image_tensor(decode_picture(path), image_size, channels)


def _pil_to_unit(img: Image.Image) -> np.ndarray:
    gray = img.mode in _GRAY_MODES or (img.mode in ("P", "PA") and _gray_palette(img))
    if img.mode in _WIDE_MODES:
        pixels = np.clip(np.asarray(img, dtype=np.float32) / 65535, 0, 1)
    elif img.mode == "F":
        pixels = np.nan_to_num(np.clip(np.asarray(img, dtype=np.float32), 0, 1))  # float TIFFs hold [0, 1]
    else:
        if img.mode in _ALPHA_MODES or "transparency" in img.info:
            img = _on_white(img)
        pixels = np.asarray(img.convert("L" if gray else "RGB"), dtype=np.float32) / 255
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1).copy()


def _gray_palette(img: Image.Image) -> bool:
    palette = img.getpalette()
    if not palette:
        return False
    rgb = np.asarray(palette).reshape(-1, 3)
    return bool((rgb == rgb[:, :1]).all())


def _on_white(img: Image.Image) -> Image.Image:
    # White, not black: transparent areas of sketches and icons are meant as paper.
    background = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, img.convert("RGBA"))
