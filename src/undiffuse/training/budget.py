"""A time budget is a deadline: `--minutes M` ends training M minutes after it began.

Everything the run does counts against it: reading the data, timing the model sizes, every step,
the grids and checkpoints drawn on the way, and the last grid and checkpoint at the end. The run
stops taking steps when the next one, plus what the end of the run costs, would pass the deadline.

The learning-rate cosine and the grids follow the elapsed share of the budget (`done`), not a
step count fixed early, so a run whose machine gets busier halfway still ends its schedules at the
deadline. The step count is only an estimate, re-fitted from the recent step times every
REFIT_EVERY steps: it sizes the warm-up (fixed at the first re-fit), the EMA horizon and the
progress bar.
"""
from __future__ import annotations

import statistics
from collections import deque
from typing import Callable

REFIT_EVERY = 5  # steps between re-fits of the step-count estimate (cheap: no I/O)
WINDOW = 20  # recent step times the estimate is fitted to (few: a machine that slows down is seen soon)
WORST_OF = 5  # the next step is assumed to cost as much as the slowest of the last few


class Stopwatch:
    """The seconds a run has trained over all its sessions: those of the sessions before (from its
    checkpoint) plus this session's, by `clock` (time.perf_counter, or a test's fake clock)."""

    def __init__(self, clock: Callable[[], float], before: float = 0.0):
        self.clock = clock
        self.restart(before)

    def restart(self, before: float) -> None:
        """`before` seconds of training lie behind us as of now."""
        self.before, self.since = before, self.clock()

    @property
    def elapsed(self) -> float:
        return self.before + self.clock() - self.since


class Deadline:
    """The clock side of a time-budgeted run. `elapsed` is always passed in: the trainer owns it."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.step_times: deque[float] = deque(maxlen=WINDOW)
        self.end_costs: dict[str, float] = {}  # the longest final grid and checkpoint seen so far

    def record_step(self, seconds: float) -> None:
        self.step_times.append(seconds)

    def record_end_cost(self, what: str, seconds: float) -> None:
        """A grid or a checkpoint took `seconds`: the end of the run will take one of each."""
        self.end_costs[what] = max(self.end_costs.get(what, 0.0), seconds)

    def done(self, elapsed: float) -> float:
        """The share of the budget spent, in [0, 1]."""
        return min(1.0, max(0.0, elapsed / self.seconds))

    def room_for_step(self, elapsed: float) -> bool:
        """Whether one more step, then the final grid and checkpoint, still end by the deadline."""
        next_step = max(list(self.step_times)[-WORST_OF:], default=0.0)
        return elapsed + next_step + sum(self.end_costs.values()) <= self.seconds

    def steps_left(self, elapsed: float) -> int:
        """How many more steps the budget affords at the recent median speed."""
        if not self.step_times:
            return 0
        left = self.seconds - elapsed - sum(self.end_costs.values())
        return max(0, int(left / max(1e-9, statistics.median(self.step_times))))
