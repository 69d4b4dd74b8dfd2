"""Masks drawn by a user, read by one rule wherever they come from (a file on the command line, a
drawing on the web page): the painted amount of a pixel is its alpha where the mask has transparency,
else its brightness (white regenerates, black keeps). The mask is center-cropped to a square like the
image, box-filtered down to the model's size, and a pixel is regenerated when at least a quarter of it
was painted, so that a thin brush stroke still counts."""
from __future__ import annotations

import torch
from PIL import Image
from torch import Tensor

from ..data.decode import decode_picture
from ..errors import DataError

PAINTED = 64  # of 255: a quarter of a pixel


def mask_from_picture(picture: Image.Image, size: int) -> Tensor:
    """(size, size) bool, True = regenerate."""
    has_alpha = picture.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in picture.info
    painted = picture.convert("RGBA").getchannel("A") if has_alpha else picture.convert("L")
    side = min(painted.size)
    left, top = (painted.width - side) // 2, (painted.height - side) // 2
    square = painted.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BOX)
    return torch.frombuffer(bytearray(square.tobytes()), dtype=torch.uint8).view(size, size) >= PAINTED


def load_mask(path, size: int, like=None) -> Tensor:
    """A mask file as (size, size) bool by mask_from_picture's rule. `like`: the image file it belongs
    to; their shapes must agree up to scale, or the two crops would not cover the same pixels."""
    picture = decode_picture(path, "mask")
    if like is not None:
        _check_shapes(path, picture.size, decode_picture(like).size)
    return mask_from_picture(picture, size)


def _check_shapes(path, mask_size: tuple[int, int], image_size: tuple[int, int]) -> None:
    (w, h), (iw, ih) = mask_size, image_size
    if abs(h / w - ih / iw) > 0.02 * ih / iw:
        raise DataError(f"mask '{path}' is {w}x{h} but the image is {iw}x{ih}: give a mask of the "
                        "image's shape (or a scaled copy)")
