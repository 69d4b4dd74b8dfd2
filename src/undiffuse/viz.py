"""Pictures: sample grids, the reverse process as a GIF, the forward process as a strip, loss curves.

Images come in the model's range [-1, 1], shaped (N, C, H, W). Small images (28x28 digits) are
enlarged with nearest-neighbour pixels so that a grid is readable on a screen without blurring.
matplotlib is imported only by `save_loss_curve`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from .errors import UsageError
from .schedule import NoiseSchedule

MIN_CELL = 56  # pixels: cells smaller than this are enlarged by an integer factor


def to_uint8(images: Tensor) -> np.ndarray:
    """[-1, 1] (N, C, H, W) -> uint8 (N, H, W, C)."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def image_grid(images: Tensor, nrow: int, pad: int = 2, scale: int | None = None) -> Image.Image:
    """Tile images row by row, nrow per row, on a grey background."""
    n, c, h, w = images.shape
    scale = scale or max(1, -(-MIN_CELL // max(h, w)))
    pixels = to_uint8(images)
    rows = -(-n // nrow)
    cell_h, cell_w = h * scale, w * scale
    canvas = np.full((rows * (cell_h + pad) + pad, nrow * (cell_w + pad) + pad, c), 128, np.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        tile = pixels[i].repeat(scale, axis=0).repeat(scale, axis=1)
        top, left = pad + r * (cell_h + pad), pad + k * (cell_w + pad)
        canvas[top:top + cell_h, left:left + cell_w] = tile
    return Image.fromarray(canvas[..., 0] if c == 1 else canvas)


def save_grid(images: Tensor, path: str | Path, nrow: int = 8, **options) -> Path:
    path = Path(path)
    kind = Image.registered_extensions().get(path.suffix.lower(), "PNG")  # PNG for an atomic write's .tmp
    image_grid(images, nrow, **options).save(path, format=kind)
    return path


def save_gif(frames: Sequence[Tensor], path: str | Path, nrow: int, seconds: float = 4.0,
             hold: float = 1.5) -> Path:
    """An animation whose frames are grids of the same images at successive steps; the last is held."""
    path = Path(path)
    pictures = [image_grid(f, nrow) for f in frames]
    duration = max(20, int(1000 * seconds / max(1, len(pictures))))
    durations = [duration] * (len(pictures) - 1) + [int(1000 * hold)]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=durations, loop=0)
    return path


def keep_frames(total_steps: int, frames: int = 40) -> set[int]:
    """Which sampler steps to keep for an animation: denser near the end, where the image forms."""
    frames = min(frames, total_steps)
    fractions = 1 - (1 - np.linspace(0, 1, frames)) ** 2
    return {min(total_steps - 1, int(round(f * (total_steps - 1)))) for f in fractions}


class FrameRecorder:
    """A sampler callback that keeps about `frames` pictures of the reverse process for an animation:
    state["x"] (the noisy image) or state["x0"] (the network's clean estimate) at the steps keep_frames picks."""

    def __init__(self, total_steps: int, frames: int = 40, show: str = "x"):
        self.keep, self.show, self.frames = keep_frames(max(1, total_steps), frames), show, []

    def __call__(self, state: dict) -> None:
        if state["i"] in self.keep:
            self.frames.append(state[self.show].detach().float().clamp(-1, 1).cpu())


def forward_strip(images: Tensor, schedule: NoiseSchedule, ts: Sequence[int], seed: int = 0) -> Image.Image:
    """Rows: images; columns: the same image noised to each step t in `ts` (one noise draw per row).

    Column t shows x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps with a shared eps per row,
    so the picture shows the signal fading, not new noise per column.
    """
    for t in ts:
        if not 0 <= t < schedule.T:
            raise UsageError(f"step {t} is outside [0, {schedule.T - 1}]")
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    columns = []
    for t in ts:
        t_batch = torch.full((len(images),), t, dtype=torch.long)
        columns.append(schedule.q_sample(images, t_batch, noise))
    tiles = torch.stack(columns, dim=1).flatten(0, 1)  # (N * len(ts), C, H, W), row-major
    grid = image_grid(tiles, nrow=len(ts))
    return _with_header(grid, [f"t={t}" for t in ts])


def _with_header(grid: Image.Image, labels: Sequence[str], height: int = 16) -> Image.Image:
    out = Image.new(grid.mode, (grid.width, grid.height + height), 255 if grid.mode == "L" else (255,) * 3)
    out.paste(grid, (0, height))
    draw = ImageDraw.Draw(out)
    cell = grid.width / len(labels)
    for k, label in enumerate(labels):
        # PIL's built-in bitmap font draws Latin-1 only
        shown = printable(label).encode("latin-1", "replace").decode("latin-1")
        draw.text((k * cell + 4, 2), shown, fill=0 if grid.mode == "L" else (0, 0, 0))
    return out


def printable(text: str) -> str:
    """Text for a picture: a path's undecodable bytes (kept by Python as surrogates) shown as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def save_loss_curve(steps: Sequence[int], losses: Sequence[float], path: str | Path, title: str = "",
                    quarters: dict[str, Sequence[tuple[int, float]]] | None = None) -> Path:
    """The training loss against steps, raw and smoothed, on a log scale; with `quarters` (name ->
    [(step, loss)], as training.log.read_log_columns gives them), the loss of each quarter of the
    noise levels too, so that a flat total with a falling low-noise loss shows. Logs written before
    the quarters were kept have none, and plot the total alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, losses, color="0.75", linewidth=0.8, label="logged")
    if len(losses) >= 10:
        k = max(2, len(losses) // 25)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, color="C0", linewidth=1.6, label=f"mean of {k}")
    _plot_quarters(ax, quarters or {})
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE loss")
    ax.set_title(printable(title) or "training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png")  # by its content, whatever the name (an atomic write's temporary one)
    plt.close(fig)
    return path


QUARTER_LABELS = ("t < T/4, least noise", "T/4 <= t < T/2", "T/2 <= t < 3T/4", "t >= 3T/4, most noise")


def _plot_quarters(ax, quarters: dict[str, Sequence[tuple[int, float]]]) -> None:
    """One thin line per quarter of t, smoothed like the total, from the least noise (q0) to the most."""
    for i, (name, points) in enumerate(quarters.items()):
        points = [(s, v) for s, v in points if v > 0]  # a log scale: a zero or negative loss cannot show
        if not points:
            continue
        steps, values = zip(*points)
        k = max(1, len(values) // 25)
        smooth = np.convolve(values, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, color=f"C{i + 1}", linewidth=0.9, alpha=0.9,
                label=f"{name}: {QUARTER_LABELS[i % 4]}")
