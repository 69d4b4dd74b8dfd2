"""How a text prompt reaches the U-Net: the pooled sentence embedding joins the time embedding, and
the token states are attended to by cross-attention where the U-Net has self-attention.

Rows flagged `null` (the empty prompt, and guidance dropout in training) take learned nulls instead:
a learned pooled vector and NULL_TOKENS learned token states, whatever the row's own text holds. A
batch whose rows are all null (or no text at all) runs on the null tokens alone, so the empty prompt
is the unconditional branch exactly, bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .text import TextBatch

NULL_TOKENS = 2  # learned token states that stand in for a null prompt


@dataclass(frozen=True, eq=False)
class Prompt:
    """The text part of a Condition (condition.py): a prompt per image, and optionally a negative prompt
    per image, which takes the place of the empty prompt as the branch guidance pushes away from."""
    text: TextBatch
    negative: TextBatch | None = None

    def rows(self, index, device=None) -> "Prompt":
        def take(t: TextBatch | None) -> TextBatch | None:
            return None if t is None else TextBatch(*(v[index].to(device) for v in t))
        return Prompt(take(self.text), take(self.negative))

    def cat(self, other: "Prompt") -> "Prompt":
        return Prompt(cat_text(self.text, other.text))  # a batch of both branches: its negatives are in it

    def against(self) -> "Prompt":
        return Prompt(self.negative if self.negative is not None else nulled(self.text))

    @property
    def steers(self) -> bool:
        return self.negative is not None or not bool(self.text.null.all())


class PromptContext(NamedTuple):
    pooled: Tensor  # (B, emb_dim): added to the time embedding
    tokens: Tensor  # (B, L, text_dim): the keys and values of cross-attention
    mask: Tensor  # (B, L) bool: True at the keys a row attends to


class PromptEmbedding(nn.Module):
    """TextBatch -> PromptContext, with the learned nulls."""

    def __init__(self, text_dim: int, emb_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(text_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.null_pooled = nn.Parameter(torch.zeros(text_dim))
        self.null_tokens = nn.Parameter(torch.zeros(NULL_TOKENS, text_dim))

    def forward(self, text: TextBatch | None, batch: int) -> PromptContext:
        dtype = self.null_pooled.dtype
        if text is None or bool(text.null.all()):  # every row unconditional: the null tokens alone
            pooled = self.null_pooled.expand(batch, -1)
            tokens = self.null_tokens.expand(batch, -1, -1)
            mask = torch.ones(batch, NULL_TOKENS, dtype=torch.bool, device=tokens.device)
            return PromptContext(self.mlp(pooled), tokens, mask)
        null = text.null.to(self.null_pooled.device)
        pooled = torch.where(null[:, None], self.null_pooled.expand(batch, -1), text.pooled.to(dtype))
        # keys: the row's own tokens, then the null tokens; a null row sees only the latter, others the former
        tokens = torch.cat([text.tokens.to(dtype), self.null_tokens.expand(batch, -1, -1)], dim=1)
        own = text.mask & ~null[:, None]
        mask = torch.cat([own, null[:, None].expand(-1, NULL_TOKENS)], dim=1)
        return PromptContext(self.mlp(pooled), tokens, mask)


class CrossAttention(nn.Module):
    """Multi-head attention from the H*W positions to the prompt's tokens, residual, with a key
    padding mask; it starts as the identity (zero output layer)."""

    def __init__(self, channels: int, text_dim: int, head_channels: int, groups: int):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = nn.GroupNorm(groups, channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Linear(text_dim, 2 * channels)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, prompt: PromptContext) -> Tensor:
        b, c, h, w = x.shape
        d = c // self.heads
        q = self.q(self.norm(x)).reshape(b, self.heads, d, h * w).transpose(-1, -2)  # (B, heads, HW, d)
        k, v = self.kv(prompt.tokens).reshape(b, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4)  # (B, heads, L, d)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=prompt.mask[:, None, None, :])
        return x + self.out(y.transpose(-1, -2).reshape(b, c, h, w))


def cat_text(a: TextBatch, b: TextBatch) -> TextBatch:
    """Two text batches as one, the shorter token sequence padded (masked off)."""
    length = max(a.tokens.shape[1], b.tokens.shape[1])

    def pad(t: TextBatch) -> tuple[Tensor, Tensor]:
        extra = length - t.tokens.shape[1]
        return F.pad(t.tokens, (0, 0, 0, extra)), F.pad(t.mask, (0, extra))

    (ta, ma), (tb, mb) = pad(a), pad(b)
    return TextBatch(torch.cat([ta, tb]), torch.cat([ma, mb]), torch.cat([a.pooled, b.pooled]),
                     torch.cat([a.null, b.null]))


def nulled(text: TextBatch) -> TextBatch:
    """The same rows, all flagged null: the unconditional branch of guidance."""
    return text._replace(null=torch.ones_like(text.null))
