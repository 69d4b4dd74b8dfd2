"""Contexts from what a user types or a data set holds: class ids, names, mixtures, vectors.

`class_id` reads a class by name or index, `parse_context` a mixture or a vector, and `context_batch`
checks (n, K) context vectors given as numbers; conditioning.resolve applies them for the command line, the web
page and the library alike. `Classes` is the class part of a Condition (condition.py).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import UsageError

MAX_WEIGHT = 100.0  # of one class in a context: far beyond any useful mixture, short of overflow


@dataclass(frozen=True, eq=False)
class Classes:
    """The class part of a Condition (condition.py): a context vector per image, and the rows that take
    the learned null embedding instead (unconditional; guidance dropout in training)."""
    vectors: Tensor  # (B, K) float: one-hot class ids, multi-hot attributes, or mixtures of either
    null: Tensor  # (B,) bool

    @classmethod
    def of(cls, vectors: Tensor) -> "Classes":
        return cls(vectors, torch.zeros(len(vectors), dtype=torch.bool, device=vectors.device))

    def rows(self, index, device=None) -> "Classes":
        return Classes(self.vectors[index].to(device), self.null[index].to(device))

    def cat(self, other: "Classes") -> "Classes":
        return Classes(torch.cat([self.vectors, other.vectors]), torch.cat([self.null, other.null]))

    def against(self) -> "Classes":
        return Classes(self.vectors, torch.ones_like(self.null))

    @property
    def steers(self) -> bool:
        return not bool(self.null.all())


def one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """Class ids (B,) -> float one-hot contexts (B, K)."""
    return torch.nn.functional.one_hot(labels.long(), num_classes).float()


def class_id(label: str, class_names: tuple[str, ...] | list[str]) -> int:
    """A class given by name ("ship") or by index ("7"); names win when a name is itself a number.
    A name may also be given loosely, as people type one: in any case, with other punctuation, or by
    its first words, as long as one class answers ("food", "food-and-drink" or "Food&Drink" for
    "Food & Drink"; "smileys" for "Smileys & Emotion")."""
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
    words, named = _words(label), [_words(n) for n in names]
    for matches in ([k for k, n in enumerate(named) if words and n == words],
                    [k for k, n in enumerate(named) if words and n[:len(words)] == words]):
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UsageError(f"label {_short(label)} could be any of {_listed([names[k] for k in matches])}; "
                             "give the whole name")
    raise UsageError(f"unknown label {_short(label)}; choose one of {_listed(names)}")


def _words(name: str) -> list[str]:
    """A class name as words to compare: case, punctuation and 'and' / '&' set aside."""
    return [w for w in re.findall(r"[^\W_]+", name.casefold()) if w != "and"]


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


def context_batch(contexts, n: int, names) -> Tensor:
    """Context vectors given as numbers, one row per image, checked: (n, K) finite, within MAX_WEIGHT."""
    vectors = torch.as_tensor(contexts, dtype=torch.float32)
    if vectors.shape != (n, len(names)):
        raise UsageError(f"contexts of shape {tuple(vectors.shape)} for {n} images of a model of {len(names)} "
                         f"classes ({_listed(list(map(str, names)))})")
    if not bool(torch.isfinite(vectors).all()) or vectors.abs().max() > MAX_WEIGHT:
        raise UsageError(f"contexts must be finite weights in [-{MAX_WEIGHT:g}, {MAX_WEIGHT:g}]")
    return vectors
