"""What commands write: progress lines, images as a PNG grid or a .npy array, animations."""
from __future__ import annotations

from pathlib import Path

from ..errors import UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")


def say(text: str) -> None:
    print(text, flush=True)


def output_path(path: str | Path, suffixes: tuple[str, ...], flag: str = "--out") -> Path:
    """The path, when it ends in one of `suffixes` (checked before any work)."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise UsageError(f"{flag} must end in {' or '.join(suffixes)}, got '{path}'")
    return path


def write_images(images, out: Path, nrow: int, labels=None) -> None:
    """images (N, C, H, W) in [-1, 1] as a PNG grid of rows of `nrow`, or as float32 N x C x H x W in
    [0, 1] in a .npy file, with the labels beside it as FILE.labels.npy when there are any."""
    import numpy as np

    from ..viz import image_grid

    _make_parent(out)
    if out.suffix.lower() == ".npy":
        array = ((images + 1) / 2).float().numpy().astype(np.float32)
        _write(out, lambda p: np.save(open(p, "wb"), array))
        if labels is not None:
            _write(out.with_suffix(".labels.npy"), lambda p: np.save(open(p, "wb"), np.asarray(labels, np.int64)))
    else:
        _write(out, lambda p: image_grid(images, nrow).save(p, format=_pil_format(out)))


def write_picture(picture, out: Path) -> None:
    """A PIL image (a strip, a grid) to `out`, in the format its suffix names."""
    _make_parent(out)
    _write(out, lambda p: picture.save(p, format=_pil_format(out)))


def write_animation(frames, gif: Path, nrow: int, **options) -> Path:
    from ..viz import save_gif

    _make_parent(gif)
    try:
        return save_gif(frames, gif, nrow=nrow, **options)
    except OSError as e:
        raise UsageError(f"cannot write '{gif}' ({e.strerror or e})") from None


def _pil_format(path: Path) -> str:
    return path.suffix.lstrip(".").upper().replace("JPG", "JPEG")


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the folder of '{path}' ({e.strerror or e})") from None


def _write(path: Path, write) -> None:
    from ..checkpoint import atomic_write

    try:
        atomic_write(path, write)
    except OSError as e:
        raise UsageError(f"cannot write '{path}' ({e.strerror or e})") from None
