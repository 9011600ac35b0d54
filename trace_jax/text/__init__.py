"""Text tower: all-MiniLM-L6-v2 sentence embeddings in JAX/Flax."""

from trace_jax.text.embed import TextEncoder, embed_text

__all__ = ["TextEncoder", "embed_text"]
