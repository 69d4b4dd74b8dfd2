"""Conditions: what a network is told to draw (class ids, attribute vectors and mixtures)."""
from .contexts import class_id, conditioning, context_batch, one_hot, parse_context
from .embedding import ContextEmbedding, drop_mask

__all__ = ["ContextEmbedding", "class_id", "conditioning", "context_batch", "drop_mask", "one_hot", "parse_context"]
