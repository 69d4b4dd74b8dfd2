"""How a context reaches the network: an MLP embedding with a learned null for classifier-free guidance.

A context is a float vector per image: a one-hot class id, multi-hot attributes, or a weighted
mixture of either. Rows flagged `null` get a learned null embedding instead, which training
substitutes with probability p so that one network learns both p(x | c) and p(x) (Ho & Salimans 2022).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


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


def drop_mask(batch: int, p: float, generator: torch.Generator | None, device) -> Tensor:
    """Which rows train on the null context this step."""
    if p <= 0:
        return torch.zeros(batch, dtype=torch.bool, device=device)
    return torch.rand(batch, generator=generator, device=generator.device if generator else "cpu").to(device) < p
