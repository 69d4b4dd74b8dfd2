"""SIGINT and SIGTERM ask the training loop to stop at the next step boundary."""
from __future__ import annotations

import signal
import threading


class StopOnSignal:
    """SIGINT/SIGTERM ask the loop to stop at the next step boundary, never inside an update."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False
