"""What to generate: contexts, their embedding, and classifier-free guidance.

A context is a float vector per image: a one-hot class id, multi-hot attributes, or a weighted
mixture of either. `ContextEmbedding` maps it through a small MLP; rows flagged `null` get a learned
null embedding instead, which training substitutes with probability p so that one network learns
both p(x | c) and p(x) (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance").
Guided prediction: eps = eps_null + w * (eps_ctx - eps_null); w = 0 is unconditional, w = 1 conditional.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .schedule import NoiseSchedule

EpsFn = Callable[[Tensor, Tensor], Tensor]
PREDICTIONS = ("eps", "x0", "v")


class ContextEmbedding(nn.Module):
    """(B, K) context -> (B, D) embedding; `null` rows take the learned null embedding."""

    def __init__(self, context_dim: int, embed_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(context_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
        self.null = nn.Parameter(torch.zeros(embed_dim))

    def forward(self, context: Tensor | None, null: Tensor | None, batch: int) -> Tensor:
        if context is None:  # nothing given: every row is unconditional
            return self.null.expand(batch, -1)
        emb = self.mlp(context.to(self.null.dtype))
        if null is None:
            return emb
        return torch.where(null[:, None], self.null.expand_as(emb), emb)


def one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """Class ids (B,) -> float one-hot contexts (B, K)."""
    return torch.nn.functional.one_hot(labels.long(), num_classes).float()


def drop_mask(batch: int, p: float, generator: torch.Generator | None, device) -> Tensor:
    """Which rows train on the null context this step."""
    if p <= 0:
        return torch.zeros(batch, dtype=torch.bool, device=device)
    return torch.rand(batch, generator=generator, device=generator.device if generator else "cpu").to(device) < p


def guided(eps_null: Tensor, eps_ctx: Tensor, w: float) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6 with w' = w - 1). w = 0 and w = 1 return
    the unconditional and conditional predictions exactly, without floating-point round-off."""
    if w == 0:
        return eps_null
    if w == 1:
        return eps_ctx
    return eps_null + w * (eps_ctx - eps_null)


def to_eps(pred: Tensor, x_t: Tensor, t: Tensor, schedule: NoiseSchedule, prediction: str) -> Tensor:
    """Whatever the network predicts, as the noise eps."""
    if prediction == "eps":
        return pred
    elif prediction == "x0":
        return schedule.eps_from_x0(x_t, t, pred)
    elif prediction == "v":
        return schedule.eps_from_v(x_t, t, pred)
    else:
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


def denoiser(model: nn.Module, schedule: NoiseSchedule, *, prediction: str = "eps",
             context: Tensor | None = None, guidance: float = 1.0) -> EpsFn:
    """The one adapter from a network to the `eps_fn(x_t, t)` that samplers take.

    context: (B, K) per image, or None for an unconditional model (or all-null rows).
    guidance: w; 1 asks one conditional pass, 0 one unconditional pass, anything else both.
    """
    def eps_fn(x_t: Tensor, t: Tensor) -> Tensor:
        t = t.expand(x_t.shape[0]) if t.ndim == 0 else t
        if context is None or guidance == 1.0:
            return to_eps(model(x_t, t, context), x_t, t, schedule, prediction)
        if guidance == 0.0:
            return to_eps(model(x_t, t, None), x_t, t, schedule, prediction)
        b = x_t.shape[0]
        null = torch.arange(2 * b, device=x_t.device) >= b
        pred = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([context, context]), null)
        eps = to_eps(pred, torch.cat([x_t, x_t]), torch.cat([t, t]), schedule, prediction)
        return guided(eps[b:], eps[:b], guidance)

    return eps_fn


def class_id(label: str, class_names: tuple[str, ...] | list[str]) -> int:
    """A class given by name ("ship") or by index ("7"); names win when a name is itself a number."""
    names = [str(n) for n in class_names]
    if not names:
        raise ValueError("this model is unconditional: it takes no label")
    if label in names:
        return names.index(label)
    if label.lstrip("-").isdigit():
        index = int(label)
        if 0 <= index < len(names):
            return index
        raise ValueError(f"label {index} is out of range: this model has classes 0..{len(names) - 1}")
    raise ValueError(f"unknown label {label!r}; choose one of {', '.join(names)}")


def parse_context(spec: str, names: tuple[str, ...] | list[str]) -> Tensor:
    """A context vector from text: a name ("hero"), a weighted mixture ("0.6*hero+0.4*food"),
    class ids in a mixture ("0.5*3+0.5*8"), or the full vector ("1,0,0,0,1")."""
    names = [str(n) for n in names]
    k = len(names)
    if not k:
        raise ValueError("this model is unconditional: it takes no context")
    text = spec.replace(" ", "")
    if "," in text:
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            raise ValueError(f"context {spec!r}: a vector must be {k} comma-separated numbers") from None
        if len(values) != k:
            raise ValueError(f"context {spec!r} has {len(values)} values; this model takes {k} ({', '.join(names)})")
        return torch.tensor(values)
    vector = torch.zeros(k)
    for term in filter(None, text.split("+")):
        weight, _, name = term.rpartition("*")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"context {spec!r}: {weight!r} is not a number") from None
        vector[class_id(name, names)] += w
    if not vector.any():
        raise ValueError(f"context {spec!r} is empty; name one of {', '.join(names)}")
    return vector
