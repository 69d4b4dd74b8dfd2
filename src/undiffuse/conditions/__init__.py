"""Conditions: what a network is told to draw (class ids, attribute vectors and mixtures, prompts, a
low-resolution image), as one value (condition.py)."""
from .contexts import Classes, class_id, context_batch, one_hot, parse_context
from .condition import Condition, rows_of
from .embedding import ContextEmbedding, drop_mask

__all__ = ["Classes", "Condition", "ContextEmbedding", "class_id", "context_batch", "drop_mask", "one_hot", "parse_context", "rows_of"]
