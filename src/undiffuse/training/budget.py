"""A time budget is a deadline: `--minutes M` ends the whole command M minutes after it began.

Everything the run does counts against it: the command's start-up (the interpreter, torch: the
command line passes the seconds it had run, `spent`), reading the data, timing the model sizes,
every step, the grids, checkpoints, loss curve and model card written on the way, and the last of
each at the end. The run stops taking steps when the next one, plus what the end of the run costs,
would pass the deadline.

The end's costs are measured as the run goes (each time a grid, a checkpoint or the summary is
written) together with the speed of the steps at that moment, and reserved at the speed of the
steps now: a machine that became twice as busy since the last checkpoint is expected to write the
final one half as fast. The next step is assumed to cost as much as the slowest of the last few.

The learning-rate cosine and the grids follow the elapsed share of the budget (`done`), not a
step count fixed early, so a run whose machine gets busier halfway still ends its schedules at the
deadline. The step count is only an estimate, re-fitted from the recent step times every
REFIT_EVERY steps: it sizes the warm-up (fixed at the first re-fit), the EMA horizon and the
progress bar.
"""
from __future__ import annotations

import contextlib
import statistics
from collections import deque
from typing import Callable

from ..run import MAX_STEPS

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
        # what -> (seconds it took, the step time then or None): the latest final grid, checkpoint, summary
        self.end_costs: dict[str, tuple[float, float | None]] = {}
        self._unsettled: set[str] = set()  # costs whose step time waits for the step after them

    def record_step(self, seconds: float) -> None:
        self.step_times.append(seconds)
        for what in self._unsettled:  # load that came during the cost shows in the step after it
            cost, before = self.end_costs[what]
            self.end_costs[what] = (cost, max(before or 0.0, seconds))
        self._unsettled.clear()

    def record_end_cost(self, what: str, seconds: float) -> None:
        """A grid, a checkpoint or the summary took `seconds`: the end of the run writes one of each.
        Its step time is the slower of the steps before it and the step after it, so that a cost
        measured as the machine got busier is not scaled up a second time for the same load."""
        self.end_costs[what] = (seconds, self._step_time())
        self._unsettled.add(what)

    @contextlib.contextmanager
    def timed(self, what: str, clock: Callable[[], float]):
        """Time the block as one `what` of the end's costs (record_end_cost)."""
        start = clock()
        yield
        self.record_end_cost(what, clock() - start)

    def cost(self, what: str) -> float:
        """The seconds one more `what` will take: as measured, scaled by how much slower the steps
        run now than then (never scaled down: the machine may grow busy again); 0 if never seen."""
        if what not in self.end_costs:
            return 0.0
        seconds, then = self.end_costs[what]
        now = self._step_time()
        return seconds * (max(1.0, now / then) if now and then else 1.0)

    def end_cost(self) -> float:
        """The seconds the end of the run will take: one of each cost."""
        return sum(self.cost(what) for what in self.end_costs)

    def room_for(self, elapsed: float, what: str) -> bool:
        """Whether one more `what` (a grid on the way) still leaves the end of the run its time."""
        return elapsed + self.cost(what) + self.end_cost() <= self.seconds

    def _step_time(self) -> float | None:
        """The speed of the steps now: the median of the last few."""
        recent = list(self.step_times)[-WORST_OF:]
        return statistics.median(recent) if recent else None

    def ends_within(self, elapsed: float, seconds: float) -> bool:
        """Whether the deadline comes within `seconds` (a periodic save that the final one makes moot)."""
        return self.seconds - elapsed < seconds

    def done(self, elapsed: float) -> float:
        """The share of the budget spent, in [0, 1]."""
        return min(1.0, max(0.0, elapsed / self.seconds))

    def room_for_step(self, elapsed: float) -> bool:
        """Whether one more step, then the final grid, checkpoint and summary, still end by the deadline."""
        next_step = max(list(self.step_times)[-WORST_OF:], default=0.0)
        return elapsed + next_step + self.end_cost() <= self.seconds

    def steps_at(self, step: int, elapsed: float) -> int:
        """The run's step count as estimated at `step`: the steps taken and those left."""
        return min(MAX_STEPS, step + 1 + self.steps_left(elapsed))

    def steps_left(self, elapsed: float) -> int:
        """How many more steps the budget affords at the recent median speed."""
        if not self.step_times:
            return 0
        left = self.seconds - elapsed - self.end_cost()
        return max(0, int(left / max(1e-9, statistics.median(self.step_times))))
