"""The run's log.csv: one row every few steps, appended as training goes, truncated on resume."""
from __future__ import annotations

import contextlib
import csv
import math
from pathlib import Path

from .. import checkpoint as ckpt

LOG = "log.csv"


LOG_COLUMNS = ["step", "loss", "lr", "images_per_s", "seconds", "skipped"]


@contextlib.contextmanager
def open_log(path: Path, write: bool):
    """The run's log opened for appending (with its header), or None on the ranks that do not write."""
    if not write:
        yield None
        return
    with path.open("a", newline="") as f:
        if f.tell() == 0:
            csv.writer(f).writerow(LOG_COLUMNS)
        yield f


class LogWriter:
    """Rows of log.csv as training goes, each echoed on the progress bar."""

    def __init__(self, file, bar, batch_size: int):
        self.file, self.writer, self.bar, self.batch_size = file, csv.writer(file), bar, batch_size

    def row(self, step: int, losses: list[float], lr: float, steps: int, seconds: float, elapsed: float,
            skipped: int) -> None:
        """losses: those since the last row; steps in `seconds`: this session's, for the speed."""
        rate = self.batch_size * steps / max(1e-9, seconds)
        mean = sum(losses) / len(losses) if losses else float("nan")
        self.writer.writerow([step, f"{mean:.6f}", f"{lr:.3e}", f"{rate:.1f}", f"{elapsed:.2f}", skipped])
        self.file.flush()  # for `tail -f`, and so that a kill loses no row before the checkpoint
        self.bar.set_postfix(loss=f"{mean:.4f}", img_s=f"{rate:.0f}")


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
    steps, losses = [], []
    with (Path(run) / LOG).open() as f:
        for row in csv.DictReader(f):
            if math.isfinite(float(row["loss"] or "nan")):  # a window of only skipped steps logs nan
                steps.append(int(row["step"]))
                losses.append(float(row["loss"]))
    return steps, losses
