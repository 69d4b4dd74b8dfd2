"""Masks drawn by a user: white regenerates, black keeps."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..errors import DataError


def load_mask(path, size: int, like=None) -> Tensor:
    """A mask image as (size, size) float, 1 where it is white (regenerate): center-cropped to a square
    and resized with nearest pixels, so that it stays a mask. `like`: the image file it belongs to;
    their shapes must agree up to scale, or the two crops would not cover the same pixels."""
    try:
        with Image.open(path) as img:
            gray = np.asarray(img.convert("L"), dtype=np.float32) / 255
        shape = None
        if like is not None:
            with Image.open(like) as other:
                shape = other.size[::-1]
    except FileNotFoundError:
        raise DataError(f"mask '{path}': no such file") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"mask '{path}' cannot be read ({e})") from None
    h, w = gray.shape
    if shape is not None and abs(h / w - shape[0] / shape[1]) > 0.02 * shape[0] / shape[1]:
        raise DataError(f"mask '{path}' is {w}x{h} but the image is {shape[1]}x{shape[0]}: give a mask of the "
                        "image's shape (or a scaled copy)")
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = torch.from_numpy(gray[top:top + side, left:left + side].copy())
    return (F.interpolate(square[None, None], size=(size, size), mode="nearest")[0, 0] > 0.5).float()
