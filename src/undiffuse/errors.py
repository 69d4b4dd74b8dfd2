"""What the user can fix. Every error a user's input can cause is an `UndiffuseError`: the command
line prints its message as one line and exits with status 2 (cli/__init__.py), the web page shows it
with a 4xx status. Anything else is a bug and keeps its traceback.

Each kind also derives from the built-in error a Python caller would expect (ValueError), so that
library code written against those keeps working.
"""
from __future__ import annotations


class UndiffuseError(Exception):
    """Bad input from the user; the message is one line that names the value and what is allowed."""


class UsageError(UndiffuseError, ValueError):
    """A flag, option or argument out of its range or in conflict with another."""


class DataError(UndiffuseError, ValueError):
    """Training or input data that cannot be used: missing, unreadable, of the wrong shape."""


class CheckpointError(UndiffuseError, ValueError):
    """A run folder that cannot be used: missing, edited by hand, damaged, or written by another version."""


class RequestError(UndiffuseError, ValueError):
    """A request the web page should not have sent; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class TrainingDiverged(UndiffuseError, ArithmeticError):
    """The loss stayed non-finite for max_bad_steps steps in a row (the data or the learning rate)."""
