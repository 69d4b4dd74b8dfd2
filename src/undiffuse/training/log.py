"""The run's log.csv: one row every few steps, appended as training goes, truncated on resume.

Beside the total loss, loss_q0..loss_q3 split it by noise level as improved-diffusion does: the mean
of the per-image losses of the logged window whose t fell in each quarter of [0, T) (q0: the least
noise). A flat total can hide a falling low-noise loss; loss.png draws all five. A log written before
these columns existed is rewritten with them empty when its run is resumed.
"""
from __future__ import annotations

import contextlib
import csv
import math
import os
import stat
from pathlib import Path

import torch

from .. import checkpoint as ckpt

LOG = "log.csv"
QUARTER_COLUMNS = ["loss_q0", "loss_q1", "loss_q2", "loss_q3"]
LOG_COLUMNS = ["step", "loss", *QUARTER_COLUMNS, "lr", "images_per_s", "seconds", "skipped"]


@contextlib.contextmanager
def open_log(path: Path, write: bool):
    """The run's log opened for appending (with its header), or None on the ranks that do not write."""
    if not write:
        yield None
        return
    if path.is_symlink():
        raise ckpt.CheckpointError(f"'{path}' is a link, not the run's own log; remove it")
    _upgrade(path)
    try:  # appended in place: never through a link planted at its name, never into a FIFO
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_NONBLOCK", 0), 0o644)
    except OSError as e:
        raise ckpt.CheckpointError(f"'{path}' cannot be opened as the run's log ({e.strerror}); remove it") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ckpt.CheckpointError(f"'{path}' is not a regular file; remove it")
    with os.fdopen(fd, "a", newline="") as f:
        if f.tell() == 0:
            csv.writer(f).writerow(LOG_COLUMNS)
        yield f


def _upgrade(path: Path) -> None:
    """A log from before the quarter columns: the same rows under today's header, the new cells empty."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        rows = [dict(zip(header, r)) for r in reader if header and len(r) == len(header)]
    if header is None or header == LOG_COLUMNS:
        return

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            out = csv.DictWriter(f, LOG_COLUMNS, restval="", extrasaction="ignore")
            out.writeheader()
            out.writerows(rows)
    ckpt.atomic_write(path, write)


class LogWriter:
    """Rows of log.csv as training goes, each echoed on the progress bar."""

    def __init__(self, file, bar, batch_size: int):
        self.file, self.writer, self.bar, self.batch_size = file, csv.writer(file), bar, batch_size

    def row(self, step: int, losses: list[float], lr: float, steps: int, seconds: float, elapsed: float,
            skipped: int, quarters: torch.Tensor | None = None) -> None:
        """losses: those since the last row; steps in `seconds`: this session's, for the speed;
        quarters: the window's per-image loss sums by quarter of t, then their counts."""
        rate = self.batch_size * steps / max(1e-9, seconds)
        mean = sum(losses) / len(losses) if losses else float("nan")
        by_t = [f"{v:.6f}" for v in quarter_means(quarters)]
        self.writer.writerow([step, f"{mean:.6f}", *by_t, f"{lr:.3e}", f"{rate:.1f}", f"{elapsed:.2f}", skipped])
        self.file.flush()  # for `tail -f`, and so that a kill loses no row before the checkpoint
        self.bar.set_postfix(loss=f"{mean:.4f}", img_s=f"{rate:.0f}")


def quarter_means(quarters: torch.Tensor | None) -> list[float]:
    """The mean loss of each quarter of t from (sums, counts); nan for a quarter no image fell in."""
    k = len(QUARTER_COLUMNS)
    if quarters is None:
        return [float("nan")] * k
    sums, counts = quarters[:k].tolist(), quarters[k:].tolist()
    return [s / c if c else float("nan") for s, c in zip(sums, counts)]


def truncate_log(path: Path, step: int) -> None:
    """Drop log rows written after the checkpoint we resume from, so the log has no duplicates, and
    the half-written row a kill can leave at the end."""
    if not path.is_file():
        return
    rows = list(csv.reader(path.open()))
    kept = rows[:1] + [r for r in rows[1:] if len(r) == len(rows[0]) and r[0].isdigit() and int(r[0]) <= step]
    if kept != rows:
        ckpt.atomic_write(path, lambda p: p.write_text("".join(",".join(r) + "\r\n" for r in kept)))


def read_log(run: str | Path) -> tuple[list[int], list[float]]:
    """(steps, losses) from a run's log.csv."""
    columns = read_log_columns(run)
    return columns["step"], columns["loss"]


def read_log_columns(run: str | Path) -> dict[str, list]:
    """{"step": [...], "loss": [...], "loss_q0": [(step, loss), ...], ...} from a run's log.csv: the
    rows with a finite total (a window of only skipped steps logs nan), and of each quarter the
    rows where it is finite (an old log has none)."""
    out = {"step": [], "loss": [], **{name: [] for name in QUARTER_COLUMNS}}
    with (Path(run) / LOG).open() as f:
        for row in csv.DictReader(f):
            if math.isfinite(_number(row.get("loss"))):
                out["step"].append(int(row["step"]))
                out["loss"].append(float(row["loss"]))
                for name in QUARTER_COLUMNS:
                    if math.isfinite(value := _number(row.get(name))):
                        out[name].append((int(row["step"]), value))
    return out


def logged_losses(run: str | Path) -> list[float]:
    """The logged losses of a run, [] when it has no log yet."""
    return read_log(run)[1] if (Path(run) / LOG).is_file() else []


def last_numbers(run: str | Path) -> dict[str, float]:
    """The last row of a run's log.csv as numbers (nan where a value is missing); {} where there is no
    readable log (a run that has not logged yet, or an imported one)."""
    try:
        with (Path(run) / LOG).open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}
    return {k: _number(v) for k, v in rows[-1].items() if k is not None} if rows else {}


def _number(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")
