"""How many CPU threads a time-budgeted run's steps use: the faster of torch's count and one.

torch's CPU threads spin while they wait for work (GNU OpenMP). On quiet cores that is what makes
two threads fast; next to another busy process the spinning threads fight it for the cores, and one
thread trains faster. benchmarks/thread_waiting.py measured both on this project's machine: the
demo's step took 0.72x the time with 2 threads on quiet cores, and 2.5x the time with 2 threads
beside a busy process. A time-budgeted CPU run therefore times PROBE steps at each count every
PROBE_EVERY steps and trains on with the faster: it follows the machine as other work comes and
goes, for about 1% of its steps at the slower count. Load that comes or goes between two probes
shows as a change in the step time: when the median of the last DRIFT_WINDOW steps strays from what
the chosen count measured by more than DRIFT either way, the counts are timed again at once.

Only a time budget does this: its result already depends on the machine's speed (how many steps
fit), while a step budget stays bit-for-bit repeatable at a fixed count. A count the user fixed
(OMP_NUM_THREADS) is kept, and so are torchrun's processes and CUDA runs.
"""
from __future__ import annotations

import os
import statistics
from collections import deque
from typing import Callable

import torch

PROBE = 4  # steps timed at each count
PROBE_EVERY = 400  # steps from one probe to the next
DRIFT = 1.25  # a change of the step time by this factor either way since the last probe times the counts again
DRIFT_WINDOW = 8  # steps whose median is compared with the probe's


def tunable(device: torch.device, distributed: bool, time_budget: bool) -> bool:
    """Whether this run may choose its thread count."""
    return (time_budget and device.type == "cpu" and not distributed and torch.get_num_threads() > 1
            and "OMP_NUM_THREADS" not in os.environ)


class ThreadChooser:
    """Per step: `start(step)` sets the count, `took(seconds)` times it. The first PROBE steps of a
    probe run at the full count, the next PROBE at one thread, and the rest at the faster of the two
    by their median (a tie keeps the full count). A probe starts every PROBE_EVERY steps, and at once
    when the step time drifts (see the module doc). Disabled, it never changes the count."""

    def __init__(self, enabled: bool = True, set_threads: Callable[[int], None] = torch.set_num_threads,
                 full: int | None = None):
        self.enabled, self.set_threads = enabled, set_threads
        self.full = full or torch.get_num_threads()
        self.chosen = self.full
        self.times: dict[int, list[float]] = {self.full: [], 1: []}
        self.expected: float | None = None  # the chosen count's median step time at the last probe
        self.recent: deque[float] = deque(maxlen=DRIFT_WINDOW)  # step times since that probe
        self._current = self.full
        self._probe_from: int | None = None  # the step the current probe began at (None: none yet)
        self._drifted = False

    def start(self, step: int) -> None:
        if not self.enabled:
            self._timing = False
            return
        if step % PROBE_EVERY == 0 or self._drifted:
            self._probe_from, self._drifted = step, False
            self.times = {self.full: [], 1: []}
            self.recent.clear()
        phase = PROBE_EVERY if self._probe_from is None else step - self._probe_from  # resumed mid-way: no probe yet
        count = self.full if phase < PROBE else 1 if phase < 2 * PROBE else self.chosen
        self._use(count)
        self._timing = phase < 2 * PROBE

    def took(self, seconds: float) -> None:
        """The step just started took `seconds`. What runs until the next step (grids, checkpoints,
        the end of the run) runs at the chosen count: a probe's count beside a busy neighbour can be
        many times slower for the many small operations of sampling a grid."""
        if not self.enabled:
            return
        if not self._timing:
            self._watch_drift(seconds)
            return
        self.times[self._current].append(seconds)
        if len(self.times[1]) == PROBE and len(self.times[self.full]) == PROBE:
            medians = {count: statistics.median(t) for count, t in self.times.items()}
            self.chosen = 1 if medians[self.full] > medians[1] else self.full
            self.expected = medians[self.chosen]
        self._use(self.chosen)

    def _watch_drift(self, seconds: float) -> None:
        """Ask for a probe at the next step when the recent steps run at another speed than measured."""
        if self.expected is None:
            return
        self.recent.append(seconds)
        if len(self.recent) == DRIFT_WINDOW:
            ratio = statistics.median(self.recent) / self.expected
            self._drifted = not 1 / DRIFT <= ratio <= DRIFT

    def close(self) -> None:
        """Leave torch as the run found it."""
        self._use(self.full)

    def _use(self, count: int) -> None:
        if count != self._current:
            self.set_threads(count)
            self._current = count
