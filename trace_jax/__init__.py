"""TRACE: a time-series encoder grounded in text, in JAX/Flax."""
