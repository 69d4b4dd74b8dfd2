"""Decoding one image file (the folder loader, `load_image` and the edit commands share it)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from ..errors import DataError
from .transforms import check_options, fit_square, set_channels, to_model_range


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


_WIDE_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}  # 16/32-bit integer pixels: scaled by 65535


_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


def load_image(path: str | Path, image_size: int | None = None, channels: int | None = None) -> Tensor:
    """One image file as float32 (C, S, S) in [-1, 1]; S defaults to the shorter side (at most 1024)."""
    check_options(image_size, channels)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image '{path}': no such file")
    try:
        with warnings.catch_warnings():
            # PIL warns above MAX_IMAGE_PIXELS and refuses above twice that: both mean "too large" here
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                side = image_size or min(1024, max(8, min(img.size)))
            image = read_image(path, side)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise DataError(f"image '{path}' is too large to decode safely (more than {Image.MAX_IMAGE_PIXELS} "
                        "pixels; a decompression bomb?)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"image '{path}' cannot be read ({e})") from None
    return to_model_range(set_channels(image[None], channels or image.shape[0]))[0]


def read_image(path: Path, size: int) -> Tensor:
    """One file as float (C, size, size) in [0, 1], C = 1 for grayscale images else 3."""
    with Image.open(path) as img:
        img.load()  # decode now so that a truncated file fails here
        unit = _pil_to_unit(ImageOps.exif_transpose(img))
    return fit_square(torch.from_numpy(unit)[None], size)[0]


def _pil_to_unit(img: Image.Image) -> np.ndarray:
    gray = img.mode in _GRAY_MODES or (img.mode in ("P", "PA") and _gray_palette(img))
    if img.mode in _WIDE_MODES:
        pixels = np.clip(np.asarray(img, dtype=np.float32) / 65535, 0, 1)
    elif img.mode == "F":
        pixels = np.clip(np.asarray(img, dtype=np.float32), 0, 1)  # float TIFFs are stored in [0, 1]
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
