"""Contexts from what a user types or a data set holds: class ids, names, mixtures, vectors.

The same rules serve the command line, the web page and the library: `class_id` reads a class by
name or index, `parse_context` a mixture or a vector, and `context_batch` turns either into the
(n, K) contexts of n images.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import UsageError

MAX_WEIGHT = 100.0  # of one class in a context: far beyond any useful mixture, short of overflow


def one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """Class ids (B,) -> float one-hot contexts (B, K)."""
    return torch.nn.functional.one_hot(labels.long(), num_classes).float()


def class_id(label: str, class_names: tuple[str, ...] | list[str]) -> int:
    """A class given by name ("ship") or by index ("7"); names win when a name is itself a number."""
    names = [str(n) for n in class_names]
    if not names:
        raise UsageError("this model is unconditional: it takes no label")
    if label in names:
        return names.index(label)
    if label.lstrip("-").isdigit():
        index = int(label)
        if 0 <= index < len(names):
            return index
        raise UsageError(f"label {index} is out of range: this model has classes 0..{len(names) - 1}")
    raise UsageError(f"unknown label {_short(label)}; choose one of {_listed(names)}")


def parse_context(spec: str, names: tuple[str, ...] | list[str]) -> Tensor:
    """A context vector from text: a name ("hero"), a weighted mixture ("0.6*hero+0.4*food"),
    class ids in a mixture ("0.5*3+0.5*8"), or the full vector ("1,0,0,0,1"). Every weight is a finite
    number of at most MAX_WEIGHT in size."""
    names = [str(n) for n in names]
    k, shown = len(names), _short(spec)
    if not k:
        raise UsageError("this model is unconditional: it takes no context")
    text = spec.replace(" ", "")
    if "," in text:
        values = [_weight(v, shown, f"a vector must be {k} comma-separated numbers") for v in text.split(",")]
        if len(values) != k:
            raise UsageError(f"context {shown} has {len(values)} values; this model takes {k} ({_listed(names)})")
        return torch.tensor(values)
    vector = torch.zeros(k, dtype=torch.float64)
    for term in filter(None, text.split("+")):
        weight, _, name = term.rpartition("*")
        vector[class_id(name, names)] += _weight(weight, shown, f"{_short(weight)} is not a number") if weight else 1.0
    if not vector.any():
        raise UsageError(f"context {shown} is empty; name one of {_listed(names)}")
    if vector.abs().max() > MAX_WEIGHT:
        raise UsageError(f"context {shown}: the weights add up beyond {MAX_WEIGHT:g}")
    return vector.float()


def _weight(text: str, shown: str, problem: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"context {shown}: {problem}") from None
    if not math.isfinite(value) or abs(value) > MAX_WEIGHT:
        raise UsageError(f"context {shown}: {_short(text)} is not a finite weight in [-{MAX_WEIGHT:g}, {MAX_WEIGHT:g}]")
    return value


def _listed(names: list[str], most: int = 12) -> str:
    return ", ".join(names[:most]) + (f" (and {len(names) - most} more)" if len(names) > most else "")


def _short(text: str, limit: int = 40) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else shown[:limit - 4] + "...'"


def context_batch(context_dim: int, n: int, labels: list[int] | None = None,
                  contexts: Tensor | None = None) -> Tensor | None:
    """The (n, K) contexts of n images from class ids or context vectors; None: unconditional."""
    if labels is not None:
        if len(labels) != n:
            raise UsageError(f"{len(labels)} labels for {n} images")
        if not context_dim:
            raise UsageError("this model is unconditional: it takes no labels")
        contexts = one_hot(torch.tensor(labels), context_dim)
    if contexts is not None and contexts.shape != (n, context_dim):
        raise UsageError(f"contexts of shape {tuple(contexts.shape)} for {n} images of a {context_dim}-context model")
    return contexts if context_dim else None


def conditioning(class_names, n: int, *, label: str | None = None, context: str | None = None,
                 guidance: float | None = None, default_label: str = "each",
                 default_guidance: float = 2.0) -> dict:
    """The labels or contexts and the guidance of n images, by the rules the command line, the web page
    and the library share: label is a class name or id, "each" or "all" (every class in turn) or "none"
    (unconditional); context is a mixture or a vector (parse_context); the two exclude each other; an
    unconditional model takes none of the three. Returns keyword arguments of generate and the edits."""
    if not class_names:
        if label not in (None, "none", "each", "all") or context is not None or guidance is not None:
            raise UsageError("this model is unconditional: it takes no label, context or guidance")
        return {}
    if context is not None and label is not None:
        raise UsageError("give a label or a context, not both")
    guidance = default_guidance if guidance is None else guidance
    if context is not None:
        return {"contexts": parse_context(str(context), class_names).expand(n, -1), "guidance": guidance}
    label = default_label if label is None else str(label)
    if label == "none":
        return {}
    if label in ("each", "all") and label not in [str(c) for c in class_names]:
        return {"labels": [i % len(class_names) for i in range(n)], "guidance": guidance}
    return {"labels": [class_id(label, class_names)] * n, "guidance": guidance}
