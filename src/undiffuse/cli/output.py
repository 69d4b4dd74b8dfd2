"""What commands write: progress lines, images as a PNG grid or a .npy array, animations."""
from __future__ import annotations

from pathlib import Path

from ..errors import UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")


def say(text: str) -> None:
    print(text, flush=True)


RUN_FILES = ("config.json", "model.safetensors", "ema.safetensors", "train_state.safetensors", "log.csv")


def output_path(path: str | Path, suffixes: tuple[str, ...], flag: str = "--out") -> Path:
    """The path, when it ends in one of `suffixes` and is none of a run folder's own files (checked
    before any work)."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise UsageError(f"{flag} must end in {' or '.join(suffixes)}, got '{path}'")
    refuse_run_files(path, flag)
    check_npy_pair(path)
    return path


def refuse_run_files(path: Path, flag: str = "--out") -> None:
    """An output may sit in a run folder (RUN/samples.png), but never replace what makes it a run:
    config.json, the weights, the log, or anything in its checkpoints."""
    resolved = path.resolve()
    for folder in resolved.parents:
        if (folder / "config.json").is_file() and (folder / "ema.safetensors").exists():
            inside = resolved.relative_to(folder).parts
            if inside[0] in RUN_FILES or inside[0] == "checkpoints":
                raise UsageError(f"{flag} '{path}' would replace a file of the run folder '{folder}'; "
                                 "choose another name")


def write_images(images, out: Path, nrow: int, labels=None) -> None:
    """images (N, C, H, W) in [-1, 1] as a PNG grid of rows of `nrow`, or as float32 N x C x H x W in
    [0, 1] in a .npy file, with the labels beside it as FILE.labels.npy when there are any."""
    import numpy as np

    from ..viz import image_grid

    _make_parent(out)
    if out.suffix.lower() == ".npy":
        array = ((images + 1) / 2).float().numpy().astype(np.float32)
        beside = labels_path(out)
        _write(out, lambda p: np.save(open(p, "wb"), array))
        if labels is not None:
            _write(beside, lambda p: np.save(open(p, "wb"), np.asarray(labels, np.int64)))
        else:
            beside.unlink(missing_ok=True)  # the labels of an earlier x.npy would now describe other images
    else:
        _write(out, lambda p: image_grid(images, nrow).save(p, format=_pil_format(out)))


def labels_path(out: Path) -> Path:
    return out.with_suffix(".labels.npy")


def check_npy_pair(out: Path) -> None:
    """x.npy comes with x.labels.npy: refuse when that file exists without x.npy, as it is then
    not an earlier output of ours but someone's labels."""
    if out.suffix.lower() == ".npy" and labels_path(out).exists() and not out.exists():
        raise UsageError(f"'{labels_path(out)}' exists and is not the labels of an earlier '{out}'; "
                         "choose another --out")


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
